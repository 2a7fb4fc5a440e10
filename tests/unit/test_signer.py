"""The signer stage without services: decoding poison, and the batch logic over doubles.

The doubles stand in for *our own* ports (EntryStore, Signer, SignedPublisher) so the cases a
real service cannot easily produce are covered: duplicates inside one batch, a row stored by
another signer between read and insert, Vault refusing or answering a wrong signature. The
Vault double signs with a real Ed25519 key, and the real :class:`shared.vault.TransitSigner`
is driven through a fake hvac client to show that a signature which does not verify never
reaches storage. The same behaviour is checked end to end in tests/integration.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.signer.stage import SignerStage, decode_append
from shared.errors import (
    InvalidMessage,
    LedgerError,
    Policy,
    VaultError,
    VaultUnavailable,
    VerificationError,
)
from shared.kafka import Record
from shared.messages import AppendRequest, SignedEntry
from shared.records import EntryRecord, NewEntry
from shared.settings import Settings
from shared.stage import Message
from shared.statement import content_sha256, entry_id_for, statement_bytes
from shared.telemetry import Metrics
from shared.vault import PublicKey, Signature, TransitSigner
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.unit

KEY = "ledger-ed25519"


def req_bytes(rid: str, payload: bytes = b"p", meta: dict[str, Any] | None = None, subject: str = "s/1") -> bytes:
    return AppendRequest(
        request_id=rid, subject=subject, payload_sha256=hashlib.sha256(payload).hexdigest(),
        meta=meta or {}, submitted_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    ).to_bytes()


_offsets = iter(range(10**6))


def record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record(topic="ledger.append", partition=0, offset=next(_offsets), key=b"s/1", value=value,
                  headers=headers, timestamp_ms=0)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty message"),
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({**json.loads(req_bytes("r")), "version": 2}).encode(), "unsupported version"),
        (json.dumps({k: v for k, v in json.loads(req_bytes("r")).items() if k != "request_id"}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "payload_sha256": "ab" * 31}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "payload_sha256": "AB" * 32}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "submitted_at": "2026-01-01T00:00:00"}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "meta": {"k": "a\u0000b"}}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "meta": {"big": 2**60}}).encode(), "invalid fields"),
        (json.dumps({**json.loads(req_bytes("r")), "payload": "cGF5bG9hZA=="}).encode(), "invalid fields"),
    ],
)
def test_decode_refuses_poison_with_a_reason(value, reason):
    with pytest.raises(InvalidMessage) as info:
        decode_append(record(value))
    assert info.value.reason == reason


def test_decode_holds_meta_to_the_ingest_limit():
    limit = 1024
    at_limit = {"k": "x" * (limit - len('{"k":""}'))}
    assert decode_append(record(req_bytes("r", meta=at_limit)), max_meta_bytes=limit)
    with pytest.raises(InvalidMessage) as info:
        decode_append(record(req_bytes("r", meta={"k": "x" * limit})), max_meta_bytes=limit)
    assert info.value.reason == "invalid fields"
    assert "meta: too large" in info.value.detail and str(limit) in info.value.detail


def test_decode_builds_the_canonical_statement_content_hash_and_entry_id():
    raw = req_bytes("r-1", payload=b"x", meta={"b": 1, "a": [1, "z"]})
    sign = decode_append(record(raw, headers=(("traceparent", b"00-1"), ("other", b"no"))))
    r = AppendRequest.model_validate_json(raw)
    assert sign.statement == statement_bytes(request_id="r-1", subject="s/1", payload_sha256=r.payload_sha256,
                                             meta={"a": [1, "z"], "b": 1}, submitted_at=r.submitted_at)
    assert sign.content_sha256 == content_sha256(subject="s/1", payload_sha256=r.payload_sha256, meta=r.meta)
    assert sign.entry_id == entry_id_for("r-1")
    assert sign.trace_headers == (("traceparent", b"00-1"),)


# --- the batch logic -------------------------------------------------------------------------------


class FakeVault:
    def __init__(self) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes_raw()
        self.public = PublicKey.from_vault(KEY, 1, "ed25519", base64.b64encode(raw).decode())
        self.calls: list[int] = []
        self.fail: Exception | None = None

    async def sign_batch(self, key: str, inputs: Sequence[bytes]) -> list[Signature]:
        self.calls.append(len(inputs))
        if self.fail is not None:
            raise self.fail
        out = []
        for data in inputs:
            sig = self.private.sign(data)
            out.append(Signature(key_name=key, version=1, raw=sig, vault="vault:v1:" + base64.b64encode(sig).decode()))
        return out

    async def public_key(self, key: str, version: int) -> PublicKey:
        assert version == 1
        return self.public


class FakeStore(FakeRepository):
    """``race`` rows appear "inserted by another signer" just before an insert."""

    def __init__(self) -> None:
        super().__init__()
        self.race: dict[str, EntryRecord] = {}
        self.inserts: list[list[str]] = []

    @property
    def rows(self) -> dict[str, EntryRecord]:
        return {e.request_id: e for e in self.entries_by_id.values()}

    async def insert_entries(
        self, entries: Sequence[NewEntry]
    ) -> tuple[dict[str, datetime], dict[str, EntryRecord]]:
        for record in self.race.values():
            self.add_entry(record)
        self.inserts.append([e.request_id for e in entries])
        return await super().insert_entries(entries)


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[tuple[SignedEntry, Sequence[tuple[str, bytes]]]] = []

    async def publish_signed(self, events):
        for subject, value, headers in events:
            entry = SignedEntry.model_validate_json(value)  # what goes to Kafka fits the model
            assert entry.subject == subject
            self.events.append((entry, headers))


def make_stage(batch_max: int = 200):
    store, vault, pub, metrics = FakeStore(), FakeVault(), FakePublisher(), Metrics()
    stage = SignerStage(store=store, vault=vault, publisher=pub, key_name=KEY, batch_max=batch_max, metrics=metrics)
    return stage, store, vault, pub, metrics


def msgs(*values: bytes) -> list[Message[Any]]:
    out = []
    for v in values:
        rec = record(v)
        out.append(Message(rec, decode_append(rec)))
    return out


async def test_new_requests_are_signed_in_chunks_of_batch_max_and_all_published():
    stage, store, vault, pub, metrics = make_stage(batch_max=3)
    rejected = await stage.process_batch(msgs(*(req_bytes(f"r{i}", payload=bytes([i])) for i in range(7))))

    assert rejected == []
    assert sorted(vault.calls) == [1, 3, 3], "one Vault call per <= batch_max items"
    assert len(store.inserts) == 1 and len(store.inserts[0]) == 7, "one transaction"
    assert sorted(e.request_id for e, _ in pub.events) == [f"r{i}" for i in range(7)]
    for entry, headers in pub.events:
        vault.private.public_key().verify(base64.b64decode(entry.signature.split(":")[2]), base64.b64decode(entry.statement))
        assert dict(headers)["entry_id"] == str(entry.entry_id).encode()
    assert metrics.registry.get_sample_value("ledger_entries_signed_total", {"outcome": "new"}) == 7
    assert metrics.registry.get_sample_value("ledger_vault_batch_size_count") == 3


async def test_duplicates_in_one_batch_are_collapsed_before_signing_and_a_conflict_is_rejected():
    stage, _store, vault, pub, _ = make_stage()
    batch = msgs(req_bytes("a"), req_bytes("a"), req_bytes("a", payload=b"other"), req_bytes("b"))
    rejected = await stage.process_batch(batch)

    assert vault.calls == [2], "a and b signed once each"
    assert [j.record for j in rejected] == [batch[2].record]
    assert rejected[0].error.reason == "idempotency conflict"
    assert sorted(e.request_id for e, _ in pub.events) == ["a", "b"]


async def test_stored_request_ids_are_not_signed_again_and_conflicts_are_rejected():
    stage, store, vault, pub, metrics = make_stage()
    await stage.process_batch(msgs(req_bytes("a")))
    first_sig = store.rows["a"].sig
    batch = msgs(req_bytes("a"), req_bytes("a", meta={"changed": True}))
    rejected = await stage.process_batch(batch)

    assert vault.calls == [1], "nothing signed the second time"
    assert [j.record for j in rejected] == [batch[1].record]
    assert "stored as entry" in rejected[0].error.detail
    assert [e.signature for e, _ in pub.events] == [first_sig, first_sig], "existing entry re-published"
    assert metrics.registry.get_sample_value("ledger_entries_signed_total", {"outcome": "existing"}) == 1


async def test_a_row_stored_by_another_signer_meanwhile_resolves_like_an_existing_one():
    stage, store, _vault, pub, _ = make_stage()
    other_stage, other_store, *_ = make_stage()
    await other_stage.process_batch(msgs(req_bytes("x"), req_bytes("y", payload=b"theirs")))
    store.race = dict(other_store.rows)

    batch = msgs(req_bytes("x"), req_bytes("y", payload=b"ours"), req_bytes("z"))
    rejected = await stage.process_batch(batch)

    assert [j.record for j in rejected] == [batch[1].record]
    assert {e.request_id: e.signature for e, _ in pub.events} == {
        "x": other_store.rows["x"].sig, "z": store.rows["z"].sig,
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [(VaultUnavailable("sealed"), VaultUnavailable), (VaultError("permission denied"), VaultError)],
)
async def test_vault_failures_are_retried_and_store_nothing(error, kind, caplog):
    stage, store, vault, pub, _ = make_stage()
    vault.fail = error
    with caplog.at_level(logging.ERROR, logger="ledger.signer"), pytest.raises(LedgerError) as info:
        await stage.process_batch(msgs(req_bytes("a")))
    assert isinstance(info.value, kind)
    assert info.value.policy is Policy.RETRY, "Vault down or refusing: pause, never dead-letter"
    assert store.rows == {} and pub.events == []
    assert any(r.getMessage().startswith("vault sign:") for r in caplog.records), "runbook log phrase"


class _Transit:
    def __init__(self, outer: _FakeHvac) -> None:
        self.outer = outer

    def read_key(self, name, mount_point):
        raw = self.outer.private.public_key().public_bytes_raw()
        return {"data": {"type": "ed25519", "keys": {"1": {"public_key": base64.b64encode(raw).decode()}}}}

    def sign_data(self, name, mount_point, batch_input):
        results = []
        for item in batch_input:
            data = base64.b64decode(item["input"])
            sig = self.outer.private.sign(data if not self.outer.tamper else data + b"!")
            results.append({"signature": "vault:v1:" + base64.b64encode(sig).decode(), "key_version": 1})
        return {"data": {"batch_results": results}}


class _Secrets:
    def __init__(self, outer: _FakeHvac) -> None:
        self.transit = _Transit(outer)


class _FakeHvac:
    """Just enough of hvac.Client (key reads) and of the HTTP sign transport for
    TransitSigner: a Vault whose signatures can be made wrong."""

    def __init__(self, *, tamper: bool) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        self.tamper = tamper
        self.secrets = _Secrets(self)

    async def sign(self, key: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        data: Mapping[str, Any] = self.secrets.transit.sign_data(  # type: ignore[no-untyped-call]
            key, "transit", body["batch_input"])["data"]
        return data

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("tamper", [False, True])
async def test_a_signature_that_does_not_verify_never_reaches_storage(tamper, caplog):
    client = _FakeHvac(tamper=tamper)
    vault = TransitSigner(Settings(vault_token="t"), client_factory=lambda: client,
                          transport=client)
    store, pub = FakeStore(), FakePublisher()
    stage = SignerStage(store=store, vault=vault, publisher=pub, key_name=KEY, batch_max=200, metrics=Metrics())
    try:
        if tamper:
            with caplog.at_level(logging.ERROR, logger="ledger.signer"), pytest.raises(VerificationError) as info:
                await stage.process_batch(msgs(req_bytes("a")))
            assert info.value.policy is Policy.RETRY
            assert store.rows == {} and pub.events == []
            assert any("vault sign:" in r.getMessage() for r in caplog.records)
        else:
            await stage.process_batch(msgs(req_bytes("a")))
            row = store.rows["a"]
            client.private.public_key().verify(base64.b64decode(row.sig.split(":")[2]), row.statement)
            assert row.id == entry_id_for("a") and isinstance(row.id, uuid.UUID)
    finally:
        await vault.close()
