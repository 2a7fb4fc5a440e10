"""shared.bundle: a proof bundle verified end to end, and every tampering caught at its step.

The bundle is made here the way the pipeline makes it: entries signed with an Ed25519 key
generated in the test (``vault:v1:`` signatures), a batch planned and its events built by the
anchorer's own builders, the manifest digest signed with a P-256 anchor key, and the
hashedrekord anchored in a synthetic Rekor v1 log (``FakeLog`` of test_verify) whose key
signs the SET and the checkpoint.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from services.anchorer.building import plan_batch
from shared.anchored import anchored_events
from shared.bundle import STEPS, BundleVerificationError, StepResult, verify_bundle
from shared.errors import VerificationError
from shared.messages import AnchoredEntry, ReceiptInfo
from shared.records import BatchRecord, EntryRecord
from shared.statement import entry_id_for, format_time, statement_bytes
from shared.verify import RekorReceipt
from tests.support.fake_rekor import FakeLog
from tests.support.fake_rekor import hashedrekord as _hashedrekord

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
SIZE = 5
PICK = 2  # the entry whose bundle the tests verify (leaf 2 of 5: a path with 3 hashes)


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _payload(i: int) -> bytes:
    return f"document number {i}\n".encode()


class World:
    """Keys, a log and one anchored batch of SIZE entries, all made in the test."""

    def __init__(self) -> None:
        self.entry_key = ed25519.Ed25519PrivateKey.generate()
        self.anchor_key = ec.generate_private_key(ec.SECP256R1())
        self.log = FakeLog(ec.generate_private_key(ec.SECP256R1()))
        self.log_pem = _pem(self.log.priv)
        rows = [self._row(i) for i in range(SIZE)]
        plan = plan_batch(rows, batch_id=uuid.uuid4(), created_at=T0)
        anchor_sig = self.anchor_key.sign(
            plan.manifest_sha256, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        anchor_pem = _pem(self.anchor_key)
        response = self.log.add(_hashedrekord(plan.manifest_sha256.hex(), anchor_sig, anchor_pem))
        anchored_at = T0 + timedelta(seconds=3)
        batch = BatchRecord(
            id=plan.batch_id, created_at=T0, state="anchored", size=plan.size,
            root_hash=plan.root_hex, manifest=plan.manifest,
            manifest_sha256=plan.manifest_sha256.hex(), anchor_sig=anchor_sig,
            anchor_key_version=1, anchor_pubkey=anchor_pem.decode(),
            receipt=RekorReceipt.from_v1_response(response), anchored_at=anchored_at,
        )
        members = [
            replace(m, batch_id=plan.batch_id, leaf_index=i, anchored_at=anchored_at)
            for i, m in enumerate(plan.members)
        ]
        self.batch = batch
        self.events = [e.model() for e in anchored_events(batch, members)]
        self.event = next(e for e in self.events if e.entry.request_id == f"req-{PICK}")

    def _row(self, i: int) -> EntryRecord:
        request_id = f"req-{i}"
        meta = {"n": i, "flag": True, "nested": {"k": [1, 2.5, "x"]}}
        payload_sha256 = hashlib.sha256(_payload(i)).hexdigest()
        submitted = T0 - timedelta(seconds=10 - i)
        statement = statement_bytes(
            request_id=request_id, subject=f"acct-{i % 2}", payload_sha256=payload_sha256,
            meta=meta, submitted_at=submitted,
        )
        sig = self.entry_key.sign(statement)
        return EntryRecord(
            id=entry_id_for(request_id), request_id=request_id, subject=f"acct-{i % 2}",
            payload_hash=payload_sha256, meta=meta, submitted_at=submitted,
            created_at=T0 - timedelta(seconds=5 - i), statement=statement,
            sig=f"vault:v1:{base64.b64encode(sig).decode()}", key_name="ledger-ed25519",
            key_version=1, pubkey=_pem(self.entry_key).decode(),
        )

    def bundle(self) -> dict[str, Any]:
        """The bundle as a client holds it: the JSON document, freshly parsed."""
        doc: dict[str, Any] = json.loads(self.event.to_bytes())
        return doc


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def _step(world: World, bundle: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(BundleVerificationError) as exc:
        verify_bundle(bundle, rekor_public_key_pem=world.log_pem, **kwargs)
    err = exc.value
    assert isinstance(err, VerificationError)
    assert str(err).startswith(f"{err.step}: ")
    # every step before the failing one passed, in order
    pinned = kwargs.get("entry_public_key_pem") is not None
    assert [p.step for p in err.passed] == [
        s for s in STEPS[: STEPS.index(err.step)] if s != "entry_key" or pinned
    ]
    return err.step


# --- the happy path -------------------------------------------------------------------------


def test_a_genuine_bundle_verifies_every_step(world: World) -> None:
    seen: list[StepResult] = []
    report = verify_bundle(
        world.bundle(), rekor_public_key_pem=world.log_pem,
        entry_public_key_pem=_pem(world.entry_key), payload=_payload(PICK), on_step=seen.append,
    )
    assert [s.step for s in report.steps] == list(STEPS)
    assert report.steps == tuple(seen)
    event = world.event
    assert report.entry_id == event.entry.entry_id == entry_id_for(f"req-{PICK}")
    assert report.leaf_index == event.leaf_index
    assert (report.batch_id, report.batch_size) == (event.batch.batch_id, SIZE)
    assert report.rekor_uuid == event.receipt.uuid
    assert report.rekor_log_index == event.receipt.log_index
    assert isinstance(event.receipt, ReceiptInfo)
    assert report.integrated_at == datetime.fromtimestamp(event.receipt.integrated_time, UTC)
    assert report.rekor_api == "v1" and report.timestamped_at is None
    assert report.payload_checked


def test_every_leaf_of_the_batch_verifies_and_the_model_is_accepted_too(world: World) -> None:
    for event in world.events:
        report = verify_bundle(event, rekor_public_key_pem=world.log_pem)
        assert "payload" not in [s.step for s in report.steps]
        assert "entry_key" not in [s.step for s in report.steps]
        assert not report.payload_checked


def test_the_rekor_key_may_be_der(world: World) -> None:
    der = world.log.der
    verify_bundle(world.bundle(), rekor_public_key_pem=der)


# --- tampering ------------------------------------------------------------------------------


def _flip_b64(text: str, index: int = 5) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _flip_hex(text: str) -> str:
    return ("1" if text[0] != "1" else "2") + text[1:]


def _set(path: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key: Any = int(last) if isinstance(node, list) else last
        node[key] = value(node[key])

    return mutate


def _other_pem(kind: str) -> str:
    key: Any = (ed25519.Ed25519PrivateKey.generate() if kind == "ed25519"
                else ec.generate_private_key(ec.SECP256R1()))
    return _pem(key).decode()


def _manifest(change: Callable[[dict[str, Any]], None], *, canonical: bool = True) -> Callable[
    [dict[str, Any]], None
]:
    def mutate(doc: dict[str, Any]) -> None:
        m = json.loads(base64.b64decode(doc["batch"]["manifest"]))
        change(m)
        raw = (json.dumps(m, sort_keys=True, separators=(",", ":")) if canonical
               else json.dumps(m, indent=1)).encode()
        doc["batch"]["manifest"] = base64.b64encode(raw).decode()

    return mutate


def _with_digest(mutate: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Apply ``mutate`` to the manifest, then fix ``manifest_sha256`` to match (a forger would)."""

    def both(doc: dict[str, Any]) -> None:
        mutate(doc)
        doc["batch"]["manifest_sha256"] = hashlib.sha256(
            base64.b64decode(doc["batch"]["manifest"])
        ).hexdigest()

    return both


