"""Who may pass, decided from the headers alone, before a request's body is read.

For a route that needs a scope (:data:`ROUTE_SCOPES`), in this order:

1. a bearer token is required, and must be one of the tokens file (else 401);
2. it must not have expired (else 401, ``error: token_expired``: the caller learns only that
   the token *it presented* expired, nothing about other tokens);
3. it must carry the route's scope (else 403);
4. its token bucket must hold a request (else 429 with ``Retry-After``, see
   :mod:`.ratelimit`): the token's own ``rate_per_s``/``burst`` from the tokens file, or the
   global ``LEDGER_RATE_LIMIT_PER_S``/``LEDGER_RATE_LIMIT_BURST``. With authentication
   off, every caller shares the bucket ``anonymous``.

Refusals are counted by reason and token *name* (``ledger_http_auth_refused_total``,
``ledger_http_rate_limited_total``); the token itself is never logged nor counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from shared.settings import Settings
from shared.telemetry import Metrics

from .access import TOKEN_NAME_KEY
from .auth import Principal, TokenStore
from .ratelimit import Limit, RateLimiter, retry_after_s
from .responses import error

__all__ = ["ANONYMOUS", "ROUTE_SCOPES", "Gate"]

log = logging.getLogger("ledger.ingest")

#: route name → scope a token needs (routes not listed are open)
ROUTE_SCOPES: Final = {
    "append": "append",
    "append_batch": "append",
    "list_entries": "read",
    "get_entry": "read",
    "get_entry_proof": "read",
    "get_batch_sigstore_bundle": "read",
    "get_entry_by_request": "read",
}
#: the rate-limit bucket (and access-log name) of every caller while auth is off
ANONYMOUS: Final = "anonymous"
#: at most one "expired token presented" line per token name in this many seconds
_EXPIRED_LOG_EVERY_S: Final = 60.0
_REALM: Final = 'Bearer realm="ledger"'


class Gate:
    """Authentication, expiry, scope and rate limit of one ingest process."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenStore | None,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = None if settings.auth_disabled else tokens
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._default = Limit.of(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._limiter = RateLimiter(clock=clock)
        self._generation = 0
        self._expired_logged: dict[str, float] = {}
        self._export_expiries()

    def _export_expiries(self) -> None:
        """``ledger_token_expiry_timestamp_seconds`` per token that expires (alert on it)."""
        self._metrics.token_expiry.clear()
        for principal in self._tokens.principals() if self._tokens is not None else []:
            if principal.expires_at is not None:
                self._metrics.token_expiry.labels(principal.name).set(principal.expires_at)

    def check(self, request: web.Request) -> Principal | web.Response | None:
        """The caller (None for open routes), or the 401/403/429 to answer."""
        scope = ROUTE_SCOPES.get(request.match_info.route.name or "")
        if scope is None:
            return None
        if self._tokens is None:
            return self._limited(ANONYMOUS, self._default)
        principal = self._authenticate(request)
        if isinstance(principal, web.Response):
            return principal
        if scope not in principal.scopes:
            self._metrics.auth_refused.labels("scope", principal.name).inc()
            return error(
                403, "forbidden", f"the token lacks the {scope!r} scope",
                field_name="Authorization",
                headers={"WWW-Authenticate": (
                    f'{_REALM}, error="insufficient_scope", scope="{scope}"'
                )},
            )
        limit = (self._default if principal.rate_per_s is None
                 else Limit.of(principal.rate_per_s, principal.burst))
        refused = self._limited(principal.name, limit)
        return principal if refused is None else refused

    def _authenticate(self, request: web.Request) -> Principal | web.Response:
        assert self._tokens is not None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._metrics.auth_refused.labels("missing", "").inc()
            return error(
                401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)",
                field_name="Authorization", headers={"WWW-Authenticate": _REALM},
            )
        principal = self._tokens.authenticate(token)
        if self._tokens.generation != self._generation:  # the file was reloaded
            self._generation = self._tokens.generation
            self._limiter.keep_only(self._tokens.names())
            self._export_expiries()
        if principal is None:
            self._metrics.auth_refused.labels("invalid", "").inc()
            return error(
                401, "unauthorized", "the bearer token is not valid",
                field_name="Authorization",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        request[TOKEN_NAME_KEY] = principal.name  # for the access log, refused or not
        if principal.expired(self._wall_clock()):
            return self._expired(principal)
        return principal

    def _expired(self, principal: Principal) -> web.Response:
        self._metrics.auth_refused.labels("expired", principal.name).inc()
        assert principal.expires_at is not None
        when = datetime.fromtimestamp(principal.expires_at, UTC).isoformat()
        now = self._clock()
        last = self._expired_logged.get(principal.name)
        if last is None or now - last >= _EXPIRED_LOG_EVERY_S:
            self._expired_logged[principal.name] = now
            log.warning("expired token presented",
                        extra={"token_name": principal.name, "expired_at": when})
        return error(
            401, "token_expired", f"the bearer token expired at {when}; ask for a new one",
            field_name="Authorization",
            headers={"WWW-Authenticate": (
                f'{_REALM}, error="invalid_token", error_description="the token expired"'
            )},
        )

    def _limited(self, name: str, limit: Limit | None) -> web.Response | None:
        if limit is None:
            return None
        wait_s = self._limiter.take(name, limit)
        if wait_s <= 0:
            return None
        self._metrics.rate_limited.labels(name).inc()
        retry = retry_after_s(wait_s)
        return error(
            429, "rate_limited",
            f"the rate limit of {limit.rate_per_s:g} requests/s (burst {limit.burst}) for "
            f"token {name!r} is used up: nothing was read or published; retry after "
            f"{retry} s",
            field_name="Authorization",
            headers={"Retry-After": str(retry)},
            extra={"rate_limit": {"rate_per_s": limit.rate_per_s, "burst": limit.burst}},
        )
