"""shared.verify: offline Rekor v1 receipt checks, against real vectors and a synthetic log."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore._internal.trust import Keyring
from sigstore.errors import VerificationError as SigstoreVerificationError
from sigstore.models import TransparencyLogEntry
from sigstore_models.common import v1 as common_v1

from shared.errors import VerificationError
from shared.merkle import leaf_hash
from shared.signatures import verify_manifest_signature
from shared.verify import (
    ExpectedEntry,
    LogKey,
    ReceiptVerificationError,
    RekorReceipt,
    VerifiedReceipt,
    load_log_key,
    parse_checkpoint,
    v1_response_from_bundle_entry,
    verify_checkpoint,
    verify_receipt,
)
from tests.support.fake_rekor import FakeLog
from tests.support.fake_rekor import der as _der
from tests.support.fake_rekor import hashedrekord as _hashedrekord
from tests.support.fake_rekor import pem as _pem
from tests.support.fake_rekor import sign as _sign

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "rekor"
CONFORMANCE = DATA / "conformance"


# --- helpers --------------------------------------------------------------------------------


def _trusted_root_keys(path: Path) -> dict[str, bytes]:
    """logID (hex) → DER key of every transparency log in a Sigstore trusted root."""
    root = json.loads(path.read_text())
    return {
        base64.b64decode(t["logId"]["keyId"]).hex(): base64.b64decode(t["publicKey"]["rawBytes"])
        for t in root["tlogs"]
    }


def _staging_response() -> dict[str, Any]:
    resp: dict[str, Any] = json.loads((DATA / "raw-v1-response.staging.json").read_text())
    return resp


def _staging_key() -> LogKey:
    ((_, entry),) = _staging_response().items()
    return load_log_key(_trusted_root_keys(DATA / "trusted_root.staging.json")[entry["logID"]])


def _entry(resp: dict[str, Any]) -> dict[str, Any]:
    ((_, entry),) = resp.items()
    return entry  # type: ignore[no-any-return]


def _flip_b64(s: str, byte: int = 10) -> str:
    raw = bytearray(base64.b64decode(s))
    raw[byte] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.fixture(scope="module")
def anchor_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def manifest() -> bytes:
    return b'{"batch":"b-1","root":"00","size":3}'


@pytest.fixture(scope="module")
def submitted(anchor_key: ec.EllipticCurvePrivateKey, manifest: bytes) -> ExpectedEntry:
    digest = hashlib.sha256(manifest).digest()
    sig = anchor_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return ExpectedEntry(digest.hex(), sig, _pem(anchor_key.public_key()))


@pytest.fixture(scope="module")
def fake_log() -> FakeLog:
    return FakeLog(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def fake_resp(fake_log: FakeLog, submitted: ExpectedEntry) -> dict[str, Any]:
    # Rekor re-encodes the key; the body holds a PEM with different line breaks.
    pem = load_log_key(submitted.public_key).der
    rewrapped = (
        b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(pem) + b"-----END PUBLIC KEY-----\n"
    )
    return fake_log.add(_hashedrekord(submitted.digest_hex, submitted.signature, rewrapped))


def _key_bytes(e: ExpectedEntry) -> bytes:
    assert isinstance(e.public_key, bytes)
    return e.public_key


def _check_of(exc: pytest.ExceptionInfo[ReceiptVerificationError]) -> str:
    assert str(exc.value).startswith(exc.value.check + ": ")
    return exc.value.check


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["trusted_root.production.json", "trusted_root.staging.json"])
def test_log_id_is_sha256_of_der(root: str) -> None:
    keys = _trusted_root_keys(DATA / root)
    # Rekor v2 logs (Ed25519, "log2025-…") derive their id from the note name: not v1's rule.
    v1 = {
        base64.b64decode(t["logId"]["keyId"]).hex()
        for t in json.loads((DATA / root).read_text())["tlogs"]
        if not t["baseUrl"].startswith("https://log20")
    }
    assert v1 & {
        "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d",
        "d32f30a3c32d639c2b762205a21c7bb07788e68283a4ae6f42118723a1bea496",
    }
    for log_id, der in keys.items():
        if log_id not in v1:
            continue
        key = load_log_key(der)
        assert key.log_id == log_id
        pem = serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert load_log_key(pem).log_id == log_id
        assert load_log_key(pem.decode()).der == der


def test_load_log_key_rejects_garbage() -> None:
    with pytest.raises(VerificationError):
        load_log_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(VerificationError):
        load_log_key(b"\x30\x00")


# --- the real staging receipt ----------------------------------------------------------------------


def test_staging_vector_verifies() -> None:
    resp = _staging_response()
    receipt = verify_receipt(resp, _staging_key())
    assert isinstance(receipt, VerifiedReceipt)
    assert receipt.uuid == "ac3650aee1c1b3821211cf07067c1a118d0a7f86867bbb1df340cb8fc9c221af"
    assert receipt.log_index == 1688
    assert receipt.tree_index == 1227
    assert receipt.tree_size == 14358
    assert receipt.integrated_time == 1656448131
    # Also when given as PEM and as a stored receipt read back from JSON.
    key_pem = serialization.load_der_public_key(_staging_key().der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stored = RekorReceipt.model_validate_json(receipt.model_dump_json())
    assert verify_receipt(stored, key_pem) == receipt


def test_receipt_json_round_trip() -> None:
    resp = _staging_response()
    receipt = RekorReceipt.from_v1_response(resp)
    again = RekorReceipt.model_validate_json(receipt.model_dump_json())
    assert again == receipt
    assert again.to_v1_response() == resp
    with pytest.raises(Exception, match="frozen"):
        receipt.uuid = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "check", "words"),
    [
        (
            lambda e: e["verification"].update(
                signedEntryTimestamp=_flip_b64(e["verification"]["signedEntryTimestamp"])
            ),
            "set",
            "does not verify",
        ),
        (lambda e: e.update(integratedTime=e["integratedTime"] + 1), "set", "does not verify"),
        (lambda e: e.update(logIndex=e["logIndex"] + 1), "set", "does not verify"),
        (
            lambda e: e["verification"]["inclusionProof"]["hashes"].__setitem__(3, "00" * 32),
            "inclusion",
            "not the proof's root",
        ),
        (lambda e: e["verification"]["inclusionProof"]["hashes"].pop(), "inclusion", "shorter"),
        (
            lambda e: e["verification"]["inclusionProof"].update(logIndex=1226),
            "inclusion",
            "not the proof's root",
        ),
        (
            lambda e: e["verification"]["inclusionProof"].update(rootHash="11" * 32),
            "inclusion",
            "not the proof's root",
        ),
        (lambda e: e["verification"]["inclusionProof"].pop("checkpoint"), "checkpoint", "missing"),
        (lambda e: e.update(logID="00" * 32), "log_id", "not the log key's id"),
        (
            lambda e: e.update(body=base64.b64encode(base64.b64decode(e["body"]) + b" ").decode()),
            "uuid",
            "leaf hash",
        ),
    ],
    ids=[
        "set-byte",
        "set-time",
        "set-index",
        "inclusion-hash",
        "inclusion-short",
        "inclusion-index",
        "proof-root",
        "no-checkpoint",
        "log-id",
        "body-changed",
    ],
)
def test_staging_vector_tampering(mutate: Any, check: str, words: str) -> None:
    resp = copy.deepcopy(_staging_response())
    mutate(_entry(resp))
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, _staging_key())
    assert _check_of(exc) == check
    assert words in str(exc.value)


def test_staging_vector_wrong_log_key() -> None:
    other = load_log_key(_der(ec.generate_private_key(ec.SECP256R1()).public_key()))
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(_staging_response(), other)
    assert _check_of(exc) == "log_id"


def _replace_checkpoint_sig(note: str, hint: bytes, sig: bytes) -> str:
    text, _, _ = note.partition("\n\n")
    name = note.split("\n\n")[1].split(" ")[1]
    return f"{text}\n\n\u2014 {name} {base64.b64encode(hint + sig).decode()}\n"


def test_checkpoint_signed_by_another_key() -> None:
    resp = copy.deepcopy(_staging_response())
    ip = _entry(resp)["verification"]["inclusionProof"]
    key = _staging_key()
    text = ip["checkpoint"].partition("\n\n")[0] + "\n"
    forged = ec.generate_private_key(ec.SECP256R1()).sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    ip["checkpoint"] = _replace_checkpoint_sig(ip["checkpoint"], key.key_hint, forged)
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, key)
    assert _check_of(exc) == "checkpoint"
    assert "signature does not verify" in str(exc.value)


def test_checkpoint_wrong_key_hint() -> None:
    resp = copy.deepcopy(_staging_response())
    ip = _entry(resp)["verification"]["inclusionProof"]
    cp = parse_checkpoint(ip["checkpoint"])
    ip["checkpoint"] = _replace_checkpoint_sig(
        ip["checkpoint"], b"\xde\xad\xbe\xef", cp.signatures[0].signature
    )
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, _staging_key())
    assert _check_of(exc) == "checkpoint"
    assert "no signature line with the log key's hint d32f30a3" in str(exc.value)


def test_checkpoint_text_changed() -> None:
    resp = copy.deepcopy(_staging_response())
    ip = _entry(resp)["verification"]["inclusionProof"]
    ip["checkpoint"] = ip["checkpoint"].replace(
        "rekor.sigstage.dev - ", "rekor.sigstage.dev -- ", 1
    )
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, _staging_key())
    assert _check_of(exc) == "checkpoint"


@pytest.mark.parametrize(
    "note",
    [
        "origin\n3\n",
        "origin\n03\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n\u2014 o AAAAAAAA\n",
        "origin\nx\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n\u2014 o AAAAAAAA\n",
        "origin\n3\n" + base64.b64encode(b"\x00" * 31).decode() + "\n\n\u2014 o AAAAAAAA\n",
        "origin\n3\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n- o AAAAAAAA\n",
        "origin\n3\n" + base64.b64encode(b"\x00" * 32).decode() + "\n\n\u2014 o AAAAAAAA",
    ],
)
def test_malformed_checkpoints(note: str) -> None:
    with pytest.raises(ReceiptVerificationError) as exc:
        parse_checkpoint(note)
    assert exc.value.check == "checkpoint"


def test_checkpoint_with_extra_lines_and_two_signatures(fake_log: FakeLog) -> None:
    root = hashlib.sha256(b"r").digest()
    text = f"{fake_log.origin}\n5\n{base64.b64encode(root).decode()}\nTimestamp: 1\n"
    other = ed25519.Ed25519PrivateKey.generate()
    good = _sign(fake_log.priv, text.encode())
    note = (
        f"{text}\n"
        f"\u2014 witness {base64.b64encode(b'wit1' + other.sign(text.encode())).decode()}\n"
        f"\u2014 fake.rekor {base64.b64encode(bytes.fromhex(fake_log.log_id)[:4] + good).decode()}\n"
    )
    cp = verify_checkpoint(note, load_log_key(fake_log.der))
    assert (cp.size, cp.root_hash, cp.other_lines) == (5, root, ("Timestamp: 1",))
    assert len(cp.signatures) == 2


# --- a synthetic log: cases a real log cannot produce --------------------------------------------


def test_fake_log_entry_verifies_with_body(
    fake_log: FakeLog, fake_resp: dict[str, Any], submitted: ExpectedEntry
) -> None:
    receipt = verify_receipt(fake_resp, fake_log.der, expected=submitted)
    assert receipt.tree_index == receipt.tree_size - 1
    # The expected key may be given as DER too.
    verify_receipt(
        fake_resp,
        fake_log.der,
        expected=ExpectedEntry(
            submitted.digest_hex, submitted.signature, load_log_key(submitted.public_key).der
        ),
    )


def test_checkpoint_with_mismatched_root(fake_log: FakeLog, fake_resp: dict[str, Any]) -> None:
    ip = _entry(fake_resp)["verification"]["inclusionProof"]
    ip["checkpoint"] = fake_log.note(ip["treeSize"], hashlib.sha256(b"another root").digest())
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(fake_resp, fake_log.der)
    assert _check_of(exc) == "checkpoint"
    assert "root hash" in str(exc.value)
    assert "is not the inclusion proof's root hash" in str(exc.value)


def test_checkpoint_with_mismatched_size(fake_log: FakeLog, fake_resp: dict[str, Any]) -> None:
    ip = _entry(fake_resp)["verification"]["inclusionProof"]
    ip["checkpoint"] = fake_log.note(ip["treeSize"] + 1, bytes.fromhex(ip["rootHash"]))
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(fake_resp, fake_log.der)
    assert _check_of(exc) == "checkpoint"
    assert "tree size" in str(exc.value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b: b.update(kind="rekord"), "kind"),
        (lambda b: b.update(apiVersion="0.0.2"), "apiVersion"),
        (lambda b: b["spec"]["data"]["hash"].update(algorithm="sha512"), "hash algorithm"),
        (lambda b: b["spec"]["data"]["hash"].update(value="ab" * 32), "data hash"),
        (
            lambda b: b["spec"]["signature"].update(
                content=base64.b64encode(b"0E" + b"\x00" * 68).decode()
            ),
            "signature is not the submitted",
        ),
        (
            lambda b: b["spec"]["signature"]["publicKey"].update(
                content=base64.b64encode(
                    _pem(ec.generate_private_key(ec.SECP256R1()).public_key())
                ).decode()
            ),
            "public key is not the submitted",
        ),
        (lambda b: b["spec"].pop("signature"), "not a hashedrekord"),
    ],
    ids=["kind", "api-version", "algorithm", "digest", "signature", "public-key", "shape"],
)
def test_wrong_body(fake_log: FakeLog, submitted: ExpectedEntry, change: Any, words: str) -> None:
    body = _hashedrekord(submitted.digest_hex, submitted.signature, _key_bytes(submitted))
    change(body)
    resp = fake_log.add(body)
    verify_receipt(resp, fake_log.der)  # the log's promises hold...
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, fake_log.der, expected=submitted)  # ...but it is not our entry
    assert _check_of(exc) == "body"
    assert words in str(exc.value)


@pytest.mark.parametrize(
    "priv",
    [
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["p384", "ed25519", "rsa"],
)
def test_other_log_key_types(priv: Any, submitted: ExpectedEntry) -> None:
    log = FakeLog(priv)
    resp = log.add(
        _hashedrekord(submitted.digest_hex, submitted.signature, _key_bytes(submitted)),
        filler=3,
    )
    verify_receipt(resp, _pem(priv.public_key()), expected=submitted)
    _entry(resp)["verification"]["signedEntryTimestamp"] = _flip_b64(
        _entry(resp)["verification"]["signedEntryTimestamp"], 5
    )
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, _pem(priv.public_key()))
    assert exc.value.check == "set"


def test_malformed_responses(fake_resp: dict[str, Any], fake_log: FakeLog) -> None:
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt({}, fake_log.der)
    assert exc.value.check == "receipt"
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt({**fake_resp, "other": {}}, fake_log.der)
    assert exc.value.check == "receipt"
    broken = copy.deepcopy(fake_resp)
    del _entry(broken)["verification"]
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(broken, fake_log.der)
    assert exc.value.check == "receipt"
    bad_b64 = copy.deepcopy(fake_resp)
    _entry(bad_b64)["body"] = "not base64!"
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(bad_b64, fake_log.der)
    assert exc.value.check == "receipt"



@pytest.mark.parametrize("response", [[], [{}], "uuid", None, 7, {"u": []}, {"u": {"verification": []}},
                                      {"u": {"verification": {"inclusionProof": []}}}])
def test_responses_of_the_wrong_shape_are_refused_not_crashed(
    response: Any, fake_log: FakeLog
) -> None:
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(response, fake_log.der)
    assert exc.value.check == "receipt"


def _with_uuid(resp: dict[str, Any], uuid: str) -> dict[str, Any]:
    ((_, entry),) = resp.items()
    return {uuid: entry}


def test_the_uuid_is_the_leaf_hash_after_nothing_or_the_tree_id(
    fake_resp: dict[str, Any], fake_log: FakeLog, submitted: ExpectedEntry
) -> None:
    ((uuid, _),) = fake_resp.items()
    assert len(uuid) == 80
    verify_receipt(fake_resp, fake_log.der, expected=submitted)
    verify_receipt(_with_uuid(fake_resp, uuid[16:]), fake_log.der, expected=submitted)
    verify_receipt(_with_uuid(fake_resp, "0123456789abcdef" + uuid[16:]), fake_log.der)
    for bad in [uuid.upper(), uuid[1:], "0" + uuid, uuid[:16] + "\n" + uuid[16:],
                "\x1b[2K" + uuid[16:], uuid[:15] + "g" + uuid[16:], uuid + "\n",
                uuid[:16] + "0" * 64]:
        with pytest.raises(ReceiptVerificationError) as exc:
            verify_receipt(_with_uuid(fake_resp, bad), fake_log.der)
        assert exc.value.check == "uuid", bad


def test_a_signed_integrated_time_that_is_no_time_is_refused(fake_log: FakeLog) -> None:
    for when in (-1, 253402300800, 2**53 - 1):
        resp = fake_log.add(_hashedrekord("ab" * 32, b"sig", b"key"))
        entry = _entry(resp)
        entry["integratedTime"] = when
        signed = rfc8785.dumps({"body": entry["body"], "integratedTime": when,
                                "logID": entry["logID"], "logIndex": entry["logIndex"]})
        entry["verification"]["signedEntryTimestamp"] = base64.b64encode(
            _sign(fake_log.priv, signed)).decode()
        with pytest.raises(ReceiptVerificationError, match="not a time") as exc:
            verify_receipt(resp, fake_log.der)
        assert exc.value.check == "set"


# --- conformance bundles -------------------------------------------------------------------------


def _bundle_case(name: str) -> tuple[dict[str, Any], LogKey, ExpectedEntry | None]:
    d = CONFORMANCE / name
    bundle = json.loads((d / "bundle.sigstore.json").read_text())
    (tlog,) = bundle["verificationMaterial"]["tlogEntries"]
    root = (
        d / "trusted_root.json"
        if (d / "trusted_root.json").exists()
        else DATA / "trusted_root.production.json"
    )
    log_id = base64.b64decode(tlog["logId"]["keyId"]).hex()
    key = load_log_key(_trusted_root_keys(root)[log_id])
    expected = None
    if (d / "key.pub").exists():
        ms = bundle["messageSignature"]
        expected = ExpectedEntry.for_message(
            (CONFORMANCE / "a.txt").read_bytes(),
            base64.b64decode(ms["signature"]),
            (d / "key.pub").read_bytes(),
        )
        assert expected.digest_hex == base64.b64decode(ms["messageDigest"]["digest"]).hex()
    return v1_response_from_bundle_entry(tlog), key, expected


@pytest.mark.parametrize("name", ["managed-key-happy-path", "managed-key-and-trusted-root"])
def test_conformance_good_bundles(name: str) -> None:
    resp, key, expected = _bundle_case(name)
    assert expected is not None
    receipt = verify_receipt(resp, key, expected=expected)
    assert receipt.uuid == leaf_hash(base64.b64decode(receipt.body)).hex()


@pytest.mark.parametrize(
    ("name", "check", "words"),
    [
        ("checkpoint-bad-keyhint_fail", "checkpoint", "no signature line with the log key's hint"),
        ("checkpoint-wrong-roothash_fail", "checkpoint", "is not the inclusion proof's"),
        ("inclusion-proof-corrupted-hash_fail", "inclusion", "not the proof's root hash"),
        ("invalid-inclusion-proof_fail", "inclusion", "not the proof's root hash"),
        ("set-invalid-signature_fail", "set", "does not verify"),
        ("managed-key-wrong-key_fail", "body", "public key"),
    ],
)
def test_conformance_failing_bundles(name: str, check: str, words: str) -> None:
    resp, key, expected = _bundle_case(name)
    with pytest.raises(ReceiptVerificationError) as exc:
        verify_receipt(resp, key, expected=expected)
    assert _check_of(exc) == check
    assert words in str(exc.value)


def test_every_fail_bundle_is_covered() -> None:
    fails = {p.name for p in CONFORMANCE.iterdir() if p.name.endswith("_fail")}
    covered = {c[0] for c in test_conformance_failing_bundles.pytestmark[0].args[1]}  # type: ignore[attr-defined]
    assert fails == covered


# --- manifest signature --------------------------------------------------------------------------


def test_manifest_signature(
    anchor_key: ec.EllipticCurvePrivateKey, manifest: bytes, submitted: ExpectedEntry
) -> None:
    digest = hashlib.sha256(manifest).digest()
    verify_manifest_signature(submitted.public_key, digest, submitted.signature)
    verify_manifest_signature(_der(anchor_key.public_key()), digest, submitted.signature)
    # A signature over the message (not prehashed) is the same thing for ECDSA/SHA-256.
    verify_manifest_signature(
        submitted.public_key, digest, anchor_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    )
    with pytest.raises(VerificationError, match="does not verify"):
        verify_manifest_signature(
            submitted.public_key, hashlib.sha256(manifest + b" ").digest(), submitted.signature
        )
    with pytest.raises(VerificationError, match="does not verify"):
        verify_manifest_signature(submitted.public_key, digest, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    with pytest.raises(VerificationError, match="P-256"):
        verify_manifest_signature(
            _pem(ed25519.Ed25519PrivateKey.generate().public_key()), digest, submitted.signature
        )
    with pytest.raises(VerificationError, match="32 bytes"):
        verify_manifest_signature(submitted.public_key, manifest, submitted.signature)


# --- cross-check with sigstore-python --------------------------------------------------------------


def _sigstore_keyring(ders: list[bytes]) -> Any:
    details = {
        "secp256r1": "PKIX_ECDSA_P256_SHA_256",
        "secp384r1": "PKIX_ECDSA_P384_SHA_384",
    }
    keys = []
    for der in ders:
        pub = serialization.load_der_public_key(der)
        if isinstance(pub, ec.EllipticCurvePublicKey):
            kd = details[pub.curve.name]
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            kd = "PKIX_ED25519"
        else:
            kd = "PKIX_RSA_PKCS1V15_2048_SHA256"
        keys.append(
            common_v1.PublicKey.model_validate(
                {
                    "rawBytes": base64.b64encode(der).decode(),
                    "keyDetails": common_v1.PublicKeyDetails[kd],
                }
            )
        )
    return Keyring(keys)


def test_sigstore_python_accepts_the_staging_vector() -> None:
    keyring = _sigstore_keyring([_staging_key().der])
    TransparencyLogEntry._from_v1_response(_staging_response())._verify(keyring)
    # And from the stored form of our receipt.
    stored = verify_receipt(_staging_response(), _staging_key())
    TransparencyLogEntry._from_v1_response(stored.to_v1_response())._verify(keyring)


def test_sigstore_python_accepts_our_fake_log(fake_log: FakeLog, fake_resp: dict[str, Any]) -> None:
    """Keeps the synthetic log honest: an independent verifier accepts what it makes."""
    TransparencyLogEntry._from_v1_response(fake_resp)._verify(_sigstore_keyring([fake_log.der]))


def test_sigstore_python_rejects_what_we_reject() -> None:
    keyring = _sigstore_keyring([_staging_key().der])
    resp = copy.deepcopy(_staging_response())
    e = _entry(resp)
    e["verification"]["signedEntryTimestamp"] = _flip_b64(e["verification"]["signedEntryTimestamp"])
    with pytest.raises(SigstoreVerificationError):
        TransparencyLogEntry._from_v1_response(resp)._verify(keyring)
    resp = copy.deepcopy(_staging_response())
    _entry(resp)["verification"]["inclusionProof"]["hashes"][0] = "00" * 32
    with pytest.raises(SigstoreVerificationError):
        TransparencyLogEntry._from_v1_response(resp)._verify(keyring)


def test_verification_code_imports_no_network_client() -> None:
    """An auditor runs shared.verify offline: it must not pull in an HTTP client or adapter."""
    code = (
        "import sys, shared.verify, shared.merkle\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aiokafka', 'asyncpg', 'hvac', 'requests', 'httpx', 'urllib3'} "
        "or m in {'shared.rekor', 'shared.settings'}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60
    )