def _resign_anchor(doc: dict[str, Any]) -> None:
    """A forger's own anchor key signs the (genuine) manifest digest."""
    forger = ec.generate_private_key(ec.SECP256R1())
    digest = bytes.fromhex(doc["batch"]["manifest_sha256"])
    sig = forger.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    doc["batch"]["anchor_signature"] = base64.b64encode(sig).decode()
    doc["batch"]["anchor_public_key"] = _pem(forger).decode()


def _created_later(m: dict[str, Any]) -> None:
    m["created_at"] = format_time(T0 + timedelta(seconds=1))


Mutation = Callable[[dict[str, Any]], object]


def _seq(*mutations: Mutation) -> Mutation:
    def run(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return run


TAMPERING: dict[str, tuple[Mutation, str]] = {
    # the document itself
    "unknown version": (_set("version", lambda v: 2), "bundle"),
    "a field missing": (lambda d: d["batch"].pop("root"), "bundle"),
    "a malformed payload hash": (_set("entry.payload_sha256", lambda v: v.upper()), "bundle"),
    # entry → statement → signature
    "statement not base64": (_set("entry.statement", lambda v: "***" + v), "statement"),
    "signature key version differs": (
        _set("entry.signature", lambda v: v.replace("vault:v1:", "vault:v2:")), "statement"),
    "signature not vault-formatted": (
        _set("entry.signature", lambda v: v.split(":", 2)[2]), "statement"),
    "a statement byte": (_set("entry.statement", _flip_b64), "entry_signature"),
    "a signature byte": (
        _set("entry.signature", lambda v: "vault:v1:" + _flip_b64(v.split(":", 2)[2])),
        "entry_signature"),
    "another entry key": (
        _set("entry.public_key", lambda v: _other_pem("ed25519")), "entry_signature"),
    "a P-256 entry key": (_set("entry.public_key", lambda v: _other_pem("p256")),
                          "entry_signature"),
    # statement ↔ entry fields
    "the entry subject": (_set("entry.subject", lambda v: v + "x"), "statement_fields"),
    "the entry request id": (_set("entry.request_id", lambda v: v + "x"), "statement_fields"),
    "the entry payload hash": (
        _set("entry.payload_sha256", lambda v: hashlib.sha256(b"other").hexdigest()),
        "statement_fields"),
    "the entry meta, 1 for true": (_set("entry.meta.flag", lambda v: 1), "statement_fields"),
    "the entry submission time": (
        _set("entry.submitted_at", lambda v: v.replace("2026", "2025", 1)), "statement_fields"),
    # leaf → audit path → root
    "an audit path hash": (_set("audit_path.0", _flip_hex), "audit_path"),
    "an audit path hash dropped": (lambda d: d["audit_path"].pop(), "audit_path"),
    "the leaf index": (_set("leaf_index", lambda v: v + 1), "audit_path"),
    "the batch size, leaf outside": (_set("batch.size", lambda v: PICK), "audit_path"),
    "the batch size, path too short": (_set("batch.size", lambda v: 16), "audit_path"),
    # a size whose tree gives leaf 2 the same path shape passes the path; the manifest names
    # the size
    "the batch size, same path shape": (_set("batch.size", lambda v: v + 3), "manifest"),
    "the batch root": (_set("batch.root", _flip_hex), "audit_path"),
    "the entry key version (leaf)": (
        _seq(_set("entry.key_version", lambda v: 2),
             _set("entry.signature", lambda v: v.replace("vault:v1:", "vault:v2:"))),
        "audit_path"),
    # root → manifest → digest → anchor signature
    "manifest not base64": (_set("batch.manifest", lambda v: "!" + v), "manifest"),
    "manifest root": (_with_digest(_manifest(lambda m: m.update(root="00" * 32))), "manifest"),
    "manifest batch id": (
        _with_digest(_manifest(lambda m: m.update(batch_id=str(uuid.uuid4())))), "manifest"),
    "manifest size": (_with_digest(_manifest(lambda m: m.update(size=SIZE + 1))), "manifest"),
    "manifest not canonical": (_with_digest(_manifest(lambda m: None, canonical=False)),
                               "manifest"),
    "manifest with an extra field": (
        _with_digest(_manifest(lambda m: m.update(note="hi"))), "manifest"),
    "manifest creation time": (_manifest(_created_later), "manifest_digest"),
    "manifest digest": (_set("batch.manifest_sha256", _flip_hex), "manifest_digest"),
    "an anchor signature byte": (_set("batch.anchor_signature", lambda v: _flip_b64(v, 12)),
                                 "anchor_signature"),
    "another anchor key": (_set("batch.anchor_public_key", lambda v: _other_pem("p256")),
                           "anchor_signature"),
    "an Ed25519 anchor key": (_set("batch.anchor_public_key", lambda v: _other_pem("ed25519")),
                              "anchor_signature"),
    # manifest → Rekor
    "re-signed by a forger's anchor key": (_resign_anchor, "receipt"),
    "a re-dated manifest, re-signed": (
        _seq(_with_digest(_manifest(_created_later)), _resign_anchor), "receipt"),
    "the SET": (_set("receipt.signed_entry_timestamp", _flip_b64), "receipt"),
    "the integrated time": (_set("receipt.integrated_time", lambda v: v - 3600), "receipt"),
    "the log index": (_set("receipt.log_index", lambda v: v + 1), "receipt"),
    "a Rekor inclusion hash": (_set("receipt.hashes.0", _flip_hex), "receipt"),
    "the Rekor root hash": (_set("receipt.root_hash", _flip_hex), "receipt"),
    "the checkpoint": (_set("receipt.checkpoint", lambda v: v.replace("\n", "\n1", 1)),
                       "receipt"),
    "the receipt body": (
        _set("receipt.body", lambda v: base64.b64encode(
            base64.b64decode(v).replace(b'"sha256"', b'"SHA256"')).decode()), "receipt"),
    "the log id": (_set("receipt.log_id", _flip_hex), "receipt"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_caught_at_its_step(world: World, case: str) -> None:
    mutate, step = TAMPERING[case]
    doc = copy.deepcopy(world.bundle())
    mutate(doc)
    assert json.dumps(doc) != json.dumps(world.bundle())
    assert _step(world, doc) == step


def test_every_step_has_a_tampering_case() -> None:
    covered = {step for _, step in TAMPERING.values()} | {"entry_key", "payload"}
    assert covered == set(STEPS)


def test_receipt_failures_name_the_receipt_check(world: World) -> None:
    doc = world.bundle()
    _set("receipt.signed_entry_timestamp", _flip_b64)(doc)
    with pytest.raises(BundleVerificationError, match=r"^receipt: set: "):
        verify_bundle(doc, rekor_public_key_pem=world.log_pem)
    with pytest.raises(BundleVerificationError, match=r"^receipt: body: signature is not"):
        doc = world.bundle()
        _resign_anchor(doc)
        verify_bundle(doc, rekor_public_key_pem=world.log_pem)


def test_another_rekor_key_is_refused(world: World) -> None:
    other = FakeLog(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BundleVerificationError, match=r"^receipt: log_id: ") as exc:
        verify_bundle(world.bundle(), rekor_public_key_pem=_pem(other.priv))
    assert exc.value.step == "receipt"
    with pytest.raises(BundleVerificationError, match=r"^receipt: the pinned Rekor key"):
        verify_bundle(world.bundle(), rekor_public_key_pem=b"not a key")


def test_a_pinned_entry_key_must_match(world: World) -> None:
    other = _other_pem("ed25519").encode()
    assert _step(world, world.bundle(), entry_public_key_pem=other) == "entry_key"
    assert _step(world, world.bundle(), entry_public_key_pem=b"junk") == "entry_key"


def test_the_payload_must_hash_to_the_entry(world: World) -> None:
    tampered = bytearray(_payload(PICK))
    tampered[0] ^= 0x20
    assert _step(world, world.bundle(), payload=bytes(tampered)) == "payload"
    assert _step(world, world.bundle(), payload=_payload(PICK + 1)) == "payload"


def test_a_non_object_is_not_a_bundle(world: World) -> None:
    junks: list[Any] = [[], "x", None]
    for junk in junks:
        with pytest.raises(BundleVerificationError, match=r"^bundle: "):
            verify_bundle(junk, rekor_public_key_pem=world.log_pem)


def test_bundle_verification_imports_no_network_client() -> None:
    code = (
        "import sys, shared.bundle\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aiokafka', 'asyncpg', 'hvac', 'requests', 'httpx', 'urllib3', 'services'} "
        "or m in {'shared.rekor', 'shared.settings', 'shared.vault', 'shared.db', 'shared.kafka'}]"
        "\nassert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60
    )


def test_the_bundle_is_the_anchored_event_schema(world: World) -> None:
    assert AnchoredEntry.model_validate(world.bundle()) == world.event


def test_a_model_built_without_validation_is_refused_not_crashed(world: World) -> None:
    cases: list[dict[str, Any]] = [{"entry": []}, {"entry": object()}, {}]
    for fields in cases:
        with pytest.raises(BundleVerificationError, match=r"^bundle: ") as exc:
            verify_bundle(AnchoredEntry.model_construct(**fields),
                          rekor_public_key_pem=world.log_pem)
        assert "could not check" not in exc.value.detail


def test_the_raw_bytes_verify_and_a_non_dict_mapping_too(world: World) -> None:
    from types import MappingProxyType  # noqa: PLC0415

    verify_bundle(world.event.to_bytes(), rekor_public_key_pem=world.log_pem)
    verify_bundle(world.event.to_bytes().decode(), rekor_public_key_pem=world.log_pem)
    verify_bundle(MappingProxyType(world.bundle()), rekor_public_key_pem=world.log_pem)
