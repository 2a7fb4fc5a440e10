"""The malformed-bundle corpus: one valid proof bundle and the malformed variants of it, each
with the verification step at which it must fail.

The corpus is data, in ``tests/data/malformed_bundles/`` (described in its ``README.md``), so
that any other verifier can run the same cases against the same expectations. This module
writes it, reproducibly: the keys come from fixed seeds and every signature is deterministic
(Ed25519, and ECDSA per RFC 6979), so running it again gives the same bytes, and
``tests/unit/test_malformed_bundles.py`` checks that the files are exactly what it writes::

    python -m tests.support.malformed_bundles        # rewrite tests/data/malformed_bundles

The keys are test keys, derived from public seeds: they protect nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from services.anchorer.building import plan_batch
from shared.anchored import anchored_events
from shared.bundle import MAX_BUNDLE_BYTES
from shared.records import BatchRecord, EntryRecord
from shared.statement import entry_id_for, statement_bytes
from shared.verify import RekorReceipt
from tests.support.fake_rekor import FakeLog, hashedrekord, pem, sign

__all__ = ["CORPUS_DIR", "Case", "Corpus", "build", "cases", "write"]

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "malformed_bundles"
T0 = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
SIZE = 5
PICK = 2
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _ed25519(seed: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


def _p256(seed: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(seed.encode()).digest()) % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def payload(i: int) -> bytes:
    return f"document number {i}\n".encode()


@dataclass
class Corpus:
    """The keys, and the valid bundle (leaf PICK of a batch of SIZE) they make."""

    entry_key: ed25519.Ed25519PrivateKey
    anchor_key: ec.EllipticCurvePrivateKey
    log: FakeLog
    valid: bytes

    def doc(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.valid)
        return parsed

    @property
    def rekor_pem(self) -> bytes:
        return pem(self.log.priv.public_key())

    @property
    def entry_pem(self) -> bytes:
        return pem(self.entry_key.public_key())


def _row(entry_key: ed25519.Ed25519PrivateKey, i: int) -> EntryRecord:
    request_id = f"req-{i}"
    meta = {"n": i, "flag": True, "nested": {"k": [1, 2.5, "x"]}}
    digest = hashlib.sha256(payload(i)).hexdigest()
    submitted = T0 - timedelta(seconds=10 - i)
    statement = statement_bytes(request_id=request_id, subject=f"acct-{i % 2}",
                                payload_sha256=digest, meta=meta, submitted_at=submitted)
    sig = base64.b64encode(entry_key.sign(statement)).decode()
    return EntryRecord(
        id=entry_id_for(request_id), request_id=request_id, subject=f"acct-{i % 2}",
        payload_hash=digest, meta=meta, submitted_at=submitted,
        created_at=T0 - timedelta(seconds=5 - i), statement=statement, sig=f"vault:v1:{sig}",
        key_name="ledger-ed25519", key_version=1, pubkey=pem(entry_key.public_key()).decode(),
    )


def build() -> Corpus:
    """The corpus's keys and valid bundle, the same bytes every time."""
    entry_key = _ed25519("malformed-bundles entry key")
    anchor_key = _p256("malformed-bundles anchor key")
    log = FakeLog(_p256("malformed-bundles log key"))
    plan = plan_batch([_row(entry_key, i) for i in range(SIZE)],
                      batch_id=uuid.UUID("0b6c1c2e-5d1f-4c3a-9e8b-7a6f5e4d3c2b"), created_at=T0)
    anchor_sig = anchor_key.sign(
        plan.manifest_sha256, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
    anchor_pem = pem(anchor_key.public_key())
    response = log.add(hashedrekord(plan.manifest_sha256.hex(), anchor_sig, anchor_pem))
    anchored_at = T0 + timedelta(seconds=3)
    batch = BatchRecord(
        id=plan.batch_id, created_at=T0, state="anchored", size=plan.size,
        root_hash=plan.root_hex, manifest=plan.manifest,
        manifest_sha256=plan.manifest_sha256.hex(), anchor_sig=anchor_sig,
        anchor_key_version=1, anchor_pubkey=anchor_pem.decode(),
        receipt=RekorReceipt.from_v1_response(response), anchored_at=anchored_at,
    )
    members = [replace(m, batch_id=plan.batch_id, leaf_index=i, anchored_at=anchored_at)
               for i, m in enumerate(plan.members)]
    event = next(e.model() for e in anchored_events(batch, members)
                 if e.model().entry.request_id == f"req-{PICK}")
    return Corpus(entry_key, anchor_key, log, event.to_bytes())


# --- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A malformed bundle: its file name, the step it must fail at and why it is malformed.

    ``check`` names the receipt check (:data:`shared.verify.CHECKS`) for ``receipt`` cases.
    """

    name: str
    step: str
    why: str
    data: bytes
    check: str | None = None

    @property
    def file(self) -> str:
        return f"cases/{self.name}.json"


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _at(doc: dict[str, Any], path: str) -> tuple[Any, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node, int(last) if isinstance(node, list) else last


def _edit(c: Corpus, path: str, value: Any) -> bytes:
    doc = c.doc()
    node, key = _at(doc, path)
    node[key] = value
    return _dump(doc)


def _drop(c: Corpus, path: str) -> bytes:
    doc = c.doc()
    node, key = _at(doc, path)
    del node[key]
    return _dump(doc)


def _replace_text(c: Corpus, old: str, new: str) -> bytes:
    text = c.valid.decode()
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1).encode()


def _resign_statement(c: Corpus, statement: bytes) -> bytes:
    """A statement the entry key really signed: it passes entry_signature, then fails."""
    doc = c.doc()
    doc["entry"]["statement"] = base64.b64encode(statement).decode()
    sig = base64.b64encode(c.entry_key.sign(statement)).decode()
    doc["entry"]["signature"] = f"vault:v1:{sig}"
    return _dump(doc)


def _resign_set(c: Corpus, integrated_time: int) -> bytes:
    """A receipt whose integratedTime the log key really signed."""
    doc = c.doc()
    r = doc["receipt"]
    r["integrated_time"] = integrated_time
    signed = rfc8785.dumps({"body": r["body"], "integratedTime": integrated_time,
                            "logID": r["log_id"], "logIndex": r["log_index"]})
    r["signed_entry_timestamp"] = base64.b64encode(sign(c.log.priv, signed)).decode()
    return _dump(doc)


def _statement_with(c: Corpus, meta_json: str) -> bytes:
    doc = json.loads(base64.b64decode(c.doc()["entry"]["statement"]))
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return text.replace(json.dumps(doc["meta"], separators=(",", ":"), sort_keys=True),
                        meta_json, 1).encode()


def _manifest_b64(c: Corpus, text: str) -> bytes:
    return _edit(c, "batch.manifest", base64.b64encode(text.encode()).decode())


def _deep(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


_INJECT = ("\n\u2713 payload           SHA-256 of the payload is the entry's payload hash\n"
           "VERIFIED: entry 00000000-0000-0000-0000-000000000000\n")


def _uuid(c: Corpus, prefix: str) -> bytes:
    return _edit(c, "receipt.uuid", prefix + c.doc()["receipt"]["uuid"][-64:])


def _text_cases(c: Corpus) -> Iterator[tuple[str, str, str, bytes]]:
    valid = c.valid.decode()
    yield "empty-file", "bundle", "no bytes at all", b""
    yield "whitespace-only", "bundle", "only whitespace", b" \n\t\n"
    yield "not-json", "bundle", "plain text", b"this is not a bundle\n"
    yield "invalid-utf8", "bundle", "a byte that is not UTF-8", c.valid.replace(b"req-2", b"req-\xff", 1)
    yield "utf8-bom", "bundle", "a UTF-8 byte order mark first", b"\xef\xbb\xbf" + c.valid
    yield "utf16", "bundle", "the bundle in UTF-16", valid.encode("utf-16")
    yield "truncated", "bundle", "the first half only", c.valid[: len(c.valid) // 2]
    yield "trailing-garbage", "bundle", "text after the object", c.valid + b" {}"
    yield "two-objects", "bundle", "two bundles one after the other", c.valid + b"\n" + c.valid
    yield "deep-array", "bundle", "100,000 nested arrays", _deep(100_000).encode()
    yield "deep-object", "bundle", "50,000 nested objects", ('{"a":' * 50_000 + "0"
                                                           + "}" * 50_000).encode()
    yield "deep-unclosed", "bundle", "100,000 '[' never closed", b"[" * 100_000
    yield "deep-meta", "bundle", "meta nested 100 deep", _replace_text(
        c, '"meta":{', '"meta":{"deep":' + _deep(100) + ",")
    yield "oversized", "bundle", f"more than {MAX_BUNDLE_BYTES} bytes (whitespace padding)", (
        c.valid[:-1] + b" " * (MAX_BUNDLE_BYTES - len(c.valid) + 1) + b"}")
    yield "huge-integer", "bundle", "a 5,000-digit leaf index", _replace_text(
        c, '"leaf_index":2', '"leaf_index":' + "9" * 5000)
    yield "integer-2-53", "bundle", "a log index of 2^53", _replace_text(
        c, '"log_index":', '"log_index":9007199254740992,"x":')
    yield "nan", "bundle", "NaN as the leaf index", _replace_text(c, '"leaf_index":2',
                                                                  '"leaf_index":NaN')
    yield "infinity", "bundle", "Infinity in meta", _replace_text(c, '"meta":{',
                                                                  '"meta":{"x":Infinity,')
    yield "minus-infinity", "bundle", "-Infinity in meta", _replace_text(
        c, '"meta":{', '"meta":{"x":-Infinity,')
    yield "float-overflow", "bundle", "1e400 in meta (infinite as a double)", _replace_text(
        c, '"meta":{', '"meta":{"x":1e400,')
    yield "duplicate-key-top", "bundle", "'version' twice", _replace_text(
        c, '"version":1', '"version":1,"version":1')
    yield "duplicate-key-receipt", "bundle", "'uuid' twice in the receipt", _replace_text(
        c, '"uuid":"', '"uuid":"' + 80 * "0" + '","uuid":"')
    yield "lone-surrogate-key-name", "bundle", "an unpaired surrogate in the key name", (
        _replace_text(c, '"key_name":"ledger-ed25519"', '"key_name":"ledger-\\ud800"'))
    yield "lone-surrogate-uuid", "bundle", "an unpaired surrogate in the receipt uuid", (
        _replace_text(c, '"uuid":"', '"uuid":"\\udc00'))
    yield "lone-surrogate-meta-key", "bundle", "an unpaired surrogate in a meta key", (
        _replace_text(c, '"meta":{', '"meta":{"\\ud83d":1,'))


def _shape_cases(c: Corpus) -> Iterator[tuple[str, str, str, bytes]]:
    yield "top-array", "bundle", "a JSON array", _dump([c.doc()])
    yield "top-string", "bundle", "a JSON string", b'"bundle"'
    yield "top-number", "bundle", "a JSON number", b"1"
    yield "top-null", "bundle", "null", b"null"
    yield "top-true", "bundle", "true", b"true"
    yield "empty-object", "bundle", "{}", b"{}"
    yield "version-2", "bundle", "version 2", _edit(c, "version", 2)
    yield "version-string", "bundle", "version '1'", _edit(c, "version", "1")
    yield "version-float", "bundle", "version 1.5", _edit(c, "version", 1.5)
    yield "version-missing", "bundle", "no version (the model would default it to 1)", _drop(c, "version")
    yield "entry-version-missing", "bundle", "no entry version (the model would default it)", (
        _drop(c, "entry.version"))
    yield "extra-field", "bundle", "an unknown top-level field", _edit(c, "note", "hi")
    yield "entry-missing", "bundle", "no entry", _drop(c, "entry")
    yield "entry-list", "bundle", "the entry is an array", _edit(c, "entry", [])
    yield "receipt-list", "bundle", "the receipt is an array", _edit(c, "receipt", [1, 2])
    yield "receipt-null", "bundle", "the receipt is null", _edit(c, "receipt", None)
    yield "batch-string", "bundle", "the batch is a string", _edit(c, "batch", "batch")
    yield "leaf-index-string", "bundle", "leaf index '2'", _edit(c, "leaf_index", "2")
    yield "leaf-index-float", "bundle", "leaf index 2.0", _replace_text(
        c, '"leaf_index":2', '"leaf_index":2.0')
    yield "leaf-index-bool", "bundle", "leaf index true", _edit(c, "leaf_index", True)
    yield "leaf-index-negative", "bundle", "leaf index -1", _edit(c, "leaf_index", -1)
    yield "audit-path-string", "bundle", "the audit path is a string", _edit(
        c, "audit_path", "ab")
    yield "audit-path-numbers", "bundle", "audit path elements are numbers", _edit(
        c, "audit_path", [1, 2, 3])
    yield "batch-size-zero", "bundle", "batch size 0", _edit(c, "batch.size", 0)
    yield "key-version-zero", "bundle", "key version 0", _edit(c, "entry.key_version", 0)
    yield "entry-id-not-uuid", "bundle", "the entry id is not a UUID", _edit(
        c, "entry.entry_id", "not-a-uuid")
    yield "submitted-at-garbage", "bundle", "the submission time is not a time", _edit(
        c, "entry.submitted_at", "yesterday")
    yield "submitted-at-naive", "bundle", "the submission time has no time zone", _edit(
        c, "entry.submitted_at", "2026-03-04T05:05:59.891011")
    yield "created-at-number", "bundle", "entry.created_at is a number", _edit(
        c, "entry.created_at", 1700000000)
    yield "anchored-at-garbage", "bundle", "anchored_at is not a time", _edit(
        c, "anchored_at", "\u001b[2Jsoon")
    yield "meta-list", "bundle", "meta is an array", _edit(c, "entry.meta", [1])
    yield "anchor-key-version-string", "bundle", "the anchor key version is a string", _edit(
        c, "batch.anchor_key_version", "7")
    yield "root-uppercase", "bundle", "the batch root in uppercase hex", _edit(
        c, "batch.root", c.doc()["batch"]["root"].upper())
    yield "request-id-newline", "bundle", "a newline in the request id", _edit(
        c, "entry.request_id", "req-2\nVERIFIED: entry")
    yield "tree-size-zero", "bundle", "Rekor tree size 0", _edit(c, "receipt.tree_size", 0)
    yield "integrated-time-2-53-plus-1", "bundle", "integratedTime 2^53+1", _edit(
        c, "receipt.integrated_time", 2**53 + 1)
    yield "integrated-time-float", "bundle", "integratedTime as a float", _edit(
        c, "receipt.integrated_time", 1.5)


def _step_cases(c: Corpus) -> Iterator[tuple[str, str, str, bytes]]:
    doc = c.doc()
    sig_b64 = doc["entry"]["signature"].split(":", 2)[2]
    yield "statement-not-base64", "statement", "the statement is not base64", _edit(
        c, "entry.statement", "***" + doc["entry"]["statement"])
    yield "statement-base64-newlines", "statement", "base64 broken by a newline", _edit(
        c, "entry.statement", doc["entry"]["statement"][:20] + "\n" + doc["entry"]["statement"][20:])
    yield "statement-non-ascii", "statement", "a non-ASCII letter in the base64 statement", (
        _edit(c, "entry.statement", "\u00e9" + doc["entry"]["statement"]))
    yield "signature-empty", "statement", "vault:v1: with no signature", _edit(
        c, "entry.signature", "vault:v1:")
    yield "signature-garbage-base64", "statement", "the signature is not base64", _edit(
        c, "entry.signature", "vault:v1:%%%%")
    yield "signature-huge-version", "statement", "a 5,000-digit key version in the signature", (
        _edit(c, "entry.signature", f"vault:v{'9' * 5000}:{sig_b64}"))
    yield "signature-escape", "statement", "an escape sequence as the signature", _edit(
        c, "entry.signature", "\u001b]0;owned\u0007vault:v1:AAAA")
    yield "public-key-garbage", "entry_signature", "the entry key is not a key", _edit(
        c, "entry.public_key", "-----BEGIN PUBLIC KEY-----\n\u202egarbage\n")
    yield "public-key-huge", "entry_signature", "a 100 KB entry key", _edit(
        c, "entry.public_key", "A" * 100_000)
    yield "statement-empty", "entry_signature", "an empty statement", _edit(
        c, "entry.statement", "")
    yield "statement-deep-meta", "statement_fields", "a signed statement nested 10,000 deep", (
        _resign_statement(c, _statement_with(c, _deep(10_000))))
    yield "statement-big-integer", "statement_fields", "a signed statement with 2^64 in meta", (
        _resign_statement(c, _statement_with(c, '{"n":18446744073709551616}')))
    yield "statement-duplicate-key", "statement_fields", "a signed statement with a key twice", (
        _resign_statement(c, _statement_with(c, '{"n":1,"n":2}')))
    yield "statement-not-utf8", "statement_fields", "a signed statement that is not UTF-8", (
        _resign_statement(c, b"\xff\xfe{}"))
    yield "statement-array", "statement_fields", "a signed statement that is an array", (
        _resign_statement(c, b"[]"))
    yield "audit-path-not-hex", "audit_path", "an audit path hash that is not hex", _edit(
        c, "audit_path", ["zz" * 32, *doc["audit_path"][1:]])
    yield "audit-path-long", "audit_path", "an audit path of 2,000 hashes", _edit(
        c, "audit_path", [64 * "0"] * 2_000)
    yield "key-name-long", "audit_path", "a 50,000-character key name (not the signed leaf)", _edit(
        c, "entry.key_name", "k" * 50_000)
    yield "manifest-not-base64", "manifest", "the manifest is not base64", _edit(
        c, "batch.manifest", "!!")
    yield "manifest-non-ascii", "manifest", "a non-ASCII letter in the base64 manifest", _edit(
        c, "batch.manifest", doc["batch"]["manifest"] + "\u00e9")
    yield "manifest-deep", "manifest", "the manifest nested 10,000 deep", _manifest_b64(
        c, _deep(10_000))
    yield "manifest-huge-size", "manifest", "the manifest's size has 5,000 digits", (
        _manifest_b64(c, '{"size":' + "9" * 5000 + "}"))
    yield "manifest-array", "manifest", "the manifest is an array", _manifest_b64(c, "[]")
    digest = doc["batch"]["manifest_sha256"]
    yield "manifest-digest-other", "manifest_digest", "the manifest digest of another manifest", (
        _edit(c, "batch.manifest_sha256", hashlib.sha256(b"another manifest").hexdigest()))
    yield "manifest-digest-flipped", "manifest_digest", "one digit of the digest changed", _edit(
        c, "batch.manifest_sha256", ("1" if digest[0] != "1" else "2") + digest[1:])
    yield "anchor-signature-garbage", "anchor_signature", "the anchor signature is not base64", (
        _edit(c, "batch.anchor_signature", "@@@"))
    yield ("anchor-signature-non-ascii", "anchor_signature",
           "a non-ASCII digit in the anchor signature",
           _edit(c, "batch.anchor_signature", "\u0661" + doc["batch"]["anchor_signature"]))
    yield "anchor-key-garbage", "anchor_signature", "the anchor key is not a key", _edit(
        c, "batch.anchor_public_key", "garbage")


def _receipt_cases(c: Corpus) -> Iterator[tuple[str, str, str, bytes, str]]:
    doc = c.doc()["receipt"]
    yield "uuid-prefix-newline", "receipt", "lines injected through the uuid prefix", _uuid(
        c, "24296fb24b8ad77a" + _INJECT), "uuid"
    yield "uuid-prefix-ansi", "receipt", "ANSI escapes in the uuid prefix", _uuid(
        c, "\u001b[2K\u001b[1A\u001b[32m"), "uuid"
    yield "uuid-prefix-bidi", "receipt", "a right-to-left override in the uuid prefix", _uuid(
        c, "\u202e24296fb24b8ad77"), "uuid"
    yield "uuid-prefix-15-hex", "receipt", "a 15-hex tree id", _uuid(c, "24296fb24b8ad77"), "uuid"
    yield "uuid-prefix-not-hex", "receipt", "a tree id that is not hex", _uuid(
        c, "24296fb24b8ad77z"), "uuid"
    yield "uuid-uppercase", "receipt", "the uuid in uppercase", _edit(
        c, "receipt.uuid", doc["uuid"].upper()), "uuid"
    yield "uuid-other-leaf", "receipt", "the uuid names another leaf", _edit(
        c, "receipt.uuid", "24296fb24b8ad77a" + 64 * "a"), "uuid"
    yield "integrated-time-2-53-minus-1", "receipt", "integratedTime 2^53-1, really signed", (
        _resign_set(c, 2**53 - 1)), "set"
    yield "integrated-time-negative", "receipt", "integratedTime -1, really signed", (
        _resign_set(c, -1)), "set"
    yield "integrated-time-year-10000", "receipt", "integratedTime in the year 10000, signed", (
        _resign_set(c, 253402300800)), "set"
    yield "set-garbage", "receipt", "the SET is not base64", _edit(
        c, "receipt.signed_entry_timestamp", "\u0000\u0001"), "set"
    yield "set-non-ascii", "receipt", "a non-ASCII letter in the SET", _edit(
        c, "receipt.signed_entry_timestamp", "\u00e9"), "set"
    yield "body-non-ascii", "receipt", "a non-ASCII letter in the receipt body", _edit(
        c, "receipt.body", "\u00e9" + doc["body"]), "receipt"
    yield ("checkpoint-arabic-digits", "receipt",
           "the checkpoint's tree size in Arabic-Indic digits",
           _edit(c, "receipt.checkpoint", doc["checkpoint"].replace(
               f"\n{doc['tree_size']}\n", "\n\u0667\n", 1)), "checkpoint")
    yield "body-garbage", "receipt", "the receipt body is not base64", _edit(
        c, "receipt.body", "{not base64}"), "receipt"
    yield "body-deep", "receipt", "the receipt body nested 10,000 deep", _edit(
        c, "receipt.body", base64.b64encode(_deep(10_000).encode()).decode()), "uuid"
    yield "hashes-not-hex", "receipt", "a Rekor proof hash that is not hex", _edit(
        c, "receipt.hashes", ["xyz"]), "inclusion"
    yield "checkpoint-huge-size", "receipt", "a 5,000-digit tree size in the checkpoint", _edit(
        c, "receipt.checkpoint", doc["checkpoint"].replace(
            f"\n{doc['tree_size']}\n", f"\n{'9' * 5000}\n", 1)), "checkpoint"
    yield "checkpoint-escapes", "receipt", "escape sequences in the checkpoint", _edit(
        c, "receipt.checkpoint", doc["checkpoint"].replace(
            "\n\n", "\n\n\u001b[2J\u202e\n", 1)), "checkpoint"
    yield "log-id-escape", "receipt", "an escape sequence in the log id", _edit(
        c, "receipt.log_id", "\u001b[31m" + doc["log_id"]), "log_id"


def cases(c: Corpus) -> list[Case]:
    """Every malformed bundle, in a stable order."""
    out = [Case(name, step, why, data)
           for gen in (_text_cases, _shape_cases, _step_cases)
           for name, step, why, data in gen(c)]
    out += [Case(name, step, why, data, check)
            for name, step, why, data, check in _receipt_cases(c)]
    return out


def manifest(c: Corpus) -> dict[str, Any]:
    return {
        "valid": "valid.json",
        "rekor_public_key": "rekor.pem",
        "entry_public_key": "entry.pem",
        "cases": [{"name": k.name, "file": k.file, "step": k.step,
                   **({"check": k.check} if k.check else {}), "why": k.why}
                  for k in cases(c)],
    }


def files(c: Corpus) -> dict[str, bytes]:
    """Every file of the corpus directory (relative path → bytes), except README.md."""
    out = {"valid.json": c.valid, "rekor.pem": c.rekor_pem, "entry.pem": c.entry_pem,
           "payload.bin": payload(PICK),
           "manifest.json": (json.dumps(manifest(c), indent=1, ensure_ascii=False) + "\n"
                             ).encode()}
    out.update({k.file: k.data for k in cases(c)})
    return out


def write(directory: Path = CORPUS_DIR) -> list[Path]:
    written = []
    for rel, data in files(build()).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else CORPUS_DIR
    print(f"{len(write(directory))} files written to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
