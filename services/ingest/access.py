"""The access log: one JSON line per request, on the ``ledger.ingest.access`` logger.

Fields: ``method``, ``route`` (the route's template, e.g. ``/entries/{id}``: no ids, no query
string), ``status``, ``duration_ms``, ``request_id`` (appends: the idempotency key the entry
got), ``token_name`` (never the token), ``remote`` (the peer address; a proxy's
``X-Forwarded-For`` is not trusted). Never a header value, a query or a body.
``LEDGER_ACCESS_LOG=false`` turns it off; so does a log level above INFO for that logger.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

__all__ = ["REQUEST_ID_KEY", "TOKEN_NAME_KEY", "AccessLog"]

#: keys of ``request``'s own mapping where handlers leave what the access line reports
REQUEST_ID_KEY: Final = web.RequestKey("ledger_request_id", str)
TOKEN_NAME_KEY: Final = web.RequestKey("ledger_token_name", str)

_log = logging.getLogger("ledger.ingest.access")


class AccessLog:
    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def record(self, request: web.Request, route: str, status: int, seconds: float) -> None:
        if not self.enabled or not _log.isEnabledFor(logging.INFO):
            return
        _log.info("request", extra={
            "method": request.method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request.get(REQUEST_ID_KEY),
            "token_name": request.get(TOKEN_NAME_KEY),
            "remote": request.remote,
        })
