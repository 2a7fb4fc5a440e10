"""ingest: the HTTP front door of the ledger (aiohttp).

Validates append requests, hashes the payload and drops it, publishes the hash to
``ledger.append`` with ``acks=all`` and answers 201 once the signer stored the entry (or 202
with a status URL), and serves reads, health, metrics, the OpenAPI document and the
verification page.

* :mod:`.app` — routes, middlewares (metrics, errors, bearer auth), the append flow;
* :mod:`.validation` — body checks, payload hashing (no I/O);
* :mod:`.auth` — hashed bearer tokens with scopes, expiry and limits, :func:`create_token`;
* :mod:`.gate` — auth, expiry, scope and per-token rate limit (:mod:`.ratelimit`), before
  any body is read;
* :mod:`.access` — the JSON access log (token name, never the token);
* :mod:`.tls` — the HTTPS listener's context (``LEDGER_TLS_CERT_FILE``/``_KEY_FILE``);
* :mod:`.waiter` — the per-process ``ledger.signed`` tail that wakes waiting requests;
* :mod:`.store` — read queries and the entry's JSON shape;
* :mod:`.health` — ``/health``, ``/livez``, ``/readyz`` and the Rekor probe;
* :mod:`.verify_page` — ``/verify``: ``verify.html``, which verifies a proof bundle in the
  browser, offline, and its Content-Security-Policy;
* :mod:`.service` — :func:`run_ingest`: wiring and graceful shutdown.

It must never forward, store or log a payload or a token.
"""

from .app import OPENAPI_PATH, IngestDeps, Publisher, build_app
from .auth import SCOPES, TokenStore, create_token
from .service import run_ingest

__all__ = [
    "OPENAPI_PATH",
    "SCOPES",
    "IngestDeps",
    "Publisher",
    "TokenStore",
    "build_app",
    "create_token",
    "run_ingest",
]
