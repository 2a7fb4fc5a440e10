"""A read-only HTTP server for a tlog-tiles log directory: the log's "read URL".

rekor-tiles' POSIX server writes its checkpoint and tiles as files (``checkpoint``,
``tile/<L>/<N>[.p/<W>]``, ``tile/entries/<N>[.p/<W>]``) and answers 501 for them over its
own API; a real deployment serves that directory from a bucket or CDN. This program does the
same for the local stack, on 127.0.0.1 only::

    python deploy/local/tiles_server.py --root DIR --port PORT

Only ``GET`` of ``/checkpoint`` and of files below ``/tile/`` is answered; every other path
(the log's private ``.state`` directory among them) is 404, every other method 405. It uses
the standard library only, so it runs without the project on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["TILE_PATH", "main", "resolve"]

#: The paths of the tlog-tiles layout (checkpoint, hash tiles and entry bundles).
TILE_PATH = re.compile(
    r"^/(checkpoint|tile/(?:\d+|entries)(?:/x\d{3})*/\d{3}(?:\.p/\d{1,3})?)$"
)


def resolve(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` for a request path, or None when it is not a tiles path."""
    path = url_path.split("?", 1)[0]
    if not TILE_PATH.match(path):
        return None
    found = (root / path.lstrip("/")).resolve()
    return found if found.is_relative_to(root) and found.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    server_version = "ledger-tiles"
    root: Path

    def do_GET(self) -> None:
        found = resolve(self.root, self.path)
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            data = found.read_bytes()
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        is_checkpoint = found.name == "checkpoint"
        kind = "text/plain; charset=utf-8" if is_checkpoint else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-cache" if is_checkpoint else "max-age=31536000")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a tlog-tiles directory read-only.")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    handler = type("Handler", (_Handler,), {"root": args.root.resolve()})
    with ThreadingHTTPServer((args.host, args.port), handler) as server:
        server.daemon_threads = True
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
