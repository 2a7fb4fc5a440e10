"""shared.verify_v2: Rekor v2 receipts with RFC 3161 timestamps, against the real servers'
answers (tests/data/rekor_v2) and targeted mutations of them, one per check."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc3161_client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.errors import VerificationError
from shared.merkle import leaf_hash
from shared.verify import (
    CHECKS,
    ExpectedEntry,
    ReceiptVerificationError,
    RekorReceipt,
    RekorV2Receipt,
    VerifiedV2Receipt,
    load_log_key,
    load_receipt,
    verify_v2_receipt,
)
from shared.verify_v2 import V2Trust, load_tsa_chain, load_v2_trust, note_key_id
from tests.support import v2_receipts as fx

pytestmark = pytest.mark.unit


def _refused(receipt: RekorV2Receipt, trust: V2Trust | None = None,
             expected: ExpectedEntry | None = None) -> ReceiptVerificationError:
    with pytest.raises(ReceiptVerificationError) as info:
        verify_v2_receipt(receipt, trust or fx.trust(), expected=expected or fx.expected())
    return info.value


def _flip_hex(value: str, at: int = 0) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[at] ^= 1
    return raw.hex()


def _flip_b64(value: str, at: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[at] ^= 1
    return base64.b64encode(raw).decode()


# --- the real answers verify ---------------------------------------------------------------


@pytest.mark.parametrize("log", ["log-ed25519", "log-ecdsa"])
def test_the_real_answer_and_token_verify(log: str) -> None:
    receipt = fx.receipt(log)
    verified = verify_v2_receipt(receipt, fx.trust(log), expected=fx.expected())
    assert isinstance(verified, VerifiedV2Receipt)
    token = rfc3161_client.decode_timestamp_response(base64.b64decode(receipt.timestamp))
    assert verified.timestamp_time == token.tst_info.gen_time.replace(tzinfo=UTC)
    assert verified.timestamp_time.tzinfo is not None
    assert datetime(2025, 1, 1, tzinfo=UTC) < verified.timestamp_time
    assert verified.uuid == leaf_hash(base64.b64decode(receipt.body)).hex()
    assert verified.tree_index == verified.log_index == 5
    assert verified.tree_size == 6 and len(verified.inclusion_hashes) == 2


def test_verifies_without_an_expectation_too() -> None:
    assert verify_v2_receipt(fx.receipt(), fx.trust()).log_index == 5


def test_the_ed25519_log_id_is_the_note_key_id_bound_to_the_origin() -> None:
    trust = fx.trust()
    raw = load_log_key((fx.DATA / "log-ed25519.pub.pem").read_bytes()).key
    assert isinstance(raw, ed25519.Ed25519PublicKey)
    raw_bytes = raw.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    want = hashlib.sha256(fx.ORIGIN.encode() + b"\n\x01" + raw_bytes).digest()
    assert trust.key_id == want
    assert fx.receipt().log_id == want.hex()
    # the checkpoint's signature line carries the first 4 bytes as its key hint
    sig_line = fx.receipt().checkpoint.rstrip("\n").rsplit(" ", 1)[1]
    assert base64.b64decode(sig_line)[:4] == want[:4]


def test_the_ecdsa_log_id_is_the_sha256_of_the_der_key() -> None:
    key = load_log_key((fx.DATA / "log-ecdsa.pub.pem").read_bytes())
    assert note_key_id(key, fx.ORIGIN) == note_key_id(key, "any.other") == bytes.fromhex(
        key.log_id)
    assert fx.receipt("log-ecdsa").log_id == key.log_id


def test_the_stored_form_round_trips_and_gives_back_the_log_answer() -> None:
    receipt = fx.receipt()
    stored = receipt.model_dump_json()
    assert json.loads(stored)["api"] == "v2"
    assert load_receipt(stored) == receipt
    assert load_receipt(json.loads(stored)) == receipt
    answer = fx.entry()
    answer.pop("inclusionPromise")  # null in the answer: a v2 entry has no promise
    assert receipt.to_tlog_entry() == answer
    verified = verify_v2_receipt(receipt, fx.trust())
    assert load_receipt(verified.model_dump_json()) == receipt  # the time is no stored field


def test_load_receipt_reads_v1_receipts_as_before() -> None:
    raw = json.loads((fx.DATA.parent / "rekor" / "raw-v1-response.staging.json").read_text())
    v1 = RekorReceipt.from_v1_response(raw)
    loaded = load_receipt(v1.model_dump_json())
    assert type(loaded) is RekorReceipt and loaded == v1
    with pytest.raises(ValueError, match="api"):
        load_receipt({**json.loads(fx.receipt().model_dump_json()), "api": "v3"})


def test_timestamp_is_a_check_name() -> None:
    assert "timestamp" in CHECKS and CHECKS[:7] == (
        "receipt", "log_id", "uuid", "set", "inclusion", "checkpoint", "body")


# --- the answer is malformed ------------------------------------------------------------


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda e: e.pop("canonicalizedBody"), "no 'canonicalizedBody'"),
    (lambda e: e["inclusionProof"].update(logIndex="4"), "another log index"),
    (lambda e: e["inclusionProof"].update(treeSize="six"), "treeSize"),
    (lambda e: e["logId"].update(keyId="%%%"), "logId.keyId is not valid base64"),
    (lambda e: e["inclusionProof"].update(hashes="abc"), "proof hash"),
    (lambda e: e.update(inclusionProof=[]), "wrong type"),
])
def test_a_malformed_answer_is_refused_by_the_receipt_check(mutate: Any, words: str) -> None:
    answer = copy.deepcopy(fx.entry())
    mutate(answer)
    with pytest.raises(ReceiptVerificationError) as info:
        RekorV2Receipt.from_entry(answer, b"token")
    assert info.value.check == "receipt" and words in info.value.detail


# --- one targeted mutation per check ------------------------------------------------------


def test_log_id_refuses_another_id() -> None:
    bad = fx.receipt().model_copy(update={"log_id": _flip_hex(fx.receipt().log_id)})
    err = _refused(bad)
    assert err.check == "log_id" and "pinned key's id" in err.detail


def test_log_id_refuses_another_pinned_key() -> None:
    assert _refused(fx.receipt(), fx.trust("log-ecdsa")).check == "log_id"


def test_log_id_refuses_another_origin_for_an_ed25519_log() -> None:
    err = _refused(fx.receipt(), fx.trust(origin="other-log.example"))
    assert err.check == "log_id" and "'other-log.example'" in err.detail


def test_checkpoint_refuses_another_origin_for_an_ecdsa_log() -> None:
    err = _refused(fx.receipt("log-ecdsa"), fx.trust("log-ecdsa", origin="other-log.example"))
    assert err.check == "checkpoint" and "not the pinned origin" in err.detail


def test_checkpoint_refuses_a_flipped_note_signature() -> None:
    receipt = fx.receipt()
    text, sig = receipt.checkpoint.rstrip("\n").rsplit(" ", 1)
    bad = receipt.model_copy(update={"checkpoint": f"{text} {_flip_b64(sig, 10)}\n"})
    err = _refused(bad)
    assert err.check == "checkpoint" and "does not verify" in err.detail


def test_checkpoint_refuses_a_changed_origin_line() -> None:
    receipt = fx.receipt("log-ecdsa")
    note = receipt.checkpoint.replace(fx.ORIGIN + "\n", "ledger-rekor-v2.locak\n", 1)
    err = _refused(receipt.model_copy(update={"checkpoint": note}), fx.trust("log-ecdsa"))
    assert err.check == "checkpoint" and "does not verify" in err.detail


def test_checkpoint_refuses_a_hint_of_another_key() -> None:
    receipt = fx.receipt()
    text, sig = receipt.checkpoint.rstrip("\n").rsplit(" ", 1)
    bad = receipt.model_copy(update={"checkpoint": f"{text} {_flip_b64(sig, 0)}\n"})
    err = _refused(bad)
    assert err.check == "checkpoint" and "no signature line with the log key's hint" in err.detail


def test_checkpoint_refuses_a_changed_root_hash() -> None:
    bad = fx.receipt().model_copy(update={"root_hash": _flip_hex(fx.receipt().root_hash)})
    err = _refused(bad)
    assert err.check == "checkpoint" and "root hash" in err.detail


def test_checkpoint_refuses_another_tree_size() -> None:
    err = _refused(fx.receipt().model_copy(update={"tree_size": 7}))
    assert err.check == "checkpoint" and "tree size 6" in err.detail


def test_inclusion_refuses_a_flipped_proof_hash() -> None:
    receipt = fx.receipt()
    hashes = (_flip_hex(receipt.inclusion_hashes[0], 31), receipt.inclusion_hashes[1])
    err = _refused(receipt.model_copy(update={"inclusion_hashes": hashes}))
    assert err.check == "inclusion" and "not the proof's root hash" in err.detail


def test_inclusion_refuses_a_flipped_byte_of_the_body() -> None:
    receipt = fx.receipt()
    err = _refused(receipt.model_copy(update={"body": _flip_b64(receipt.body, 40)}))
    assert err.check == "inclusion"


def test_inclusion_refuses_another_index() -> None:
    err = _refused(fx.receipt().model_copy(update={"log_index": 4}))
    assert err.check == "inclusion"


@pytest.mark.parametrize(("expected", "words"), [
    (ExpectedEntry.for_message(b"another manifest", fx.anchor_signature(),
                               fx.anchor_public_key()), "is not the submitted"),
    (ExpectedEntry.for_message(fx.manifest(), fx.anchor_signature()[:-1] + b"\0",
                               fx.anchor_public_key()), "signature is not the submitted"),
    (ExpectedEntry.for_message(fx.manifest(), fx.anchor_signature(),
                               (fx.DATA / "log-ecdsa.pub.pem").read_text()),
     "public key is not the submitted"),
])
def test_body_refuses_what_was_not_submitted(expected: ExpectedEntry, words: str) -> None:
    err = _refused(fx.receipt(), expected=expected)
    assert err.check == "body" and words in err.detail


def test_timestamp_refuses_a_token_from_another_tsa() -> None:
    err = _refused(fx.receipt(tsa="other-tsa"))
    assert err.check == "timestamp" and "pinned TSA chain" in err.detail
    assert "\n" not in err.detail and len(err.detail) < 400


def test_timestamp_refuses_when_another_chain_is_pinned() -> None:
    err = _refused(fx.receipt(), fx.trust(chain="other-tsa"))
    assert err.check == "timestamp" and "pinned TSA chain" in err.detail


def test_timestamp_refuses_a_pinned_chain_without_its_leaf() -> None:
    full = fx.trust()
    trust = V2Trust(full.log_key, full.origin, full.tsa_chain[1:])
    assert _refused(fx.receipt(), trust).check == "timestamp"


def test_timestamp_refuses_a_flipped_byte_of_the_token_signature() -> None:
    receipt = fx.receipt()
    token = base64.b64decode(receipt.timestamp)
    bad = receipt.model_copy(update={"timestamp": _flip_b64(receipt.timestamp, len(token) - 5)})
    err = _refused(bad)
    assert err.check == "timestamp"


def test_timestamp_refuses_garbage() -> None:
    bad = fx.receipt().model_copy(update={"timestamp": base64.b64encode(b"\x30\x03abc").decode()})
    err = _refused(bad)
    assert err.check == "timestamp" and "not a DER RFC 3161" in err.detail


# --- a synthetic one-entry log, for bodies the real log would not hold ----------------------

_LOG = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"v2 test log").digest())


def _one_entry_log(body: dict[str, Any]) -> tuple[RekorV2Receipt, V2Trust]:
    """``body`` as entry 0 of a one-entry log whose checkpoint the test key signs."""
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    pem = _LOG.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    trust = V2Trust(load_log_key(pem), fx.ORIGIN, fx.trust().tsa_chain)
    root = leaf_hash(raw)
    text = f"{fx.ORIGIN}\n1\n{base64.b64encode(root).decode()}\n"
    line = base64.b64encode(trust.key_id[:4] + _LOG.sign(text.encode())).decode()
    receipt = RekorV2Receipt(
        log_index=0, log_id=trust.key_id.hex(), body=base64.b64encode(raw).decode(),
        inclusion_hashes=(), root_hash=root.hex(), tree_size=1,
        checkpoint=f"{text}\n\u2014 {fx.ORIGIN} {line}\n", timestamp=fx.receipt().timestamp,
    )
    return receipt, trust


def _real_body() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.b64decode(fx.receipt().body))
    return value


def test_the_synthetic_log_verifies_the_real_body() -> None:
    receipt, trust = _one_entry_log(_real_body())
    assert verify_v2_receipt(receipt, trust, expected=fx.expected()).log_index == 0


@pytest.mark.parametrize(("path", "value", "words"), [
    (("apiVersion",), "0.0.1", "apiVersion is '0.0.1'"),
    (("kind",), "dsse", "kind is 'dsse'"),
    (("spec", "hashedRekordV002", "data", "algorithm"), "SHA2_384", "not 'SHA2_256'"),
    (("spec", "hashedRekordV002", "signature", "verifier"), {}, "not a hashedrekord v0.0.2"),
    (("spec", "hashedRekordV002", "signature", "content"), "!!", "not valid base64"),
])
def test_body_refuses_what_is_no_hashedrekord_v002(path: tuple[str, ...], value: Any,
                                                    words: str) -> None:
    body = _real_body()
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    receipt, trust = _one_entry_log(body)
    with pytest.raises(ReceiptVerificationError) as info:
        verify_v2_receipt(receipt, trust)
    assert info.value.check == "body" and words in info.value.detail


def test_timestamp_refuses_a_token_over_another_signature() -> None:
    body = _real_body()
    other = fx.anchor_signature()[:-1] + bytes([fx.anchor_signature()[-1] ^ 1])
    body["spec"]["hashedRekordV002"]["signature"]["content"] = base64.b64encode(other).decode()
    receipt, trust = _one_entry_log(body)
    with pytest.raises(ReceiptVerificationError) as info:
        verify_v2_receipt(receipt, trust)
    assert info.value.check == "timestamp" and "message imprint" in info.value.detail


# --- loading the trust ------------------------------------------------------------------------


def test_the_chain_must_be_leaf_first() -> None:
    pem = (fx.DATA / "tsa.chain.pem").read_bytes()
    assert len(load_tsa_chain(pem)) == 3
    reversed_pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in reversed(load_tsa_chain(pem)))
    with pytest.raises(VerificationError, match="not leaf first"):
        load_tsa_chain(reversed_pem)
    with pytest.raises(VerificationError, match="not PEM certificates"):
        load_tsa_chain(b"not a certificate")


@pytest.mark.parametrize("origin", ["", "two words", "a+b"])
def test_an_origin_must_be_a_note_name(origin: str) -> None:
    with pytest.raises(VerificationError, match="not a checkpoint origin"):
        load_v2_trust((fx.DATA / "log-ed25519.pub.pem").read_bytes(), origin,
                      (fx.DATA / "tsa.chain.pem").read_bytes())
