"""The ingest HTTP API (aiohttp): validate, hash, publish to ``ledger.append``, answer.

Routes (documented in ``openapi.json`` next to this file, served at ``GET /openapi.json``):

=========================================  ========  ==========================================
``POST /append``                           append    validate, publish, wait for the signer
``POST /append/batch``                     append    up to 1,000 appends, one result each
``GET /entries``                           read      filters + keyset cursor pagination
``GET /entries/{id}``                      read      one entry (the 202 status URL)
``GET /entries/{id}/proof``                read      the offline proof bundle (409 until anchored)
``GET /entries/by-request/{request_id}``   read      one entry by its idempotency key
``GET /batches/{id}/sigstore-bundle``      read      the batch's Sigstore bundle (409 pending)
``GET /health``                            open      status, database, rekor, kafka, vault
``GET /livez``                             open      200 while the event loop runs
``GET /readyz``                            open      200 while appends are accepted, else 503
``GET /metrics``                           open      Prometheus exposition
``GET /openapi.json``                      open      this API's OpenAPI 3.1 document
``GET /verify``                            open      the verification page (``verify_page``)
=========================================  ========  ==========================================

How ``POST /append`` answers
----------------------------
1. Auth (401, 403) and the token's rate limit (429), from the headers (:mod:`.gate`);
   content type (415), size (413: ``Content-Length`` first, then a capped read), JSON
   (400), fields (400/413). Any rejection publishes nothing.
2. The payload is hashed and dropped (:mod:`.validation`). The request id is the client's
   (``request_id`` or ``Idempotency-Key``; both → must match) or a fresh UUIDv4; the entry id
   is ``entry_id_for(request_id)`` — known before anything is published.
3. Only when the client chose the request id can the entry already exist: then ingest does
   **one** lookup by request id before publishing. Same content → ``201`` with the stored
   entry (``Idempotent-Replayed: true``), nothing published; different content → ``409``.
   If the database is down or slower than ``lookup_timeout_ms`` the lookup is skipped and
   the signer's idempotency decides.
4. The :class:`AppendRequest` is published (key = subject) and the broker's ``acks=all``
   acknowledgement awaited, at most ``publish_timeout_ms``. No ack → ``503`` + ``Retry-After``
   and the request id: never acknowledged to the client what Kafka has not. The record may
   still reach Kafka later; a retry with the same request id is then one entry (the signer
   stores one row per request id).
5. ``Prefer: respond-async`` → ``202`` now. Otherwise the handler waits, at most
   ``append_wait_ms``, on a future registered under the entry id *before* publishing; the
   process's single ``ledger.signed`` tail (:mod:`.waiter`) resolves it. No database polling.
   Resolved → ``201`` in the runbook's shape; timed out → ``202`` with the status URL.

``POST /append/batch`` runs the same steps for up to 1,000 entries at once: every entry is
validated like an ``/append`` body and gets its own result (``201``, ``202``, ``409`` or the
``4xx`` of its problem) at its index; one lookup covers the client-chosen request ids; the
valid entries go to Kafka together; the answer is ``200`` with the results (``errors`` true
when any entry was refused). Only a malformed envelope fails the whole request (``4xx``); if
Kafka does not acknowledge, the answer is ``503`` naming the request id of every entry, so a
retry with those ids is idempotent.

Load shedding and health
------------------------
At most ``max_in_flight`` requests are handled at once (health, liveness, readiness, metrics
and the OpenAPI document do not count); past it a request is answered ``503`` + ``Retry-After``
before its body is read. ``/health`` (:mod:`shared.health`): ``unhealthy`` (503) only while
appends cannot be accepted (Kafka down, shutting down, at the in-flight bound); PostgreSQL,
Vault or Rekor down is ``degraded`` (200): appends still reach Kafka and the signer catches
up later, reads answer 503. The dependency probes are cached for ``health_cache_s``.

Never logs or returns the payload or a token; logs carry request id and entry id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from opentelemetry.trace import Span
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import fastjson
from shared.errors import (
    ConfigError,
    DatabaseUnavailable,
    KafkaUnavailable,
    LedgerError,
    Policy,
)
from shared.health import Probe
from shared.messages import append_request_fields
from shared.otel import EntryTracer, ended
from shared.settings import Settings
from shared.statement import content_sha256, entry_id_for
from shared.telemetry import Metrics, log_context
from shared.tracing import continue_trace, trace_id_of

from .access import REQUEST_ID_KEY, AccessLog
from .auth import TokenStore
from .gate import Gate
from .health import IngestHealth
from .reads import EntryReads
from .responses import (
    RETRY_AFTER_S,
    RequestUnavailable,
    accepted,
    conflict,
    created,
    error,
    item_accepted,
    item_conflict,
    item_created,
    json_response,
    overloaded,
    parse_prefer,
    rejection,
)
from .store import EntryStore, EntryView, ProofStore
from .validation import (
    MetaSchema,
    RequestRejected,
    ValidAppend,
    body_limit,
    parse_append,
    parse_append_batch,
    resolve_request_id,
)
from .verify_page import add_verify_page
from .waiter import SignedWaiter

__all__ = ["OPENAPI_PATH", "IngestDeps", "Publisher", "build_app", "check_auth_config"]

log = logging.getLogger("ledger.ingest")

OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
#: routes that neither count towards nor are refused at ``max_in_flight``
_UNCOUNTED: Final = frozenset({"health", "livez", "readyz", "metrics", "openapi", "verify_page"})
_READ_CHUNK: Final = 64 * 1024
_JSON_HEADER: Final = ("content-type", b"application/json")
_JSON_TYPE_RE: Final = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")

class Publisher(Protocol):
    """Sends records and returns once the broker acknowledged them (``acks=all``).

    Raises :class:`KafkaUnavailable` when it cannot; :class:`.publisher.KafkaPublisher` fits.
    """

    async def send(
        self, topic: str, key: bytes | str | None, value: bytes, headers: Any = None
    ) -> object: ...

    async def send_many(
        self, records: Sequence[tuple[str, bytes | str | None, bytes, Any]]
    ) -> object: ...


@dataclass(frozen=True)
class IngestDeps:
    """Everything the API talks to, injectable for tests."""

    publisher: Publisher
    store: EntryStore
    waiter: SignedWaiter
    metrics: Metrics
    #: name → probe; ``/health`` reports each (database, kafka, vault, rekor)
    health_checks: Mapping[str, Probe] = field(default_factory=dict)
    #: None only when ``settings.auth_disabled``
    tokens: TokenStore | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    meta_schema: MetaSchema | None = None  # default: loaded from settings.meta_schema_path
    #: ``GET /entries/{id}/proof`` reads here; None answers 501 (the service passes its store)
    proofs: ProofStore | None = None
    #: set when the process is shutting down: ``/health`` and ``/readyz`` say so (503)
    stopping: asyncio.Event | None = None
    #: one span per append when tracing is on (:mod:`shared.otel`); None: off
    tracer: EntryTracer | None = None


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


class _Api:
    def __init__(self, settings: Settings, deps: IngestDeps, openapi: bytes) -> None:
        self.settings = settings
        self.deps = deps
        self.metrics = deps.metrics
        self.openapi = openapi
        self.meta_schema = deps.meta_schema or MetaSchema.from_path(settings.meta_schema_path)
        self.body_limit = body_limit(settings.max_payload_bytes, settings.max_meta_bytes)
        self.batch_body_limit = settings.max_batch_body_bytes
        self.wait_s = settings.append_wait_ms / 1000
        self.in_flight = 0
        self.gate = Gate(settings, deps.tokens, deps.metrics)
        self.access_log = AccessLog(settings.access_log)
        self.health = IngestHealth(
            settings, deps.metrics, deps.health_checks, stopping=deps.stopping,
            in_flight=lambda: self.in_flight,
        )

    # --- middlewares ------------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Metrics and the access log for every request, the ``max_in_flight`` bound (503 past
        it, before the body is read), :class:`.gate.Gate` (auth, expiry, scope, rate limit:
        also before the body is read) where the route needs it, JSON errors.

        One middleware, not three: each layer is a coroutine per request.
        """
        started = time.monotonic()
        status = 500
        counted = request.match_info.route.name not in _UNCOUNTED
        response: web.StreamResponse
        try:
            if counted and self.in_flight >= self.settings.max_in_flight:
                response = overloaded()
            elif counted:
                self.in_flight += 1
                try:
                    response = await self._guarded(request, handler)
                finally:
                    self.in_flight -= 1
            else:
                response = await self._guarded(request, handler)
            status = response.status
            return response
        finally:
            route = _route_label(request)
            seconds = time.monotonic() - started
            self.metrics.http_requests.labels(route, request.method, str(status)).inc()
            self.metrics.http_latency.labels(route).observe(seconds)
            self.access_log.record(request, route, status, seconds)

    async def _guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            principal = self.gate.check(request)
            if isinstance(principal, web.Response):
                return principal
            if principal is None:
                return await handler(request)
            with log_context(token_name=principal.name):
                return await handler(request)
        except RequestRejected as exc:
            return rejection(exc)
        except LedgerError as exc:
            if exc.policy is not Policy.RETRY:
                log.exception("unhandled error", extra={"path": request.path})
                return error(500, "internal_error", "internal error")
            # what a stage would pause and retry on, a client retries later
            log.warning(
                "dependency unavailable", extra={"error": type(exc).__name__, "path": request.path}
            )
            return error(
                503, "unavailable", "a dependency is unavailable; retry later",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {
                k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")
            }
            return error(
                exc.status,
                exc.reason.lower().replace(" ", "_"),
                exc.reason,
                headers=headers,
            )
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return error(500, "internal_error", "internal error")

    # --- POST /append ---------------------------------------------------------------------

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        if not _JSON_TYPE_RE.match(request.content_type.lower()):
            raise RequestRejected(
                415, "Content-Type", "must be application/json",
                error="unsupported_media_type",
            )
        too_large = RequestRejected(
            413, "body", f"is too large (at most {limit} bytes)",
            error="payload_too_large",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _limits(self) -> dict[str, Any]:
        return {
            "max_payload_bytes": self.settings.max_payload_bytes,
            "max_meta_bytes": self.settings.max_meta_bytes,
            "max_meta_depth": self.settings.max_meta_depth,
            "meta_schema": self.meta_schema,
        }

    def _wait_s(self, request: web.Request) -> tuple[bool, float]:
        """(respond-async asked for, how long to wait for the signer)."""
        prefer = request.headers.get("Prefer")
        if prefer is None:
            return False, self.wait_s
        respond_async, wait_pref = parse_prefer(prefer)
        return respond_async, self.wait_s if wait_pref is None else min(self.wait_s, wait_pref)

    def _message(self, valid: ValidAppend, request_id: str) -> bytes:
        """The ``ledger.append`` JSON (values validated already; see append_request_fields)."""
        return fastjson.dumps(append_request_fields(
            request_id=request_id, subject=valid.subject, payload_sha256=valid.payload_sha256,
            meta=valid.meta, submitted_at=self.deps.clock(),
        ))

    async def append(self, request: web.Request) -> web.Response:
        raw = await self._read_body(request, self.body_limit)
        valid = parse_append(raw, **self._limits())
        del raw  # the payload is gone from here on: only its hash remains
        client_id = resolve_request_id(valid.request_id, request.headers.get("Idempotency-Key"))
        request_id = request[REQUEST_ID_KEY] = client_id or str(uuid.uuid4())
        entry_id = entry_id_for(request_id)
        respond_async, wait_s = self._wait_s(request)
        content = content_sha256(
            subject=valid.subject, payload_sha256=valid.payload_sha256, meta=valid.meta
        )
        span, trace = self._trace(request, entry_id)
        with log_context(
            request_id=request_id, entry_id=str(entry_id), trace_id=trace_id_of(trace)
        ), ended(span):
            if client_id is not None:
                existing = await self._existing(request_id)
                if existing is not None:
                    return self._answer_existing(existing, content)
            record = (self.settings.topic_append, valid.subject,
                      self._message(valid, request_id), [_JSON_HEADER, *trace])
            if respond_async or wait_s <= 0:
                await self._publish([record], [request_id], valid.payload_sha256)
                self.metrics.append_wait.labels("async").inc()
                return accepted(request_id, entry_id, preference_applied=respond_async)
            with self.deps.waiter.expect(entry_id) as signed:
                await self._publish([record], [request_id], valid.payload_sha256)
                done, _ = await asyncio.wait({signed}, timeout=wait_s)
            if not done or signed.cancelled():
                self.metrics.append_wait.labels("timeout").inc()
                log.info("append accepted; signer not done within the wait")
                return accepted(request_id, entry_id, preference_applied=False)
            view = signed.result()
            self.metrics.append_wait.labels("stored").inc()
            if self._content_of(view) != content:
                return self._conflict(view)
            log.debug("append stored", extra={"payload_sha256": view.payload_hash})
            return created(view, replayed=False)

    def _trace(
        self, request: web.Request, entry_id: uuid.UUID
    ) -> tuple[Span | None, list[tuple[str, bytes]]]:
        """(this append's span or None, the trace headers for ``ledger.append``)."""
        parent, state = request.headers.get("traceparent"), request.headers.get("tracestate")
        if self.deps.tracer is None:
            return None, continue_trace(parent, state)
        return self.deps.tracer.ingest(parent, state, entry_id=entry_id)

    async def append_batch(self, request: web.Request) -> web.Response:
        """``POST /append/batch``: one result per entry (see the module docstring)."""
        raw = await self._read_body(request, self.batch_body_limit)
        items = parse_append_batch(raw, **self._limits())
        del raw
        respond_async, wait_s = self._wait_s(request)
        trace = continue_trace(
            request.headers.get("traceparent"), request.headers.get("tracestate")
        )
        results: list[dict[str, Any] | None] = [None] * len(items)
        # request id → (index of its first entry, content hash); later entries with the same
        # id share that entry's result (same content) or are conflicts (other content)
        first: dict[str, tuple[int, str]] = {}
        followers: dict[int, list[int]] = {}
        todo: list[tuple[int, ValidAppend, str, uuid.UUID, str]] = []
        client_ids: list[str] = []
        assigned: list[str | None] = [None] * len(items)  # for a 503: retry with these
        for index, item in enumerate(items):
            if isinstance(item, RequestRejected):
                results[index] = {"index": index, "status": item.status, **item.body()}
                continue
            request_id = assigned[index] = item.request_id or str(uuid.uuid4())
            content = content_sha256(
                subject=item.subject, payload_sha256=item.payload_sha256, meta=item.meta
            )
            seen = first.get(request_id)
            if seen is not None:
                if seen[1] == content:
                    followers.setdefault(seen[0], []).append(index)
                else:
                    results[index] = item_conflict(index, entry_id_for(request_id),
                                                         request_id, earlier=seen[0])
                continue
            first[request_id] = (index, content)
            if item.request_id is not None:
                client_ids.append(request_id)
            todo.append((index, item, request_id, entry_id_for(request_id), content))
        if client_ids:
            existing = await self._existing_many(client_ids)
            kept = []
            for index, item, request_id, entry_id, content in todo:
                view = existing.get(request_id)
                if view is None:
                    kept.append((index, item, request_id, entry_id, content))
                elif self._content_of(view) != content:
                    results[index] = item_conflict(index, view.id, request_id)
                else:
                    results[index] = item_created(index, view, replayed=True)
            todo = kept
        # tracing on: a span (and trace headers) per entry; off: the request's headers
        traced = [self._trace(request, entry_id) for _, _, _, entry_id, _ in todo] \
            if self.deps.tracer is not None else []
        records = [
            (self.settings.topic_append, item.subject, self._message(item, request_id),
             [_JSON_HEADER, *(traced[k][1] if traced else trace)])
            for k, (_, item, request_id, _, _) in enumerate(todo)
        ]
        ids = [request_id for _, _, request_id, _, _ in todo]
        waiting = not respond_async and wait_s > 0
        with contextlib.ExitStack() as stack:
            stack.enter_context(ended([span for span, _ in traced if span is not None]))
            signed = [stack.enter_context(self.deps.waiter.expect(entry_id))
                      for _, _, _, entry_id, _ in todo] if waiting else []
            if records:
                await self._publish(records, ids, None, every_id=assigned)
            if signed:
                await asyncio.wait(set(signed), timeout=wait_s)
            for k, (index, _, request_id, entry_id, content) in enumerate(todo):
                future = signed[k] if signed else None
                if future is None or not future.done() or future.cancelled():
                    results[index] = item_accepted(index, request_id, entry_id)
                elif self._content_of(future.result()) != content:
                    results[index] = item_conflict(index, entry_id, request_id)
                else:
                    results[index] = item_created(index, future.result(), replayed=False)
        for leader, indexes in followers.items():
            for index in indexes:
                results[index] = {**(results[leader] or {}), "index": index}
        done = [r for r in results if r is not None]
        failed = sum(1 for r in done if r["status"] >= 400)
        self.metrics.append_wait.labels("batch").inc(len(todo))
        log.info("append batch", extra={"entries": len(items), "published": len(records),
                                        "refused": failed})
        return json_response({"errors": failed > 0, "refused": failed, "results": done})

    async def _existing(self, request_id: str) -> EntryView | None:
        return (await self._existing_many([request_id])).get(request_id)

    async def _existing_many(self, request_ids: Sequence[str]) -> dict[str, EntryView]:
        try:
            async with asyncio.timeout(self.settings.lookup_timeout_ms / 1000):
                if len(request_ids) == 1:
                    view = await self.deps.store.get_by_request_id(request_ids[0])
                    return {} if view is None else {view.request_id: view}
                return await self.deps.store.get_by_request_ids(request_ids)
        except (DatabaseUnavailable, TimeoutError) as exc:
            # availability over an early answer: the signer's idempotency still decides
            log.warning("idempotency lookup skipped", extra={"error": type(exc).__name__})
            return {}

    @staticmethod
    def _content_of(view: EntryView) -> str:
        return view.content_sha256 or content_sha256(
            subject=view.subject, payload_sha256=view.payload_hash, meta=view.meta
        )

    def _answer_existing(self, view: EntryView, content: str) -> web.Response:
        if self._content_of(view) != content:
            return self._conflict(view)
        log.info("append replayed from the database")
        self.metrics.append_wait.labels("replayed").inc()
        return created(view, replayed=True)

    @staticmethod
    def _conflict(view: EntryView) -> web.Response:
        log.warning("idempotency conflict")
        return conflict(view)

    async def _publish(
        self,
        records: Sequence[tuple[str, bytes | str | None, bytes, Any]],
        request_ids: Sequence[str],
        payload_sha256: str | None,
        *,
        every_id: Sequence[str | None] | None = None,
    ) -> None:
        try:
            if len(records) == 1:
                await self.deps.publisher.send(*records[0])
            else:
                await self.deps.publisher.send_many(records)
        except KafkaUnavailable as exc:
            log.warning("publish failed; answering 503", extra={"error": type(exc).__name__})
            raise RequestUnavailable(request_ids[0] if len(request_ids) == 1 else None,
                                     every_id) from None
        self.metrics.appends_published.inc(len(records))
        if payload_sha256 is not None and log.isEnabledFor(logging.DEBUG):
            # per request, so DEBUG: at thousands a second a line each costs more than the
            # append; the unusual outcomes (timeout, replay, conflict, 503) stay at INFO
            log.debug("append published", extra={"payload_sha256": payload_sha256})

    # --- operations -------------------------------------------------------------------------

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        data = generate_latest(self.metrics.registry)
        response = web.Response(body=data)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")


def check_auth_config(settings: Settings) -> None:
    """Fail closed: auth on without a tokens file is a configuration error."""
    if not settings.auth_disabled and not settings.tokens_file:
        raise ConfigError(
            "authentication is on but no tokens are configured: set LEDGER_TOKENS_FILE "
            "(create a token with services.ingest.create_token) or, for development only, "
            "LEDGER_AUTH_DISABLED=true"
        )


def build_app(settings: Settings, deps: IngestDeps) -> web.Application:
    """The aiohttp application; ``deps`` carries every external system (see :class:`IngestDeps`).

    Raises :class:`ConfigError` when auth is on without a token store, or the meta schema
    cannot be loaded.
    """
    if deps.tokens is None:
        check_auth_config(settings)
    if settings.auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED: anyone who can reach this port can append and read. "
            "Never run like this outside development."
        )
    api = _Api(settings, deps, OPENAPI_PATH.read_bytes())
    reads = EntryReads(deps.store, deps.proofs)
    app = web.Application(
        middlewares=[api.middleware],
        client_max_size=max(api.body_limit, api.batch_body_limit),
    )
    r = app.router
    r.add_post("/append", api.append, name="append")
    r.add_post("/append/batch", api.append_batch, name="append_batch")
    r.add_get("/entries", reads.list_entries, name="list_entries", allow_head=False)
    r.add_get(
        "/entries/by-request/{request_id}", reads.get_entry_by_request,
        name="get_entry_by_request", allow_head=False,
    )
    r.add_get("/entries/{id}", reads.get_entry, name="get_entry", allow_head=False)
    r.add_get(
        "/entries/{id}/proof", reads.get_entry_proof, name="get_entry_proof", allow_head=False
    )
    r.add_get(
        "/batches/{id}/sigstore-bundle", reads.get_batch_sigstore_bundle,
        name="get_batch_sigstore_bundle", allow_head=False,
    )
    r.add_get("/health", api.health.health, name="health", allow_head=False)
    r.add_get("/livez", api.health.livez, name="livez", allow_head=False)
    r.add_get("/readyz", api.health.readyz, name="readyz", allow_head=False)
    r.add_get("/metrics", api.metrics_endpoint, name="metrics", allow_head=False)
    r.add_get("/openapi.json", api.openapi_endpoint, name="openapi", allow_head=False)
    add_verify_page(app)
    return app

