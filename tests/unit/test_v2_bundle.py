"""Proof bundles of batches anchored in Rekor v2: the ``ledger.anchored`` v2 receipt part,
``verify_bundle`` with the pinned v2 trust and ``ledger verify``, on the real log and TSA
answers of tests/data/rekor_v2."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rfc3161_client

from ledger.cli import main
from shared.anchored import anchored_events, receipt_info
from shared.bundle import STEPS, V2_TRUST_MISSING, BundleVerificationError, verify_bundle
from shared.messages import AnchoredEntry, ReceiptInfo, ReceiptInfoV2, schema_documents
from shared.records import BatchRecord
from shared.verify import RekorReceipt, RekorV2Receipt
from tests.support import v2_receipts as fx
from tests.support.malformed_bundles import payload

pytestmark = pytest.mark.unit

V1_BUNDLE = fx.DATA.parent / "malformed_bundles" / "valid.json"


def _key(log: str = "log-ed25519") -> bytes:
    return (fx.DATA / f"{log}.pub.pem").read_bytes()


def _chain(name: str = "tsa") -> bytes:
    return (fx.DATA / f"{name}.chain.pem").read_bytes()


def _verify(bundle: Any, **kwargs: Any) -> Any:
    pins: dict[str, Any] = {"rekor_public_key_pem": _key(), "rekor_origin": fx.ORIGIN,
                            "tsa_chain_pem": _chain()}
    return verify_bundle(bundle, **{**pins, **kwargs})


def _doc() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fx.bundle())
    return value


# --- the committed files are the deterministic batch ---------------------------------------


def test_the_fixture_files_are_what_the_batch_builds() -> None:
    assert (fx.DATA / "manifest.json").read_bytes() == fx.manifest()
    assert (fx.DATA / "anchor.sig").read_bytes() == fx.anchor_signature()
    assert (fx.DATA / "anchor.pub.pem").read_text() == fx.anchor_public_key()
    assert (fx.DATA / "entry.pem").read_bytes() == fx.entry_public_key()
    assert (fx.DATA / "payload.bin").read_bytes() == payload(fx.PICK)
    assert (fx.DATA / "bundle.json").read_bytes() == fx.bundle()


# --- the event's receipt part ----------------------------------------------------------------


def test_a_v2_event_carries_the_v2_receipt_and_is_the_model_bytes() -> None:
    batch, members = fx.batch()
    receipt = batch.receipt
    assert isinstance(receipt, RekorV2Receipt)
    events = anchored_events(batch, members)
    for event, member in zip(events, members, strict=True):
        model = event.model()
        assert isinstance(model.receipt, ReceiptInfoV2)
        assert model.receipt.api == "v2" and model.receipt.timestamp == receipt.timestamp
        assert model.receipt.hashes == list(receipt.inclusion_hashes)
        assert model.receipt.uuid == receipt.uuid
        slow = AnchoredEntry(entry=member.signed_entry(), leaf_index=event.leaf_index,
                             audit_path=model.audit_path, batch=batch.info(),
                             receipt=receipt_info(receipt), anchored_at=batch.anchored_at)
        assert event.value == slow.model_dump_json().encode()
    receipt_json = json.loads(events[0].value)["receipt"]
    assert list(receipt_json) == ["api", "log_index", "log_id", "body", "tree_size",
                                  "root_hash", "hashes", "checkpoint", "timestamp"]


def test_a_v1_event_keeps_its_receipt_part_unchanged() -> None:
    doc = json.loads(V1_BUNDLE.read_bytes())
    assert list(doc["receipt"]) == ["uuid", "log_index", "tree_index", "log_id",
                                    "integrated_time", "body", "signed_entry_timestamp",
                                    "tree_size", "root_hash", "hashes", "checkpoint"]
    model = AnchoredEntry.model_validate_json(V1_BUNDLE.read_bytes())
    assert isinstance(model.receipt, ReceiptInfo)
    assert model.model_dump_json().encode() == V1_BUNDLE.read_bytes()


def test_the_published_schema_takes_both_receipts_and_refuses_a_mix() -> None:
    schema = schema_documents()["ledger.anchored.v1.schema.json"]
    jsonschema.validate(json.loads(V1_BUNDLE.read_bytes()), schema)
    jsonschema.validate(_doc(), schema)
    no_timestamp = _doc()
    del no_timestamp["receipt"]["timestamp"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(no_timestamp, schema)
    v1_with_api = json.loads(V1_BUNDLE.read_bytes())
    v1_with_api["receipt"]["api"] = "v2"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(v1_with_api, schema)


def test_a_stored_receipt_of_either_form_is_read_back_from_the_row() -> None:
    batch, _ = fx.batch()
    assert batch.receipt is not None
    row = {"id": batch.id, "created_at": batch.created_at, "state": batch.state,
           "size": batch.size, "root_hash": batch.root_hash, "manifest": batch.manifest,
           "manifest_sha256": batch.manifest_sha256, "anchor_sig": batch.anchor_sig,
           "anchor_key_version": 1, "anchor_pubkey": batch.anchor_pubkey,
           "receipt": batch.receipt.model_dump_json(), "anchored_at": batch.anchored_at}
    assert BatchRecord.from_row(row).receipt == batch.receipt
    v1 = AnchoredEntry.model_validate_json(V1_BUNDLE.read_bytes()).receipt
    assert isinstance(v1, ReceiptInfo)
    stored_v1 = RekorReceipt.model_validate(
        {**v1.model_dump(exclude={"hashes"}), "inclusion_hashes": v1.hashes})
    read = BatchRecord.from_row({**row, "receipt": stored_v1.model_dump_json()}).receipt
    assert type(read) is RekorReceipt and read == stored_v1


# --- verify_bundle -------------------------------------------------------------------------------


def test_the_real_v2_bundle_verifies_with_every_step_and_the_tsa_time() -> None:
    report = _verify(fx.bundle(), entry_public_key_pem=fx.entry_public_key(),
                     payload=payload(fx.PICK))
    assert [s.step for s in report.steps] == list(STEPS)
    token = rfc3161_client.decode_timestamp_response(
        base64.b64decode(_doc()["receipt"]["timestamp"]))
    assert report.rekor_api == "v2" and report.integrated_at is None
    assert report.timestamped_at is not None
    assert report.timestamped_at.replace(tzinfo=None) == token.tst_info.gen_time.replace(
        tzinfo=None)
    receipt_step = report.steps[STEPS.index("receipt")].detail
    assert "Rekor v2 entry" in receipt_step and fx.ORIGIN in receipt_step
    assert f"timestamped the anchor signature at {report.timestamped_at.isoformat()}" in (
        receipt_step)
    assert report.rekor_log_index == 5 and report.rekor_uuid == fx.receipt().uuid


@pytest.mark.parametrize(("missing", "words"), [
    ({"rekor_origin": None}, "log origin"),
    ({"tsa_chain_pem": None}, "TSA chain"),
    ({"rekor_origin": None, "tsa_chain_pem": None}, "log origin and TSA chain"),
])
def test_a_v2_bundle_without_the_v2_pins_fails_the_receipt_step_saying_what_is_missing(
    missing: dict[str, Any], words: str
) -> None:
    with pytest.raises(BundleVerificationError) as info:
        _verify(fx.bundle(), **missing)
    assert info.value.step == "receipt"
    assert info.value.detail.startswith(V2_TRUST_MISSING) and words in info.value.detail


@pytest.mark.parametrize(("pins", "check"), [
    ({"tsa_chain_pem": _chain("other-tsa")}, "timestamp"),
    ({"rekor_origin": "another.log"}, "log_id"),
    ({"rekor_public_key_pem": _key("log-ecdsa")}, "log_id"),
])
def test_a_v2_bundle_against_other_pins_fails_the_receipt_check(pins: dict[str, Any],
                                                                 check: str) -> None:
    with pytest.raises(BundleVerificationError) as info:
        _verify(fx.bundle(), **pins)
    assert info.value.step == "receipt" and info.value.detail.startswith(f"{check}: ")


def test_a_token_swapped_for_another_tsas_fails_the_timestamp_check() -> None:
    doc = _doc()
    doc["receipt"]["timestamp"] = fx.receipt(tsa="other-tsa").timestamp
    with pytest.raises(BundleVerificationError) as info:
        _verify(doc)
    assert info.value.step == "receipt" and info.value.detail.startswith("timestamp: ")


def test_an_unknown_receipt_api_fails_the_bundle_step() -> None:
    doc = _doc()
    doc["receipt"]["api"] = "v3"
    with pytest.raises(BundleVerificationError) as info:
        _verify(doc)
    assert info.value.step == "bundle" and "receipt" in info.value.detail


# --- ledger verify ---------------------------------------------------------------------------


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.json"
    path.write_bytes(fx.bundle())
    return path


def _cli(bundle: Path, *extra: str) -> int:
    return main(["verify", str(bundle), "--rekor-key", str(fx.DATA / "log-ed25519.pub.pem"),
                 *extra])


def test_ledger_verify_verifies_a_v2_bundle_with_its_pins(
    bundle_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli(bundle_file, "--rekor-origin", fx.ORIGIN, "--tsa-chain",
                str(fx.DATA / "tsa.chain.pem"))
    out = capsys.readouterr().out
    assert code == 0, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("VERIFIED: entry ") and "anchored in Rekor v2 at log index 5" in last
    assert "timestamped " in last and "by the pinned TSA" in last


@pytest.mark.parametrize(("given", "named", "not_named"), [
    ((), ["--rekor-origin ORIGIN", "--tsa-chain TSA.pem"], []),
    (("--rekor-origin", fx.ORIGIN), ["--tsa-chain TSA.pem"], ["--rekor-origin ORIGIN"]),
])
def test_ledger_verify_names_the_missing_v2_options_and_exits_2(
    bundle_file: Path, capsys: pytest.CaptureFixture[str], given: tuple[str, ...],
    named: list[str], not_named: list[str],
) -> None:
    assert _cli(bundle_file, *given) == 2
    out = capsys.readouterr().out
    failed = next(line for line in out.splitlines() if line.startswith("\u2717 receipt"))
    assert "Rekor v2" in failed
    assert all(option in failed for option in named)
    assert not any(option in failed for option in not_named)
    assert out.rstrip().splitlines()[-1] == "NOT VERIFIED: the receipt step failed"


def test_ledger_verify_refuses_a_v2_bundle_with_another_tsa_pinned(
    bundle_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _cli(bundle_file, "--rekor-origin", fx.ORIGIN, "--tsa-chain",
                str(fx.DATA / "other-tsa.chain.pem"))
    out = capsys.readouterr().out
    assert code == 1
    assert "\u2717 receipt" in out and "timestamp: " in out
