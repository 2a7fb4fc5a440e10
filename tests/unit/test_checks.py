"""shared.checks: each check of an entry and a batch, on values made here.

The bundle verifier and ``ledger audit`` are tested end to end in test_bundle and test_audit;
this file pins the contract both rely on: a check returns every problem, most basic first,
and an empty list when it passes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared import checks
from shared.checks import StatementFields
from shared.merkle import MerkleTree
from shared.statement import manifest_bytes, statement_bytes
from shared.verify import RekorReceipt, load_log_key
from tests.support.fake_rekor import FakeLog
from tests.support.fake_rekor import hashedrekord as _hashedrekord
from tests.unit.test_bundle import _pem

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
FIELDS = StatementFields("req-1", "acct-1", "ab" * 32, {"n": 1, "ok": True}, T0)
STATEMENT = statement_bytes(request_id="req-1", subject="acct-1", payload_sha256="ab" * 32,
                            meta={"n": 1, "ok": True}, submitted_at=T0)


def test_same_json_is_rfc8785_equality() -> None:
    assert checks.same_json({"a": 1, "b": [1.0]}, {"b": [1], "a": 1})
    assert not checks.same_json(1, True)
    assert not checks.same_json("1", 1)
    assert not checks.same_json(float("nan"), float("nan"))  # not JSON at all: never equal


# --- the entry's signature --------------------------------------------------------------------


def test_read_entry_signature() -> None:
    text = "vault:v2:" + base64.b64encode(b"raw").decode()
    assert checks.read_entry_signature(text, 2) == (b"raw", [])
    raw, problems = checks.read_entry_signature(text, 1)
    assert raw == b"raw"  # still returned: an auditor goes on to verify it
    assert problems == ["the signature names key version 2, the entry says 1"]
    assert checks.read_entry_signature("vault:v2", 2) == (
        None, ["malformed entry signature: expected vault:v<N>:<base64>"])


def test_entry_signature_problems() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signature = key.sign(STATEMENT)
    assert checks.entry_signature_problems(_pem(key), signature, STATEMENT) == []
    assert checks.entry_signature_problems(_pem(key).decode(), signature, STATEMENT) == []
    assert checks.entry_signature_problems(_pem(key), signature, STATEMENT + b" ") == [
        "the Ed25519 signature does not verify over the statement with the entry's key"]
    assert checks.entry_signature_problems(b"junk", signature, STATEMENT) == [
        "the entry's public key is not a PEM key"]
    p256 = _pem(ec.generate_private_key(ec.SECP256R1()))
    assert checks.entry_signature_problems(p256, signature, STATEMENT) == [
        "the entry's public key is not an Ed25519 key"]


# --- the statement ------------------------------------------------------------------------------


def _restated(**fields: object) -> bytes:
    return json.dumps({**json.loads(STATEMENT), **fields}).encode()


def test_the_signed_statement_of_the_fields_passes() -> None:
    assert checks.statement_problems(STATEMENT, FIELDS) == []
    assert set(json.loads(STATEMENT)) == checks.STATEMENT_KEYS


@pytest.mark.parametrize(("statement", "problem"), [
    (b"\xff{", "the signed statement is not I-JSON: not UTF-8"),
    (b"[1]", "the signed statement is not a JSON object"),
    (_restated(extra=1), "the signed statement has fields ['extra', 'meta', "),
])
def test_a_statement_that_is_not_a_v1_statement(statement: bytes, problem: str) -> None:
    problems = checks.statement_problems(statement, FIELDS)
    assert len(problems) == 1
    assert problems[0][0] == "statement" and problems[0][1].startswith(problem)


def test_every_differing_field_is_a_problem_in_field_order() -> None:
    claimed = StatementFields("req-2", "acct-1", "ab" * 32, {"n": 1, "ok": 1},
                              T0 + timedelta(microseconds=1))
    problems = checks.statement_problems(_restated(v=2), claimed)
    assert [check for check, _ in problems] == ["statement", "statement_fields",
                                                "statement_fields", "statement_fields"]
    assert problems[0][1] == "statement version 2 is not 1"
    assert problems[1][1] == "entry request_id 'req-2' is not the signed request_id 'req-1'"
    assert problems[2][1].startswith("entry meta {'n': 1, 'ok': 1} is not the signed meta")
    assert problems[3][1] == ("entry submitted_at 2026-03-04T05:06:07.891012Z is not the signed "
                              "submitted_at '2026-03-04T05:06:07.891011Z'")


def test_the_caller_words_its_own_copy_of_a_field() -> None:
    claimed = StatementFields("req-1", "acct-1", "cd" * 32, {"n": 1, "ok": True}, T0)
    ((check, detail),) = checks.statement_problems(STATEMENT, claimed, label=lambda f: f"column {f}",
                                            show=str)
    assert check == "statement_fields"
    assert detail == f"column payload_sha256 {'cd' * 32} is not the signed payload_sha256 {'ab' * 32}"


# --- the audit path -----------------------------------------------------------------------------


def test_audit_path_problems() -> None:
    leaves = [f"leaf {i}".encode() for i in range(5)]
    tree = MerkleTree.from_data(leaves)
    path = [h.hex() for h in tree.inclusion_proof(2)]
    root = tree.root.hex()
    assert checks.audit_path_problems(leaves[2], 2, 5, path, root) == []
    assert checks.audit_path_problems(leaves[2], 2, 5, ["zz", *path[1:]], root) == [
        "an audit path hash is not hex"]
    assert checks.audit_path_problems(leaves[2], 2, 5, path[:-1], root) == [
        "inclusion proof is shorter than the tree is deep"]
    assert checks.audit_path_problems(leaves[2], 2, 5, path, "00" * 32) == [
        f"the audit path of leaf 2 of 5 leads to {root}, not the batch root {'00' * 32}"]
    assert checks.audit_path_problems(leaves[3], 2, 5, path, root) == [
        f"the audit path of leaf 2 of 5 leads to "
        f"{MerkleTree.from_data([*leaves[:2], leaves[3], *leaves[3:]]).root.hex()}, "
        f"not the batch root {root}"]


# --- the batch ----------------------------------------------------------------------------------


BATCH = uuid.UUID("0b8a4e2e-4f7a-4a8e-9a57-0f1f2b3c4d5e")
MANIFEST = manifest_bytes(batch_id=BATCH, size=5, root_hex="ab" * 32, created_at=T0)


def test_manifest_problems() -> None:
    assert checks.manifest_problems(MANIFEST, batch_id=BATCH, size=5, root="ab" * 32) == []
    assert checks.manifest_problems(MANIFEST, batch_id=BATCH, size=5, root="ab" * 32,
                             created_at=T0) == []
    other = uuid.uuid4()
    assert checks.manifest_problems(MANIFEST, batch_id=other, size=6, root="ab" * 32,
                             created_at=T0 + timedelta(seconds=1)) == [
        f"manifest batch_id '{BATCH}' is not the batch's '{other}'",
        "manifest size 5 is not the batch's 6",
        "manifest created_at '2026-03-04T05:06:07.891011Z' is not the batch's "
        "'2026-03-04T05:06:08.891011Z'",
    ]
    pretty = json.dumps(json.loads(MANIFEST), indent=1).encode()
    for junk in (pretty, b"junk", b"[]", MANIFEST.replace(b'"v":1', b'"v":2')):
        assert checks.manifest_problems(junk, batch_id=BATCH, size=5, root="ab" * 32) == [
            "not the canonical batch manifest (fields or form differ)"]


def test_manifest_digest_problems() -> None:
    digest = hashlib.sha256(MANIFEST).hexdigest()
    assert checks.manifest_digest_problems(MANIFEST, digest) == []
    assert checks.manifest_digest_problems(MANIFEST, "00" * 32) == [
        f"SHA-256 of the manifest is {digest}, not {'00' * 32}"]


def _anchor_signature(key: ec.EllipticCurvePrivateKey, manifest: bytes) -> bytes:
    return key.sign(hashlib.sha256(manifest).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))


def test_anchor_signature_problems() -> None:
    anchor = ec.generate_private_key(ec.SECP256R1())
    signature = _anchor_signature(anchor, MANIFEST)
    assert checks.anchor_signature_problems(_pem(anchor), MANIFEST, signature) == []
    assert checks.anchor_signature_problems(_pem(anchor), MANIFEST + b" ", signature) == [
        "manifest signature does not verify with the anchor key"]
    ed = _pem(ed25519.Ed25519PrivateKey.generate())
    assert checks.anchor_signature_problems(ed, MANIFEST, signature) == [
        "anchor key is not an ECDSA P-256 key"]
    (problem,) = checks.anchor_signature_problems(b"junk", MANIFEST, signature)
    assert problem.startswith("not a public key")


def test_receipt_problems_name_the_receipt_check() -> None:
    anchor = ec.generate_private_key(ec.SECP256R1())
    signature = _anchor_signature(anchor, MANIFEST)
    log = FakeLog(ec.generate_private_key(ec.SECP256R1()))
    log_key = load_log_key(_pem(log.priv))
    receipt = RekorReceipt.from_v1_response(log.add(_hashedrekord(
        hashlib.sha256(MANIFEST).hexdigest(), signature, _pem(anchor))))
    kwargs: dict[str, Any] = {"anchor_signature": signature, "anchor_public_key": _pem(anchor)}
    assert checks.receipt_problems(receipt, log_key, manifest=MANIFEST, **kwargs) == []
    (problem,) = checks.receipt_problems(receipt, log_key, manifest=MANIFEST + b" ", **kwargs)
    assert problem.startswith("body: data hash ")
    other = load_log_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    (problem,) = checks.receipt_problems(receipt, other, manifest=MANIFEST, **kwargs)
    assert problem.startswith("log_id: ")


def test_checks_import_nothing_that_talks_to_a_network() -> None:
    code = (
        "import sys, shared.checks\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aiokafka', 'asyncpg', 'hvac', 'requests', 'httpx', 'urllib3', "
        "'services', 'ledger'} "
        "or m in {'shared.rekor', 'shared.settings', 'shared.vault', 'shared.db', 'shared.kafka'}]"
        "\nassert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60
    )
