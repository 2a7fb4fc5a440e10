"""Unit tests of the ingest HTTP API with injected fakes (no network, no services).

The fakes: a publisher that records what it was asked to send (or fails like an unreachable
Kafka), an in-memory entry store, and the real future registry of the ``ledger.signed`` tail,
fed by hand the way the tail would feed it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ingest import IngestDeps, build_app, create_token
from services.ingest.auth import TokenStore
from services.ingest.responses import json_response
from services.ingest.store import EntryFilter, EntryView
from services.ingest.waiter import FutureRegistry
from shared.errors import ConfigError, DatabaseUnavailable, KafkaUnavailable
from shared.health import Check
from shared.messages import AppendRequest, decode
from shared.settings import Settings
from shared.statement import content_sha256, entry_id_for
from shared.telemetry import JsonFormatter, Metrics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | str | None, bytes, Any]] = []
        self.fail = False
        self.on_send: Any = None
        self.on_send_async: Any = None

    async def send(self, topic, key, value, headers=None) -> None:
        await self.send_many([(topic, key, value, headers)])

    async def send_many(self, records) -> None:
        if self.fail:
            raise KafkaUnavailable("broker unreachable")
        for topic, key, value, headers in records:
            self.sent.append((topic, key, value, headers))
            if self.on_send is not None:
                self.on_send(value)
            if self.on_send_async is not None:
                await self.on_send_async(value)


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, EntryView] = {}
        self.down = False
        self.lookups = 0

    async def get(self, entry_id):
        if self.down:
            raise DatabaseUnavailable("down")
        return self.rows.get(entry_id)

    async def get_by_request_id(self, request_id):
        self.lookups += 1
        if self.down:
            raise DatabaseUnavailable("down")
        return next((v for v in self.rows.values() if v.request_id == request_id), None)

    async def get_by_request_ids(self, request_ids):
        self.lookups += 1
        if self.down:
            raise DatabaseUnavailable("down")
        return {v.request_id: v for v in self.rows.values() if v.request_id in request_ids}

    async def list(self, flt: EntryFilter):
        rows = sorted(self.rows.values(), key=lambda v: (v.created_at, v.id))
        if flt.order == "desc":
            rows.reverse()
        out = []
        for v in rows:
            if flt.subject is not None and v.subject != flt.subject:
                continue
            if flt.created_from is not None and v.created_at < flt.created_from:
                continue
            if flt.created_to is not None and v.created_at >= flt.created_to:
                continue
            if flt.anchored is not None and (v.anchored_at is not None) != flt.anchored:
                continue
            if flt.after is not None:
                key, after = (v.created_at, v.id), (flt.after.created_at, flt.after.id)
                if (flt.order == "asc" and key <= after) or (flt.order == "desc" and key >= after):
                    continue
            out.append(v)
        return out[: flt.limit]

    async def health(self, *, timeout_s):
        return not self.down


def make_view(request_id: str, *, subject="orders/1", payload=b"hello", meta=None,
              created_at=NOW, anchored=False) -> EntryView:
    meta = meta or {}
    digest = hashlib.sha256(payload).hexdigest()
    return EntryView(
        id=entry_id_for(request_id), subject=subject, payload_hash=digest,
        signature="vault:v1:c2ln", public_key="-----BEGIN PUBLIC KEY-----\n...",
        created_at=created_at, rekor_log_id="log" if anchored else None,
        rekor_index=7 if anchored else None, request_id=request_id, key_version=1,
        meta=meta, submitted_at=created_at, anchored_at=created_at if anchored else None,
        content_sha256=content_sha256(subject=subject, payload_sha256=digest, meta=meta),
    )


class Harness:
    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.tokens_file = tmp_path / "tokens.jsonl"
        self.append_token = create_token(self.tokens_file, "writer", ["append"])
        self.read_token = create_token(self.tokens_file, "reader", ["read"])
        settings_kw: dict[str, Any] = {
            "tokens_file": str(self.tokens_file), "append_wait_ms": 2000,
            "max_payload_bytes": 1024, "max_meta_bytes": 256, "max_meta_depth": 3,
        }
        settings_kw.update(overrides)
        self.settings = Settings(**settings_kw)
        self.publisher = FakePublisher()
        self.store = FakeStore()
        self.waiter = FutureRegistry()
        self.metrics = Metrics()
        self.checks: dict[str, Any] = {}
        self.deps = IngestDeps(
            publisher=self.publisher, store=self.store, waiter=self.waiter,
            metrics=self.metrics, tokens=TokenStore(self.tokens_file), clock=lambda: NOW,
            health_checks=self.checks,
        )
        self.client: TestClient[Any, Any] | None = None

    async def __aenter__(self) -> Harness:
        self.client = TestClient(TestServer(build_app(self.settings, self.deps)))
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.client is not None
        await self.client.close()

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.append_token}"}

    async def post(self, body: Any, *, headers: dict[str, str] | None = None,
                   raw: bytes | None = None, content_type="application/json"):
        assert self.client is not None
        h = {**self.auth(), "Content-Type": content_type, **(headers or {})}
        data = raw if raw is not None else json.dumps(body).encode()
        return await self.client.post("/append", data=data, headers=h)

    async def post_batch(self, entries: Any, *, headers: dict[str, str] | None = None,
                         raw: bytes | None = None):
        assert self.client is not None
        h = {**self.auth(), "Content-Type": "application/json", **(headers or {})}
        data = raw if raw is not None else json.dumps({"entries": entries}).encode()
        return await self.client.post("/append/batch", data=data, headers=h)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD = {"subject": "orders/1", "payload": b64(b"hello"), "meta": {"k": "v"}}

BAD_INPUTS = [
    # (id, body, raw, content type, headers, status, field, message fragment)
    ("malformed JSON", None, b'{"subject": ', "application/json", {}, 400, "body", "not valid JSON"),
    ("NaN is not JSON", None, b'{"subject": "a", "payload_sha256": NaN}', "application/json", {}, 400, "body", "not valid JSON"),
    ("body not an object", [1, 2], None, "application/json", {}, 400, "body", "JSON object"),
    ("wrong content type", GOOD, None, "text/plain", {}, 415, "Content-Type", "application/json"),
    ("missing subject", {"payload": b64(b"x")}, None, "application/json", {}, 400, "subject", "required"),
    ("subject not a string", {"subject": 5, "payload": b64(b"x")}, None, "application/json", {}, 400, "subject", "string"),
    ("bad subject chars", {"subject": "a b<script>", "payload": b64(b"x")}, None, "application/json", {}, 400, "subject", "characters"),
    ("subject starts badly", {"subject": "-x", "payload": b64(b"x")}, None, "application/json", {}, 400, "subject", "characters"),
    ("oversized subject", {"subject": "a" * 257, "payload": b64(b"x")}, None, "application/json", {}, 400, "subject", "too long"),
    ("missing payload and hash", {"subject": "s"}, None, "application/json", {}, 400, "payload", "required"),
    ("both payload and hash", {"subject": "s", "payload": b64(b"x"), "payload_sha256": "0" * 64}, None, "application/json", {}, 400, "payload", "not both"),
    ("invalid base64", {"subject": "s", "payload": "not base64!!"}, None, "application/json", {}, 400, "payload", "base64"),
    ("base64 without padding", {"subject": "s", "payload": "aGVsbG8"}, None, "application/json", {}, 400, "payload", "base64"),
    ("empty payload", {"subject": "s", "payload": ""}, None, "application/json", {}, 400, "payload", "empty"),
    ("bad payload hash", {"subject": "s", "payload_sha256": "xyz"}, None, "application/json", {}, 400, "payload_sha256", "64 hexadecimal"),
    ("payload too large", {"subject": "s", "payload": b64(b"x" * 1025)}, None, "application/json", {}, 413, "payload", "too large"),
    ("payload just over the limit", {"subject": "s", "payload": b64(b"x" * 1024 + b"y")}, None, "application/json", {}, 413, "payload", "too large"),
    ("meta not an object", {"subject": "s", "payload": b64(b"x"), "meta": [1]}, None, "application/json", {}, 400, "meta", "JSON object"),
    ("meta a string", {"subject": "s", "payload": b64(b"x"), "meta": "{}"}, None, "application/json", {}, 400, "meta", "JSON object"),
    ("meta too deep", {"subject": "s", "payload": b64(b"x"), "meta": {"a": {"b": {"c": {}}}}}, None, "application/json", {}, 400, "meta", "nested too deeply"),
    ("meta too deep via lists", {"subject": "s", "payload": b64(b"x"), "meta": {"a": [[{"x": 1}]]}}, None, "application/json", {}, 400, "meta", "nested too deeply"),
    ("meta too big", {"subject": "s", "payload": b64(b"x"), "meta": {"k": "v" * 300}}, None, "application/json", {}, 400, "meta", "too large"),
    ("meta int beyond 2**53", {"subject": "s", "payload": b64(b"x"), "meta": {"n": 2**60}}, None, "application/json", {}, 400, "meta", "canonicalised"),
    ("unknown field", {"subject": "s", "payload": b64(b"x"), "colour": 1}, None, "application/json", {}, 400, "colour", "not a known field"),
    ("bad request_id", {"subject": "s", "payload": b64(b"x"), "request_id": "a b"}, None, "application/json", {}, 400, "request_id", "letters"),
    ("request_id mismatch with header", {"subject": "s", "payload": b64(b"x"), "request_id": "r-1"}, None, "application/json", {"Idempotency-Key": "r-2"}, 400, "request_id", "Idempotency-Key"),
    ("bad Idempotency-Key", {"subject": "s", "payload": b64(b"x")}, None, "application/json", {"Idempotency-Key": "!!"}, 400, "Idempotency-Key", "letters"),
    ("unknown token", GOOD, None, "application/json", {"Authorization": "Bearer ldg_nope"}, 401, "Authorization", "not valid"),
    ("missing token", GOOD, None, "application/json", {"Authorization": ""}, 401, "Authorization", "required"),
    ("basic auth instead of bearer", GOOD, None, "application/json", {"Authorization": "Basic dTpw"}, 401, "Authorization", "required"),
]


@pytest.mark.parametrize(
    ("body", "raw", "ctype", "headers", "status", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
async def test_bad_inputs_are_rejected_and_publish_nothing(
    tmp_path, body, raw, ctype, headers, status, field, fragment
):
    async with Harness(tmp_path) as h:
        resp = await h.post(body, raw=raw, content_type=ctype, headers=headers)
        doc = await resp.json()
        assert resp.status == status, doc
        assert doc["field"] == field
        assert fragment in doc["message"]
        assert doc["error"]
        assert h.publisher.sent == []
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_wrong_scope_is_403_and_publishes_nothing(tmp_path):
    async with Harness(tmp_path) as h:
        resp = await h.post(GOOD, headers=h.auth(h.read_token))
        doc = await resp.json()
        assert resp.status == 403
        assert doc["field"] == "Authorization" and "append" in doc["message"]
        assert 'insufficient_scope' in resp.headers["WWW-Authenticate"]
        assert h.publisher.sent == []
        # and the append token cannot read
        assert h.client is not None
        resp = await h.client.get("/entries", headers=h.auth(h.append_token))
        assert resp.status == 403


async def test_meta_failing_the_schema_is_rejected(tmp_path):
    schema = tmp_path / "meta.schema.json"
    schema.write_text(json.dumps({
        "type": "object", "required": ["source"],
        "properties": {"source": {"type": "string"}},
    }))
    async with Harness(tmp_path, meta_schema_path=str(schema)) as h:
        resp = await h.post({"subject": "s", "payload": b64(b"x"), "meta": {"source": 3}})
        doc = await resp.json()
        assert resp.status == 400
        assert doc["field"] == "meta" and "schema" in doc["message"]
        assert "source" in doc["message"]
        assert h.publisher.sent == []
        # a conforming meta passes the same schema
        resp = await h.post({"subject": "s", "payload": b64(b"x"), "meta": {"source": "erp"}},
                            headers={"Prefer": "respond-async"})
        assert resp.status == 202
        assert len(h.publisher.sent) == 1


def test_an_invalid_meta_schema_is_a_config_error(tmp_path):
    schema = tmp_path / "bad.json"
    schema.write_text(json.dumps({"type": "no-such-type"}))
    h = Harness(tmp_path, meta_schema_path=str(schema))
    with pytest.raises(ConfigError, match="meta JSON Schema"):
        build_app(h.settings, h.deps)


async def test_content_length_beyond_the_limit_is_413_before_reading(tmp_path):
    async with Harness(tmp_path) as h:
        assert h.client is not None
        big = b"{" + b" " * 20000 + b"}"
        resp = await h.client.post(
            "/append", data=big,
            headers={**h.auth(), "Content-Type": "application/json"},
        )
        doc = await resp.json()
        assert resp.status == 413 and doc["field"] == "body"
        assert h.publisher.sent == []


async def test_chunked_body_beyond_the_limit_is_413(tmp_path):
    async def chunks() -> Any:
        yield b'{"subject": "s", "payload": "'
        for _ in range(40):
            yield b"A" * 1000
        yield b'"}'

    async with Harness(tmp_path) as h:
        assert h.client is not None
        resp = await h.client.post(
            "/append", data=chunks(),
            headers={**h.auth(), "Content-Type": "application/json"},
        )
        assert resp.status == 413
        assert (await resp.json())["field"] == "body"
        assert h.publisher.sent == []


async def test_respond_async_publishes_only_the_hash_and_answers_202(tmp_path):
    payload = b"secret payload bytes \x00\x01"
    async with Harness(tmp_path) as h:
        resp = await h.post(
            {"subject": "orders/42", "payload": b64(payload), "meta": {"a": 1}},
            headers={"Prefer": "respond-async", "Idempotency-Key": "req-42"},
        )
        doc = await resp.json()
        assert resp.status == 202
        assert resp.headers["Preference-Applied"] == "respond-async"
        expected_id = str(entry_id_for("req-42"))
        assert doc == {
            "status": "accepted", "id": expected_id, "request_id": "req-42",
            "status_url": f"/entries/{expected_id}", "request_url": "/entries/by-request/req-42",
        }
        assert resp.headers["Location"] == f"/entries/{expected_id}"
        [(topic, key, value, _headers)] = h.publisher.sent
        assert topic == "ledger.append" and key == "orders/42"
        msg = decode(AppendRequest, value)
        assert msg.payload_sha256 == hashlib.sha256(payload).hexdigest()
        assert msg.request_id == "req-42" and msg.meta == {"a": 1} and msg.submitted_at == NOW
        assert payload not in value and b64(payload).encode() not in value
        assert h.metric("ledger_appends_published_total") == 1
        assert h.metric("ledger_append_wait_total", outcome="async") == 1


async def test_waits_for_the_signed_event_and_answers_201(tmp_path):
    async with Harness(tmp_path) as h:
        def signer(value: bytes) -> None:
            msg = decode(AppendRequest, value)
            view = make_view(msg.request_id, subject=msg.subject, meta=msg.meta)
            # the signer answers "later", as the ledger.signed tail would
            asyncio.get_running_loop().call_soon(h.waiter.resolve, view)

        h.publisher.on_send = signer
        resp = await h.post({"subject": "orders/1", "payload": b64(b"hello")},
                            headers={"Idempotency-Key": "r-201"})
        doc = await resp.json()
        assert resp.status == 201, doc
        eid = str(entry_id_for("r-201"))
        assert doc["id"] == eid and resp.headers["Location"] == f"/entries/{eid}"
        for key in ("id", "subject", "payload_hash", "signature", "public_key", "created_at",
                    "rekor_log_id", "rekor_index", "request_id", "key_version"):
            assert key in doc
        assert doc["rekor_log_id"] is None and doc["rekor_index"] is None
        assert doc["payload_hash"] == hashlib.sha256(b"hello").hexdigest()
        assert len(h.waiter) == 0  # the registration is gone
        assert h.metric("ledger_append_wait_total", outcome="stored") == 1


async def test_wait_timeout_answers_202_with_status_url(tmp_path):
    async with Harness(tmp_path, append_wait_ms=50) as h:
        resp = await h.post({"subject": "s", "payload": b64(b"x")})
        doc = await resp.json()
        assert resp.status == 202
        assert "Preference-Applied" not in resp.headers
        assert doc["status_url"] == f"/entries/{doc['id']}"
        assert str(entry_id_for(doc["request_id"])) == doc["id"]
        uuid.UUID(doc["request_id"])  # generated: a UUID
        assert len(h.publisher.sent) == 1
        assert h.metric("ledger_append_wait_total", outcome="timeout") == 1
        assert len(h.waiter) == 0


async def test_kafka_unavailable_is_503_with_retry_after(tmp_path):
    async with Harness(tmp_path) as h:
        h.publisher.fail = True
        resp = await h.post(GOOD, headers={"Idempotency-Key": "r-503"})
        doc = await resp.json()
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert doc["request_id"] == "r-503" and doc["error"] == "unavailable"
        assert h.metric("ledger_appends_published_total") == 0


async def test_resent_request_id_is_answered_from_the_database_once(tmp_path):
    async with Harness(tmp_path) as h:
        stored = make_view("r-dup", subject="orders/1", payload=b"hello", meta={"k": "v"})
        h.store.rows[stored.id] = stored
        resp = await h.post(GOOD, headers={"Idempotency-Key": "r-dup"})
        doc = await resp.json()
        assert resp.status == 201
        assert doc["id"] == str(stored.id)
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert h.store.lookups == 1
        assert h.publisher.sent == []


async def test_resent_request_id_with_other_content_is_409(tmp_path):
    async with Harness(tmp_path) as h:
        stored = make_view("r-conf", payload=b"other")
        h.store.rows[stored.id] = stored
        resp = await h.post(GOOD, headers={"Idempotency-Key": "r-conf"})
        doc = await resp.json()
        assert resp.status == 409
        assert doc["field"] == "request_id" and doc["error"] == "idempotency_conflict"
        assert h.publisher.sent == []


async def test_generated_request_ids_skip_the_lookup_and_db_down_does_not_block(tmp_path):
    async with Harness(tmp_path) as h:
        h.store.down = True
        resp = await h.post(GOOD, headers={"Prefer": "respond-async"})
        assert resp.status == 202
        assert h.store.lookups == 0
        resp = await h.post(GOOD, headers={"Prefer": "respond-async", "Idempotency-Key": "k1"})
        assert resp.status == 202  # lookup failed, published anyway
        assert h.store.lookups == 1
        assert len(h.publisher.sent) == 2


async def test_request_id_in_body_and_equal_header_is_accepted(tmp_path):
    async with Harness(tmp_path) as h:
        resp = await h.post({**GOOD, "request_id": "same"},
                            headers={"Idempotency-Key": "same", "Prefer": "respond-async"})
        assert resp.status == 202
        assert (await resp.json())["request_id"] == "same"


async def test_payload_sha256_instead_of_payload(tmp_path):
    digest = hashlib.sha256(b"abc").hexdigest().upper()
    async with Harness(tmp_path) as h:
        resp = await h.post({"subject": "s", "payload_sha256": digest},
                            headers={"Prefer": "respond-async"})
        assert resp.status == 202
        msg = decode(AppendRequest, h.publisher.sent[0][2])
        assert msg.payload_sha256 == digest.lower()


async def test_payload_at_exactly_the_limit_is_accepted(tmp_path):
    async with Harness(tmp_path) as h:
        resp = await h.post({"subject": "s", "payload": b64(b"x" * 1024)},
                            headers={"Prefer": "respond-async"})
        assert resp.status == 202


async def test_get_entry_and_by_request(tmp_path):
    async with Harness(tmp_path) as h:
        assert h.client is not None
        view = make_view("r-get")
        h.store.rows[view.id] = view
        r = await h.client.get(f"/entries/{view.id}", headers=h.auth(h.read_token))
        assert r.status == 200 and (await r.json())["request_id"] == "r-get"
        r = await h.client.get("/entries/by-request/r-get", headers=h.auth(h.read_token))
        assert r.status == 200 and (await r.json())["id"] == str(view.id)
        r = await h.client.get(f"/entries/{uuid.uuid4()}", headers=h.auth(h.read_token))
        assert r.status == 404 and (await r.json())["field"] == "id"
        r = await h.client.get("/entries/not-a-uuid", headers=h.auth(h.read_token))
        assert r.status == 400 and (await r.json())["field"] == "id"
        r = await h.client.get(f"/entries/{view.id}")
        assert r.status == 401


async def test_list_entries_pages_without_duplicates_and_filters(tmp_path):
    async with Harness(tmp_path) as h:
        assert h.client is not None
        views = [
            make_view(f"r{i}", subject="a" if i % 2 else "b",
                      created_at=NOW + timedelta(seconds=i // 3), anchored=i % 5 == 0)
            for i in range(23)
        ]
        for v in views:
            h.store.rows[v.id] = v
        for order in ("asc", "desc"):
            seen: list[str] = []
            cursor = None
            while True:
                params = {"limit": "4", "order": order, **({"cursor": cursor} if cursor else {})}
                r = await h.client.get("/entries", params=params, headers=h.auth(h.read_token))
                doc = await r.json()
                assert r.status == 200, doc
                seen += [e["id"] for e in doc["entries"]]
                cursor = doc["next_cursor"]
                if cursor is None:
                    break
            assert len(seen) == 23 and len(set(seen)) == 23
        r = await h.client.get("/entries", params={"subject": "a", "anchored": "false"},
                               headers=h.auth(h.read_token))
        doc = await r.json()
        expected = {str(v.id) for v in views if v.subject == "a" and v.anchored_at is None}
        assert {e["id"] for e in doc["entries"]} == expected
        for bad, field in (({"limit": "1001"}, "limit"), ({"anchored": "yes"}, "anchored"),
                           ({"cursor": "garbage"}, "cursor"), ({"from": "yesterday"}, "from"),
                           ({"to": "2026-01-01T00:00:00"}, "to"), ({"sort": "x"}, "sort"),
                           ({"payload_hash": "ab" * 31}, "payload_hash")):
            r = await h.client.get("/entries", params=bad, headers=h.auth(h.read_token))
            assert r.status == 400 and (await r.json())["field"] == field


async def test_health_keeps_the_runbook_shape_and_is_503_only_without_kafka(tmp_path):
    async with Harness(tmp_path, health_cache_s=0, health_timeout_s=0.2) as h:
        assert h.client is not None

        async def up():
            return True

        async def down():
            return False

        async def sealed():
            return Check(False, "sealed")

        async def hangs():
            await asyncio.Event().wait()
            return True

        h.checks.update({"database": up, "kafka": up, "vault": up, "rekor": up})
        r = await h.client.get("/health")
        body = await r.json()
        assert r.status == 200
        assert {k: body[k] for k in ("status", "database", "rekor", "kafka", "vault")} == {
            "status": "healthy", "database": "ok", "rekor": True, "kafka": True, "vault": True}
        assert body["checks"]["ingest"] == {"ok": True, "state": "ok"}
        # Rekor, Vault, the database down: appends still reach Kafka → 200, degraded
        h.checks.update({"rekor": down, "vault": sealed, "database": hangs})
        r = await h.client.get("/health")
        body = await r.json()
        assert r.status == 200, body
        assert body["status"] == "degraded" and body["rekor"] is False
        assert body["vault"] is False and body["checks"]["vault"]["state"] == "sealed"
        assert body["database"] == "timeout"
        r = await h.client.get("/readyz")
        assert r.status == 200 and await r.json() == {"status": "degraded", "ready": True}
        # Kafka down: appends cannot be accepted → 503, unhealthy
        h.checks["kafka"] = down
        r = await h.client.get("/health")
        body = await r.json()
        assert r.status == 503 and body["status"] == "unhealthy" and body["kafka"] is False
        r = await h.client.get("/readyz")
        assert r.status == 503 and (await r.json())["ready"] is False
        r = await h.client.get("/livez")
        assert r.status == 200 and await r.json() == {"status": "alive"}


async def test_health_probes_once_per_cache_window_for_concurrent_and_sequential_calls(
    tmp_path,
):
    async with Harness(tmp_path, health_cache_s=60) as h:
        assert h.client is not None
        release = asyncio.Event()
        calls = 0

        async def slow_up():
            nonlocal calls
            calls += 1
            await release.wait()
            return True

        h.checks.update({"database": slow_up, "kafka": slow_up, "vault": slow_up,
                         "rekor": slow_up})
        pending = [asyncio.create_task(h.client.get(p))
                   for p in ("/health", "/readyz") * 10]
        await wait_for(lambda: _true(calls == 4), within=5, what="the one probe to start")
        release.set()
        statuses = [r.status for r in await asyncio.gather(*pending)]
        for _ in range(5):
            statuses.append((await h.client.get("/health")).status)
        assert statuses == [200] * 25
        assert calls == 4  # one probe of each dependency
        assert h.metric("ledger_health_probes_total") == 1


async def test_past_max_in_flight_requests_get_503_with_retry_after(tmp_path):
    async with Harness(tmp_path, max_in_flight=3) as h:
        assert h.client is not None
        release = asyncio.Event()
        held = 0

        async def hold(_: bytes) -> None:
            nonlocal held
            held += 1
            await release.wait()

        h.publisher.on_send_async = hold
        h.checks["kafka"] = _up
        body = {"subject": "s", "payload": b64(b"x")}
        async_ = {"Prefer": "respond-async"}
        first = [asyncio.create_task(h.post(body, headers=async_)) for _ in range(3)]
        await wait_for(lambda: _true(held == 3), within=5, what="three requests in flight")
        r = await h.post(body, headers=async_)
        assert r.status == 503 and int(r.headers["Retry-After"]) > 0
        assert (await r.json())["error"] == "overloaded"
        assert len(h.publisher.sent) == 3  # the shed request published nothing
        health = await h.client.get("/health")  # not counted: it still answers
        assert health.status == 503
        assert (await health.json())["checks"]["ingest"]["state"] == "overloaded"
        release.set()
        assert [r.status for r in await asyncio.gather(*first)] == [202] * 3
        assert (await h.post(body, headers=async_)).status == 202


async def _up() -> bool:
    return True


async def _true(value: bool) -> bool:
    return value


async def test_metrics_endpoint_counts_requests_by_route_and_status(tmp_path):
    async with Harness(tmp_path) as h:
        assert h.client is not None
        await h.post({"subject": "s"})
        r = await h.client.get("/metrics")
        text = await r.text()
        assert r.status == 200
        assert 'ledger_http_requests_total{method="POST",route="/append",status="400"} 1.0' in text
        assert "ledger_http_request_seconds_bucket" in text


async def test_unknown_route_is_json_404(tmp_path):
    async with Harness(tmp_path) as h:
        assert h.client is not None
        r = await h.client.get("/nope")
        assert r.status == 404 and (await r.json())["error"] == "not_found"
        r = await h.client.delete("/append")
        assert r.status == 405 and "POST" in r.headers["Allow"]


def test_auth_on_without_tokens_is_a_config_error(tmp_path):
    h = Harness(tmp_path)
    settings = Settings(append_wait_ms=10)
    deps = IngestDeps(publisher=h.publisher, store=h.store, waiter=h.waiter, metrics=h.metrics)
    with pytest.raises(ConfigError, match="LEDGER_TOKENS_FILE"):
        build_app(settings, deps)


async def test_auth_disabled_lets_requests_through_and_warns(tmp_path, caplog):
    h = Harness(tmp_path, auth_disabled=True)
    deps = IngestDeps(publisher=h.publisher, store=h.store, waiter=h.waiter, metrics=h.metrics)
    app = build_app(h.settings, deps)
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/append", json={"subject": "s", "payload": b64(b"x")},
                              headers={"Prefer": "respond-async"})
        assert r.status == 202


async def test_logs_carry_ids_and_never_the_payload_or_token(tmp_path):
    payload = b"TOP-SECRET-PAYLOAD"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())  # formats at emit time, inside the log context
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        async with Harness(tmp_path) as h:
            resp = await h.post({"subject": "s", "payload": b64(payload)},
                                headers={"Prefer": "respond-async", "Idempotency-Key": "log-1"})
            assert resp.status == 202
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    published = [json.loads(x) for x in lines if '"append published"' in x]
    assert published and published[0]["request_id"] == "log-1"
    assert published[0]["entry_id"] == str(entry_id_for("log-1"))
    assert published[0]["token_name"] == "writer"
    text = "\n".join(lines)
    assert payload.decode() not in text and b64(payload) not in text
    assert h.append_token not in text


async def test_trace_context_continues_the_clients_trace_or_starts_one(tmp_path):
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with Harness(tmp_path) as h:
        resp = await h.post(GOOD, headers={"Prefer": "respond-async", "traceparent": parent,
                                           "tracestate": "vendor=1"})
        assert resp.status == 202
        resp = await h.post(GOOD, headers={"Prefer": "respond-async", "traceparent": "garbage"})
        assert resp.status == 202
    (_, _, _, continued), (_, _, _, started) = h.publisher.sent
    continued, started = dict(continued), dict(started)
    version, trace_id, span_id, flags = continued["traceparent"].decode().split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7"  # a new span in the client's trace
    assert continued["tracestate"] == b"vendor=1"
    new_trace = started["traceparent"].decode().split("-")[1]
    assert len(new_trace) == 32 and new_trace != trace_id  # an invalid parent starts a trace
    assert "tracestate" not in started


# --- POST /append/batch ---------------------------------------------------------------------

ASYNC = {"Prefer": "respond-async"}


async def test_batch_publishes_every_valid_entry_together_and_answers_each(tmp_path):
    entries = [{"subject": f"orders/{i}", "payload": b64(f"doc {i}".encode()), "meta": {"i": i}}
               for i in range(5)]
    entries[3]["request_id"] = "client-3"
    async with Harness(tmp_path) as h:
        resp = await h.post_batch(entries, headers=ASYNC)
        doc = await resp.json()
        assert resp.status == 200, doc
        assert doc["errors"] is False and doc["refused"] == 0
        assert [r["index"] for r in doc["results"]] == list(range(5))
        assert {r["status"] for r in doc["results"]} == {202}
        assert doc["results"][3]["request_id"] == "client-3"
        assert doc["results"][3]["id"] == str(entry_id_for("client-3"))
        published = [decode(AppendRequest, value) for _, _, value, _ in h.publisher.sent]
        assert [m.subject for m in published] == [e["subject"] for e in entries]
        assert [m.request_id for m in published] == [r["request_id"] for r in doc["results"]]
        for m, e in zip(published, entries, strict=True):
            raw = base64.b64decode(str(e["payload"]))
            assert m.payload_sha256 == hashlib.sha256(raw).hexdigest()
        assert h.store.lookups == 1  # one lookup for the client ids
        assert h.metric("ledger_appends_published_total") == 5


async def test_a_bad_entry_gets_its_own_error_and_the_others_go_through(tmp_path):
    entries = [
        {"subject": "ok/1", "payload": b64(b"a")},
        {"subject": "a b", "payload": b64(b"b")},
        {"subject": "ok/2", "payload": b64(b"x" * 2000)},
        {"subject": "ok/3", "payload_sha256": "ab" * 32, "meta": {"n": 2**60}},
        "not an object",
        {"subject": "ok/4", "payload": b64(b"d"), "colour": "red"},
        {"subject": "ok/5", "payload": b64(b"e")},
    ]
    async with Harness(tmp_path) as h:
        resp = await h.post_batch(entries, headers=ASYNC)
        doc = await resp.json()
        assert resp.status == 200 and doc["errors"] is True and doc["refused"] == 5
        by_index = {r["index"]: r for r in doc["results"]}
        assert [by_index[i]["status"] for i in range(7)] == [202, 400, 413, 400, 400, 400, 202]
        assert by_index[1]["field"] == "subject" and "characters" in by_index[1]["message"]
        assert by_index[2]["field"] == "payload" and by_index[2]["error"] == "payload_too_large"
        assert by_index[3]["field"] == "meta" and "canonicalised" in by_index[3]["message"]
        assert by_index[4]["field"] == "body"
        assert by_index[5]["field"] == "colour"
        assert [decode(AppendRequest, v).subject for _, _, v, _ in h.publisher.sent] == [
            "ok/1", "ok/5"]


async def test_repeated_request_ids_in_one_batch_share_or_conflict(tmp_path):
    same = {"subject": "s/1", "payload": b64(b"one"), "request_id": "dup"}
    other = {"subject": "s/1", "payload": b64(b"two"), "request_id": "dup"}
    async with Harness(tmp_path) as h:
        resp = await h.post_batch([same, dict(same), other], headers=ASYNC)
        doc = await resp.json()
        first, again, conflict = doc["results"]
        assert first["status"] == again["status"] == 202 and first["id"] == again["id"]
        assert again["index"] == 1
        assert conflict["status"] == 409 and conflict["error"] == "idempotency_conflict"
        assert "entry 0 of this batch" in conflict["message"]
        assert len(h.publisher.sent) == 1


async def test_stored_request_ids_are_answered_from_one_lookup(tmp_path):
    async with Harness(tmp_path) as h:
        stored = make_view("known", subject="s/1", payload=b"same")
        changed = make_view("changed", subject="s/1", payload=b"before")
        h.store.rows = {stored.id: stored, changed.id: changed}
        resp = await h.post_batch([
            {"subject": "s/1", "payload": b64(b"same"), "request_id": "known"},
            {"subject": "s/1", "payload": b64(b"after"), "request_id": "changed"},
            {"subject": "s/1", "payload": b64(b"new"), "request_id": "fresh"},
        ], headers=ASYNC)
        replayed, conflict, fresh = (await resp.json())["results"]
        assert replayed["status"] == 201 and replayed["replayed"] is True
        assert replayed["entry"]["id"] == str(stored.id)
        assert conflict["status"] == 409 and conflict["id"] == str(changed.id)
        assert fresh["status"] == 202
        assert h.store.lookups == 1
        assert [decode(AppendRequest, v).request_id for _, _, v, _ in h.publisher.sent] == [
            "fresh"]


async def test_batch_waits_for_the_signer_and_answers_201_per_entry(tmp_path):
    async with Harness(tmp_path, append_wait_ms=300) as h:
        def signer(value: bytes) -> None:
            msg = decode(AppendRequest, value)
            if msg.subject == "slow/1":
                return  # never signed within the wait: stays 202
            view = make_view(msg.request_id, subject=msg.subject, payload=b"p")
            asyncio.get_running_loop().call_soon(h.waiter.resolve, view)

        h.publisher.on_send = signer
        resp = await h.post_batch([
            {"subject": "fast/1", "payload": b64(b"p"), "request_id": "f1"},
            {"subject": "slow/1", "payload": b64(b"p"), "request_id": "s1"},
        ])
        fast, slow = (await resp.json())["results"]
        assert fast["status"] == 201 and fast["entry"]["request_id"] == "f1"
        assert "replayed" not in fast
        assert slow["status"] == 202 and slow["status_url"] == f"/entries/{entry_id_for('s1')}"
        assert len(h.waiter) == 0, "no future left registered"


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"[1, 2]", 400, "body"),
        (b'{"entries": ', 400, "body"),
        (b'{"entries": {}}', 400, "entries"),
        (b'{"entries": []}', 400, "entries"),
        (json.dumps({"entries": [{"subject": "s", "payload_sha256": "ab" * 32}] * 1001}).encode(),
         413, "entries"),
        (b'{"entries": [], "colour": 1}', 400, "colour"),
    ],
)
async def test_a_malformed_envelope_fails_the_whole_request(tmp_path, raw, status, field):
    async with Harness(tmp_path) as h:
        resp = await h.post_batch(None, raw=raw)
        doc = await resp.json()
        assert resp.status == status, doc
        assert doc["field"] == field and doc["message"]
        assert h.publisher.sent == []


async def test_batch_kafka_down_is_503_naming_a_request_id_per_entry(tmp_path):
    async with Harness(tmp_path) as h:
        h.publisher.fail = True
        resp = await h.post_batch([
            {"subject": "s/1", "payload": b64(b"a"), "request_id": "mine"},
            {"subject": "bad subject", "payload": b64(b"b")},
            {"subject": "s/2", "payload": b64(b"c")},
        ], headers=ASYNC)
        doc = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"]
        ids = doc["request_ids"]
        assert ids[0] == "mine" and ids[1] is None and ids[2] and ids[2] != "mine"


async def test_batch_needs_the_append_scope(tmp_path):
    async with Harness(tmp_path) as h:
        entries = [{"subject": "s/1", "payload": b64(b"a")}]
        assert (await h.post_batch(entries, headers=h.auth(h.read_token))).status == 403
        assert (await h.post_batch(entries, headers={"Authorization": ""})).status == 401
        assert h.publisher.sent == []


async def test_batch_body_beyond_its_limit_is_413(tmp_path):
    async with Harness(tmp_path, max_batch_body_bytes=2048) as h:
        entries = [{"subject": "s/1", "payload": b64(b"x" * 500)}] * 10
        resp = await h.post_batch(entries)
        doc = await resp.json()
        assert resp.status == 413 and doc["field"] == "body"
        assert h.publisher.sent == []


def test_a_json_answer_carries_integers_beyond_64_bits():
    # JSONB gives a float such as 1e300 back as an integer of 301 digits; an entry a Kafka
    # producer sent with one must still be served
    response = json_response({"meta": {"x": 10**300}})
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {"meta": {"x": 10**300}}
