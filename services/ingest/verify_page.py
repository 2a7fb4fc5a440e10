"""``GET /verify``: the verification page for auditors, a single static file (``verify.html``).

The page is a second implementation of ``ledger verify`` in plain JavaScript on the browser's
WebCrypto; it shares no code with :mod:`shared.bundle`. It is served without authentication
and reads no data: everything it checks, the user gives it, and it can be saved and opened
from disk just as well.

It must make no network request. Its Content-Security-Policy (``default-src 'none'``, the
one inline script and the one inline style allowed by their SHA-256) says so in a
``<meta>`` element, so that the policy holds when the file is opened from disk too, and
ingest sends the same policy as a header, with ``frame-ancestors 'none'`` (which a
``<meta>`` cannot carry). After editing the page, refresh the hashes in its ``<meta>``::

    python -m services.ingest.verify_page      # rewrites the policy in verify.html
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["PAGE_PATH", "content_security_policy", "header_policy", "serve_verify_page"]

PAGE_PATH: Final = Path(__file__).with_name("verify.html")
_INLINE: Final = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
_META: Final = re.compile(r'(<meta http-equiv="Content-Security-Policy" content=")([^"]*)(")')


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
    """The policy the page needs: nothing but its own inline script and style, by hash."""
    scripts = [_hash(body) for tag, body in _INLINE.findall(html) if tag == "script"]
    styles = [_hash(body) for tag, body in _INLINE.findall(html) if tag == "style"]
    return (f"default-src 'none'; script-src {' '.join(scripts)}; style-src {' '.join(styles)}; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def meta_policy(html: str) -> str | None:
    """The policy the page's ``<meta>`` element declares."""
    m = _META.search(html)
    return m.group(2) if m else None


def header_policy(html: str) -> str:
    return content_security_policy(html) + "; frame-ancestors 'none'"


def _page() -> tuple[bytes, str]:
    html = PAGE_PATH.read_text(encoding="utf-8")
    return html.encode(), header_policy(html)


async def serve_verify_page(request: web.Request) -> web.Response:
    """The page, with a policy that allows it no request at all."""
    body, policy = request.app[_PAGE_KEY]
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-cache",
    })


_PAGE_KEY: Final = web.AppKey("verify_page", tuple[bytes, str])


def add_verify_page(app: web.Application) -> None:
    """Route ``GET /verify`` (open: the page holds no data)."""
    app[_PAGE_KEY] = _page()
    app.router.add_get("/verify", serve_verify_page, name="verify_page", allow_head=False)


def main() -> int:
    html = PAGE_PATH.read_text(encoding="utf-8")
    updated = _META.sub(lambda m: m.group(1) + content_security_policy(html) + m.group(3), html)
    PAGE_PATH.write_text(updated, encoding="utf-8")
    print(f"{PAGE_PATH}: {content_security_policy(updated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
