"""GET /entries/{id}/proof and GET /batches/{id}/sigstore-bundle: the proof bundle and the
batch's Sigstore bundle, 404 unknown, 409 pending, auth like every read."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ingest import OPENAPI_PATH, IngestDeps, build_app, create_token
from services.ingest.auth import TokenStore
from services.ingest.store import PendingProof
from services.ingest.waiter import FutureRegistry
from shared.anchored import AnchoredEvent
from shared.bundle import verify_bundle
from shared.errors import DatabaseUnavailable, VerificationError
from shared.messages import AnchoredEntry
from shared.records import BatchRecord
from shared.settings import Settings
from shared.sigstore_bundle import batch_bundle
from shared.telemetry import Metrics
from tests.unit.test_bundle import World

pytestmark = pytest.mark.unit

PENDING_UNBATCHED = uuid.uuid4()
PENDING_BATCHED = uuid.uuid4()
BATCH = uuid.uuid4()
BROKEN = uuid.uuid4()
DB_DOWN = uuid.uuid4()


class FakeProofs:
    def __init__(self, events: list[AnchoredEntry], batch: BatchRecord) -> None:
        pending = replace(batch, id=BATCH, state="claimed", receipt=None, anchored_at=None)
        self.batches = {batch.id: batch, BATCH: pending}
        self.events = {
            e.entry.entry_id: AnchoredEvent(entry_id=e.entry.entry_id,
                                            request_id=e.entry.request_id,
                                            subject=e.entry.subject, leaf_index=e.leaf_index,
                                            value=e.to_bytes())
            for e in events
        }
        self.asked: list[uuid.UUID] = []

    async def proof(self, entry_id: uuid.UUID) -> AnchoredEvent | PendingProof | None:
        self.asked.append(entry_id)
        if entry_id == PENDING_UNBATCHED:
            return PendingProof(id=entry_id, batch_id=None)
        if entry_id == PENDING_BATCHED:
            return PendingProof(id=entry_id, batch_id=BATCH)
        if entry_id == BROKEN:
            raise VerificationError("rows give another root")
        if entry_id == DB_DOWN:
            raise DatabaseUnavailable("down")
        return self.events.get(entry_id)

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        self.asked.append(batch_id)
        if batch_id == DB_DOWN:
            raise DatabaseUnavailable("down")
        return self.batches.get(batch_id)


class _Unused:
    async def send(self, *a: Any, **k: Any) -> None:
        raise AssertionError("not used")


@pytest.fixture(scope="module")
def world() -> World:
    return World()


class Api:
    def __init__(self, client: TestClient[Any, Any], reader: str, writer: str,
                 proofs: FakeProofs) -> None:
        self.client, self.reader, self.writer, self.proofs = client, reader, writer, proofs

    async def get(self, path: str, token: str | None = "reader") -> Any:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.reader if token == 'reader' else token}"
        return await self.client.get(path, headers=headers)


def _app(tmp_path: Path, proofs: FakeProofs | None) -> tuple[Any, str, str]:
    tokens = tmp_path / "tokens.jsonl"
    reader = create_token(tokens, "reader", ["read"])
    writer = create_token(tokens, "writer", ["append"])
    deps = IngestDeps(publisher=_Unused(), store=_Unused(), waiter=FutureRegistry(),  # type: ignore[arg-type]
                      metrics=Metrics(), tokens=TokenStore(tokens), proofs=proofs)
    return build_app(Settings(tokens_file=str(tokens)), deps), reader, writer


@pytest.fixture
async def api(tmp_path: Path, world: World) -> AsyncIterator[Api]:
    proofs = FakeProofs(world.events, world.batch)
    app, reader, writer = _app(tmp_path, proofs)
    async with TestClient(TestServer(app)) as client:
        yield Api(client, reader, writer, proofs)


async def test_an_anchored_entry_answers_its_event_byte_for_byte(api: Api, world: World) -> None:
    event = world.event
    r = await api.get(f"/entries/{event.entry.entry_id}/proof")
    assert r.status == 200
    assert r.content_type == "application/json"
    body = await r.read()
    assert body == event.to_bytes()
    report = verify_bundle(await r.json(), rekor_public_key_pem=world.log_pem)
    assert report.entry_id == event.entry.entry_id


async def test_unknown_entry_is_404(api: Api) -> None:
    r = await api.get(f"/entries/{uuid.uuid4()}/proof")
    assert r.status == 404
    doc = await r.json()
    assert doc["error"] == "not_found" and doc["field"] == "id"


@pytest.mark.parametrize(("entry_id", "batch_id"), [(PENDING_UNBATCHED, None),
                                                     (PENDING_BATCHED, str(BATCH))])
async def test_not_anchored_yet_is_409_pending_with_retry_after(
    api: Api, entry_id: uuid.UUID, batch_id: str | None
) -> None:
    r = await api.get(f"/entries/{entry_id}/proof")
    assert r.status == 409
    assert r.headers["Retry-After"] == "5"
    doc = await r.json()
    assert doc["error"] == "not_anchored" and doc["status"] == "pending"
    assert doc["id"] == str(entry_id) and doc["batch_id"] == batch_id
    assert "not anchored" in doc["message"]


async def test_bad_id_is_400_before_any_lookup(api: Api) -> None:
    r = await api.get("/entries/not-a-uuid/proof")
    assert r.status == 400
    assert (await r.json())["field"] == "id"
    assert api.proofs.asked == []


async def test_read_scope_is_required(api: Api, world: World) -> None:
    path = f"/entries/{world.event.entry.entry_id}/proof"
    assert (await api.get(path, token=None)).status == 401
    assert (await api.get(path, token="ldg_nonsense")).status == 401
    r = await api.get(path, token=api.writer)
    assert r.status == 403
    assert api.proofs.asked == []


async def test_rows_that_no_longer_match_are_a_500_not_a_bad_proof(api: Api) -> None:
    r = await api.get(f"/entries/{BROKEN}/proof")
    assert r.status == 500
    assert (await r.json())["error"] == "integrity_error"


async def test_database_down_is_503(api: Api) -> None:
    r = await api.get(f"/entries/{DB_DOWN}/proof")
    assert r.status == 503
    assert "Retry-After" in r.headers


async def test_without_a_proof_store_the_route_says_so(tmp_path: Path) -> None:
    app, reader, _ = _app(tmp_path, None)
    async with TestClient(TestServer(app)) as client:
        r = await client.get(f"/entries/{uuid.uuid4()}/proof",
                             headers={"Authorization": f"Bearer {reader}"})
        assert r.status == 501


def test_the_documented_bundle_schema_is_the_message_model() -> None:
    """openapi.json's ProofBundle is AnchoredEntry's JSON Schema (refs into components)."""
    doc = json.loads(OPENAPI_PATH.read_text())
    schema = AnchoredEntry.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs")
    schema.pop("$id")  # an $id would re-base the component's refs
    components = doc["components"]["schemas"]
    assert components["ProofBundle"] == schema
    for name, sub in defs.items():
        assert components[name] == sub, name
    responses = doc["paths"]["/entries/{id}/proof"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProofBundle"}
    assert responses["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NotAnchored"}


# --- GET /batches/{id}/sigstore-bundle ------------------------------------------------------


async def test_an_anchored_batch_answers_its_sigstore_bundle(api: Api, world: World) -> None:
    r = await api.get(f"/batches/{world.batch.id}/sigstore-bundle")
    assert r.status == 200
    assert r.content_type == "application/json"
    assert await r.json() == batch_bundle(world.batch)


async def test_an_unknown_batch_is_404(api: Api) -> None:
    r = await api.get(f"/batches/{uuid.uuid4()}/sigstore-bundle")
    assert r.status == 404
    doc = await r.json()
    assert doc["error"] == "not_found" and doc["field"] == "id"


async def test_a_batch_not_anchored_yet_is_409_pending_with_retry_after(api: Api) -> None:
    r = await api.get(f"/batches/{BATCH}/sigstore-bundle")
    assert r.status == 409
    assert r.headers["Retry-After"] == "5"
    doc = await r.json()
    assert doc == {"error": "not_anchored", "message": doc["message"], "id": str(BATCH),
                   "status": "pending", "batch_id": str(BATCH)}


async def test_the_batch_route_wants_a_uuid_and_the_read_scope(api: Api, world: World) -> None:
    r = await api.get("/batches/not-a-uuid/sigstore-bundle")
    assert r.status == 400 and (await r.json())["field"] == "id"
    path = f"/batches/{world.batch.id}/sigstore-bundle"
    assert (await api.get(path, token=None)).status == 401
    assert (await api.get(path, token=api.writer)).status == 403
    assert api.proofs.asked == []
    assert (await api.get(f"/batches/{DB_DOWN}/sigstore-bundle")).status == 503


def test_the_documented_sigstore_bundle_schema_accepts_the_bundle(world: World) -> None:
    doc = json.loads(OPENAPI_PATH.read_text())
    op = doc["paths"]["/batches/{id}/sigstore-bundle"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SigstoreBundle"}
    assert op["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NotAnchored"}
    schema = doc["components"]["schemas"]["SigstoreBundle"]
    jsonschema.validate(batch_bundle(world.batch), schema)
    broken = batch_bundle(world.batch)
    broken["verificationMaterial"]["tlogEntries"][0]["logIndex"] = 7  # not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
