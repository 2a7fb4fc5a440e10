"""Bearer tokens with scopes, kept outside the code, stored only as SHA-256 hashes.

The tokens file (``LEDGER_TOKENS_FILE``) holds one JSON object per line::

    {"name": "ci-writer", "sha256": "<hex SHA-256 of the token>", "scopes": ["append"]}
    {"name": "batch-job", "sha256": "...", "scopes": ["append"],
     "expires_at": "2027-01-01T00:00:00Z", "rate_per_s": 50, "burst": 100}

Scopes are ``append`` (``POST /append``) and ``read`` (``GET /entries...``). Optional:
``expires_at`` (RFC 3339 with an offset; from then on the token is refused with 401),
``rate_per_s`` and ``burst`` (this token's rate limit, instead of ``LEDGER_RATE_LIMIT_PER_S``
and ``LEDGER_RATE_LIMIT_BURST``; ``rate_per_s: 0`` exempts it). Names should be unique: rate
limits, logs and metrics are kept by name. Blank lines and ``#`` comments are allowed. A token is
shown once, by :func:`create_token`, and never stored or logged in clear. Lookup hashes the
presented token and compares it with *every* stored hash using :func:`hmac.compare_digest`,
so the time taken does not depend on which stored hash (if any) matches.

The file is re-read when its modification time changes (checked at most once a second), so
adding, revoking or expiring a token needs no restart; a version that does not parse is
reported once (``tokens file not reloaded``) and the previous tokens stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from shared.errors import ConfigError

__all__ = ["SCOPES", "Principal", "TokenStore", "create_token", "hash_token", "parse_expiry"]

log = logging.getLogger("ledger.ingest")

SCOPES: Final = frozenset({"append", "read"})
_TOKEN_PREFIX: Final = "ldg_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to (its name, never the token)."""

    name: str
    scopes: frozenset[str]
    #: POSIX seconds from which the token is refused; None: never
    expires_at: float | None = None
    #: this token's own rate limit (None: the global one)
    rate_per_s: float | None = None
    burst: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    path: str | Path,
    name: str,
    scopes: Iterable[str],
    *,
    expires_at: datetime | None = None,
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> str:
    """Create a token, append its hash to the tokens file and return the token (shown once).

    The file is created with mode 0600 if missing. ``expires_at`` must carry a time zone.
    """
    wanted = frozenset(scopes)
    if not wanted or not wanted <= SCOPES:
        raise ConfigError(f"token scopes must be a non-empty subset of {sorted(SCOPES)}")
    if not name or "\n" in name:
        raise ConfigError("a token needs a one-line name")
    doc: dict[str, object] = {"name": name, "sha256": "", "scopes": sorted(wanted)}
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ConfigError("a token's expiry needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        doc["expires_at"] = expires_at.isoformat(timespec="seconds")
    if rate_per_s is not None:
        doc["rate_per_s"] = rate_per_s
    if burst is not None:
        doc["burst"] = burst
    _limits_of(doc, "token")  # the same checks as when the file is read
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    doc["sha256"] = hash_token(token)
    line = json.dumps(doc)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line + "\n")
    return token


_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes"}


def parse_expiry(text: str, *, now: datetime | None = None) -> datetime:
    """``90d``, ``12h``, ``30m`` from ``now``, or an RFC 3339 time with an offset."""
    match = _DURATION.match(text.strip())
    if match:
        start = now or datetime.now(UTC)
        return start + timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(
            f"token expiry {text!r}: expected a duration (90d, 12h, 30m) or an RFC 3339 "
            "time with an offset (2027-01-01T00:00:00Z)"
        )
    return when


def _expiry_of(doc: dict[str, object], where: str) -> float | None:
    value = doc.get("expires_at")
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(
            f"{where}: expires_at must be an RFC 3339 time with an offset, "
            f"e.g. 2027-01-01T00:00:00Z (got {value!r})"
        )
    return when.timestamp()


def _limits_of(doc: dict[str, object], where: str) -> tuple[float | None, int | None]:
    rate, burst = doc.get("rate_per_s"), doc.get("burst")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1e9
    ):
        raise ConfigError(f"{where}: rate_per_s must be a number >= 0 (got {rate!r})")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ConfigError(f"{where}: burst must be an integer >= 1 (got {burst!r})")
    return (None if rate is None else float(rate)), burst


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
        where = f"LEDGER_TOKENS_FILE line {number}"
        rate, burst = _limits_of(doc, where)
        entries.append((digest, Principal(name=name, scopes=scopes,
                                          expires_at=_expiry_of(doc, where),
                                          rate_per_s=rate, burst=burst)))
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
        #: bumped on every reload, so that per-name state can be pruned
        self.generation = 0
        self._bad_mtime = -1  # a broken version already reported

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
        mtime = -2  # the file is gone
        try:
            mtime = self._stat()
            if mtime in (self._mtime, self._bad_mtime):
                return
            self._entries = _load(self._path)
            self._mtime = mtime
            self.generation += 1
            log.info("tokens file reloaded", extra={"tokens": len(self._entries)})
        except ConfigError as exc:
            # keep serving with the last good set; a broken edit must not lock everyone out
            if mtime != self._bad_mtime:
                self._bad_mtime = mtime
                log.error(  # noqa: TRY400 - the message names the line; a traceback adds nothing
                    "tokens file not reloaded; keeping the previous tokens",
                    extra={"error": str(exc)},
                )

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> frozenset[str]:
        return frozenset(p.name for _, p in self._entries)

    def principals(self) -> list[Principal]:
        return [p for _, p in self._entries]

    def authenticate(self, token: str) -> Principal | None:
        """The principal owning ``token``, or None (constant time over the stored hashes).

        An expired token is still returned (check :meth:`Principal.expired`), so the caller
        can be told that it expired rather than that it is unknown."""
        self._maybe_reload()
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found
