"""Message contracts: decoding turns every problem into InvalidMessage; schemas stay in sync."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from shared.errors import InvalidMessage
from shared.messages import AppendRequest, SignedEntry, decode, schema_documents, write_schemas

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "version": 1,
    "request_id": "order-42",
    "subject": "order:42",
    "payload_sha256": "ab" * 32,
    "meta": {"source": "billing", "n": [1, 2]},
    "submitted_at": "2026-11-28T12:00:00Z",
}


def test_a_good_append_request_decodes() -> None:
    msg = decode(AppendRequest, json.dumps(GOOD).encode())
    assert msg.request_id == "order-42"
    assert msg.submitted_at == datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert decode(AppendRequest, msg.to_bytes()) == msg  # round trip


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (None, "empty message", "no value"),
        (b"\xff\xfe", "not JSON", ""),
        (b"{not json", "not JSON", ""),
        (b"[1, 2]", "not a JSON object", "list"),
        (json.dumps({**GOOD, "version": 2}).encode(), "unsupported version", "version=2"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "version"}).encode(),
         "unsupported version", "None"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "subject"}).encode(),
         "invalid fields", "subject"),
        (json.dumps({**GOOD, "payload_sha256": "AB" * 32}).encode(), "invalid fields",
         "payload_sha256"),
        (json.dumps({**GOOD, "payload_sha256": "ab" * 31}).encode(), "invalid fields",
         "payload_sha256"),
        (json.dumps({**GOOD, "subject": "bad subject"}).encode(), "invalid fields", "subject"),
        (json.dumps({**GOOD, "meta": [1]}).encode(), "invalid fields", "meta"),
        (json.dumps({**GOOD, "submitted_at": "2026-11-28T12:00:00"}).encode(),
         "invalid fields", "time zone"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "invalid fields", "extra"),
    ],
)
def test_every_bad_message_is_an_invalid_message_with_a_reason(
    raw: bytes | None, reason: str, detail: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(AppendRequest, raw)
    assert info.value.reason == reason
    assert detail in info.value.detail


def test_the_schemas_in_the_repository_are_up_to_date(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert {p.name for p in written} == {p.name for p in (REPO / "schemas").glob("*.json")}
    for path in written:
        committed = (REPO / "schemas" / path.name).read_text()
        assert committed == path.read_text(), f"schemas/{path.name} is stale: run `ledger schemas`"


def test_the_published_schema_accepts_what_the_model_accepts_and_refuses_the_rest() -> None:
    schema = schema_documents()["ledger.append.v1.schema.json"]
    jsonschema.validate(GOOD, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "payload_sha256": "zz"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "version": 2}, schema)


def test_signed_entry_refuses_a_key_version_below_one() -> None:
    with pytest.raises(InvalidMessage, match="key_version"):
        decode(SignedEntry, json.dumps({
            "version": 1, "entry_id": "6a2563cc-9a04-5c34-877d-917817354243",
            "request_id": "r", "subject": "s", "payload_sha256": "ab" * 32, "meta": {},
            "submitted_at": "2026-11-28T12:00:00Z", "created_at": "2026-11-28T12:00:00Z",
            "statement": "", "signature": "vault:v1:AA==", "key_name": "k", "key_version": 0,
            "public_key": "",
        }).encode())
