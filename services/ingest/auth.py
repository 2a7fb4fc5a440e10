"""Bearer tokens with scopes, kept outside the code, stored only as SHA-256 hashes.

The tokens file (``LEDGER_TOKENS_FILE``) holds one JSON object per line::

    {"name": "ci-writer", "sha256": "<hex SHA-256 of the token>", "scopes": ["append"]}

Scopes are ``append`` (``POST /append``) and ``read`` (``GET /entries...``). A token is
shown once, by :func:`create_token`, and never stored or logged in clear. Lookup hashes the
presented token and compares it with *every* stored hash using :func:`hmac.compare_digest`,
so the time taken does not depend on which stored hash (if any) matches.

The file is re-read when its modification time changes (checked at most once a second), so
adding or revoking a token needs no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.errors import ConfigError

__all__ = ["SCOPES", "Principal", "TokenStore", "create_token", "hash_token"]

SCOPES: Final = frozenset({"append", "read"})
_TOKEN_PREFIX: Final = "ldg_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to (its name, never the token)."""

    name: str
    scopes: frozenset[str]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(path: str | Path, name: str, scopes: Iterable[str]) -> str:
    """Create a token, append its hash to the tokens file and return the token (shown once).

    The file is created with mode 0600 if missing.
    """
    wanted = frozenset(scopes)
    if not wanted or not wanted <= SCOPES:
        raise ConfigError(f"token scopes must be a non-empty subset of {sorted(SCOPES)}")
    if not name or "\n" in name:
        raise ConfigError("a token needs a one-line name")
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    line = json.dumps({"name": name, "sha256": hash_token(token), "scopes": sorted(wanted)})
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line + "\n")
    return token


def _load(path: Path) -> list[tuple[bytes, Principal]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"LEDGER_TOKENS_FILE={str(path)!r}: cannot read ({exc.strerror})"
        ) from None
    entries: list[tuple[bytes, Principal]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            doc = json.loads(line)
            name = str(doc["name"])
            digest = bytes.fromhex(str(doc["sha256"]))
            scopes = frozenset(str(s) for s in doc["scopes"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"LEDGER_TOKENS_FILE line {number}: expected "
                '{"name": ..., "sha256": <64 hex>, "scopes": [...]}'
            ) from None
        if len(digest) != 32 or not scopes <= SCOPES:
            raise ConfigError(
                f"LEDGER_TOKENS_FILE line {number}: bad hash length or unknown scope "
                f"(scopes: {sorted(SCOPES)})"
            )
        entries.append((digest, Principal(name=name, scopes=scopes)))
    return entries


class TokenStore:
    """The hashed tokens of one file, reloaded when the file changes."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = 1.0,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._recheck_s = recheck_s
        self._mtime = self._stat()
        self._entries = _load(self._path)
        self._checked_at = clock()

    def _stat(self) -> int:
        try:
            return self._path.stat().st_mtime_ns
        except OSError as exc:
            raise ConfigError(
                f"LEDGER_TOKENS_FILE={str(self._path)!r}: cannot read ({exc.strerror})"
            ) from None

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        try:
            mtime = self._stat()
            if mtime != self._mtime:
                self._entries = _load(self._path)
                self._mtime = mtime
        except ConfigError:
            # keep serving with the last good set; a broken edit must not lock everyone out
            return

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal owning ``token``, or None (constant time over the stored hashes)."""
        self._maybe_reload()
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found
