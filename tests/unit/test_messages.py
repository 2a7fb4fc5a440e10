"""Message contracts: decoding turns every problem into InvalidMessage; schemas stay in sync."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import fastjson
from shared.errors import InvalidMessage
from shared.messages import (
    AppendRequest,
    SignedEntry,
    append_request_fields,
    decode,
    decode_object,
    schema_documents,
    signed_entry_fields,
    write_schemas,
)

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


def test_a_bad_version_is_named_without_echoing_what_the_producer_put_there() -> None:
    secret = "a payload or a token, 40 characters long"
    with pytest.raises(InvalidMessage) as info:
        decode(AppendRequest, json.dumps({**GOOD, "version": secret}).encode())
    assert info.value.reason == "unsupported version"
    assert secret not in info.value.detail
    assert info.value.detail == "version is a str of 40 characters, not the number 1"
    with pytest.raises(InvalidMessage) as info:
        decode(AppendRequest, json.dumps({**GOOD, "version": "1"}).encode())
    assert info.value.detail == "version='1'"


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


# --- the hot-path serializer agrees with the models ---------------------------------------

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
_TIMES = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7,
                                                                                     minutes=-30))]),
)


@settings(max_examples=300, deadline=None)
@given(meta=st.dictionaries(st.text(max_size=6), _JSON, max_size=5), submitted=_TIMES,
       created=_TIMES, statement=st.binary(max_size=64), version=st.integers(1, 99))
def test_signed_entry_fields_serialize_like_the_model(meta, submitted, created, statement,
                                                      version) -> None:
    fields = signed_entry_fields(
        entry_id=uuid.uuid4(), request_id="r-1", subject="s/1", payload_sha256="ab" * 32,
        meta=meta, submitted_at=submitted, created_at=created, statement=statement,
        signature="vault:v1:AAAA", key_name="ledger-ed25519", key_version=version,
        public_key="-----BEGIN PUBLIC KEY-----\nX\n-----END PUBLIC KEY-----\n",
    )
    assert fastjson.dumps(fields) == SignedEntry.model_validate(fields).model_dump_json().encode()


@settings(max_examples=200, deadline=None)
@given(meta=st.dictionaries(st.text(max_size=6), _JSON, max_size=5), submitted=_TIMES)
def test_append_request_fields_serialize_like_the_model(meta, submitted) -> None:
    fields = append_request_fields(request_id="r-1", subject="s/1", payload_sha256="ab" * 32,
                                   meta=meta, submitted_at=submitted)
    raw = fastjson.dumps(fields)
    assert raw == AppendRequest.model_validate(fields).model_dump_json().encode()
    assert decode(AppendRequest, raw) == AppendRequest.model_validate(fields)


def test_a_message_nested_too_deeply_is_invalid_not_a_crash():
    raw = b'{"version": 1, "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidMessage) as info:
        decode_object(raw)
    assert info.value.reason == "not JSON" and "nested too deeply" in info.value.detail
