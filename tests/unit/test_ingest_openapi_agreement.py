"""The OpenAPI document and the server's validators agree on hand-picked edge cases.

Each case is run through the request schema of ``openapi.json`` (JSON Schema 2020-12, with
formats, as schemathesis validates it) and through the server's own validator (``parse_append``, the ``GET /entries`` query
parser, the path checks): both must accept or both must reject. A schema-valid request the
server refuses is what a fuzzer reports as a "schema-valid rejection"; a case the other way
round is a document that promises less than the server checks.

The document states the default limits (LEDGER_MAX_PAYLOAD_BYTES, LEDGER_MAX_META_DEPTH); the
tests here use the same defaults.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema_rs
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import MultiDict

from services.ingest import OPENAPI_PATH
from services.ingest.reads import PAYLOAD_HASH_PATTERN, EntryReads, _entry_filter
from services.ingest.store import CURSOR_PATTERN, Cursor, decode_cursor, encode_cursor
from services.ingest.validation import MetaSchema, RequestRejected, parse_append
from shared.settings import Settings

pytestmark = pytest.mark.unit

DOC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
DEFAULTS = Settings()
SHA = "ab" * 32
SAFE = 2**53 - 1


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    # the schema with the document's components beside it, so that its $refs resolve;
    # jsonschema_rs (what schemathesis validates with) follows ECMA-262 regular expressions,
    # where ``$`` does not match before a final newline, as JSON Schema prescribes
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": DOC["components"]}, validate_formats=True
    )


BODY = _validator({"$ref": "#/components/schemas/AppendBody"})


def _param(path: str, name: str) -> jsonschema_rs.Validator:
    (param,) = [p for p in DOC["paths"][path]["get"]["parameters"] if p["name"] == name]
    return _validator(param["schema"])


def server_accepts_body(body: Any) -> bool:
    try:
        parse_append(
            json.dumps(body).encode(),
            max_payload_bytes=DEFAULTS.max_payload_bytes,
            max_meta_bytes=DEFAULTS.max_meta_bytes,
            max_meta_depth=DEFAULTS.max_meta_depth,
            meta_schema=MetaSchema(None),
        )
    except RequestRejected:
        return False
    return True


def nested(depth: int) -> dict[str, Any]:
    """A meta of exactly ``depth`` levels of objects and arrays, alternating."""
    value: Any = "leaf"
    for level in range(depth, 1, -1):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (what the case is, the body); each must get the same verdict from both sides
BODY_CASES: list[tuple[str, Any]] = [
    ("payload", {"subject": "a", "payload": b64(b"x")}),
    ("payload_sha256", {"subject": "a", "payload_sha256": SHA}),
    ("upper-case hash", {"subject": "a", "payload_sha256": SHA.upper()}),
    ("payload and payload_sha256", {"subject": "a", "payload": b64(b"x"), "payload_sha256": SHA}),
    ("neither", {"subject": "a"}),
    ("no subject", {"payload_sha256": SHA}),
    ("empty subject", {"subject": "", "payload_sha256": SHA}),
    ("subject of 256", {"subject": "s" * 256, "payload_sha256": SHA}),
    ("subject of 257", {"subject": "s" * 257, "payload_sha256": SHA}),
    ("subject with a final newline", {"subject": "abc\n", "payload_sha256": SHA}),
    ("subject starting with a dot", {"subject": ".a", "payload_sha256": SHA}),
    ("subject with a non-ASCII letter", {"subject": "caf\u00e9", "payload_sha256": SHA}),
    ("subject of every allowed sign", {"subject": "a._:/@+=-z", "payload_sha256": SHA}),
    ("subject not a string", {"subject": 5, "payload_sha256": SHA}),
    ("hash with a final newline", {"subject": "a", "payload_sha256": SHA + "\n"}),
    ("hash of 63", {"subject": "a", "payload_sha256": SHA[:63]}),
    ("hash of 65", {"subject": "a", "payload_sha256": SHA + "a"}),
    ("hash not hex", {"subject": "a", "payload_sha256": "g" * 64}),
    ("empty payload", {"subject": "a", "payload": ""}),
    ("payload of one byte", {"subject": "a", "payload": "AA=="}),
    ("payload, non-zero padding bits", {"subject": "a", "payload": "AB=="}),
    ("payload without padding", {"subject": "a", "payload": "AA"}),
    ("payload, one character", {"subject": "a", "payload": "A"}),
    ("payload with a space", {"subject": "a", "payload": "AAAA AAAA"}),
    ("payload in base64url", {"subject": "a", "payload": "-_-_"}),
    ("payload, padding inside", {"subject": "a", "payload": "AA==AAAA"}),
    ("payload not a string", {"subject": "a", "payload": 12}),
    ("request_id", {"subject": "a", "payload_sha256": SHA, "request_id": "r-1:x.y_z"}),
    ("request_id of 128", {"subject": "a", "payload_sha256": SHA, "request_id": "r" * 128}),
    ("request_id of 129", {"subject": "a", "payload_sha256": SHA, "request_id": "r" * 129}),
    ("request_id with a newline", {"subject": "a", "payload_sha256": SHA, "request_id": "r\n"}),
    ("request_id with a slash", {"subject": "a", "payload_sha256": SHA, "request_id": "r/1"}),
    ("unknown field", {"subject": "a", "payload_sha256": SHA, "extra": 1}),
    ("meta", {"subject": "a", "payload_sha256": SHA, "meta": {"n": 1, "s": "x", "l": [1, None]}}),
    ("meta not an object", {"subject": "a", "payload_sha256": SHA, "meta": [1]}),
    ("meta, largest safe integer", {"subject": "a", "payload_sha256": SHA, "meta": {"n": SAFE}}),
    ("meta, smallest safe integer", {"subject": "a", "payload_sha256": SHA, "meta": {"n": -SAFE}}),
    ("meta, integer 2^53", {"subject": "a", "payload_sha256": SHA, "meta": {"n": SAFE + 1}}),
    ("meta, integer -2^53", {"subject": "a", "payload_sha256": SHA, "meta": {"n": -SAFE - 1}}),
    ("meta, float 1e300", {"subject": "a", "payload_sha256": SHA, "meta": {"x": 1e300}}),
    ("meta, float -2^53", {"subject": "a", "payload_sha256": SHA, "meta": {"x": -2.0**53}}),
    ("meta, float within", {"subject": "a", "payload_sha256": SHA, "meta": {"x": 0.5e-300}}),
    ("meta, boolean", {"subject": "a", "payload_sha256": SHA, "meta": {"x": True}}),
    ("meta, deep integer 2^60", {"subject": "a", "payload_sha256": SHA,
                                 "meta": {"a": [{"b": 2**60}]}}),
    ("meta, U+0000 in a value", {"subject": "a", "payload_sha256": SHA, "meta": {"k": "a\x00"}}),
    ("meta, U+0000 in a key", {"subject": "a", "payload_sha256": SHA, "meta": {"\x00": 1}}),
    ("meta, U+0000 deep down", {"subject": "a", "payload_sha256": SHA,
                                "meta": {"a": [[{"b": ["\x00"]}]]}}),
    ("meta at the depth limit", {"subject": "a", "payload_sha256": SHA,
                                 "meta": nested(DEFAULTS.max_meta_depth)}),
    ("meta beyond the depth limit", {"subject": "a", "payload_sha256": SHA,
                                     "meta": nested(DEFAULTS.max_meta_depth + 1)}),
    ("meta, empty containers at the limit", {
        "subject": "a", "payload_sha256": SHA,
        "meta": {"a": [[[[[[[]]]]]]]}}),
    ("meta, empty containers beyond it", {
        "subject": "a", "payload_sha256": SHA,
        "meta": {"a": [[[[[[[{}]]]]]]]}}),
    ("meta, unicode", {"subject": "a", "payload_sha256": SHA, "meta": {"\u00e9": "\U0001f600"}}),
    ("body not an object", ["subject", "a"]),
]

# The document is stricter than the server here, deliberately: the server tolerates these
# for compatibility, and no client can learn to rely on them from the document.
SPEC_STRICTER: list[tuple[str, Any]] = [
    ("null payload_sha256 beside a payload", {"subject": "a", "payload": "AA==",
                                              "payload_sha256": None}),
    ("null meta", {"subject": "a", "payload_sha256": SHA, "meta": None}),
    ("null request_id", {"subject": "a", "payload_sha256": SHA, "request_id": None}),
]


@pytest.mark.parametrize(("what", "body"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_append_body_the_spec_and_the_server_agree(what, body):
    spec_valid = BODY.is_valid(body)
    server = server_accepts_body(body)
    assert spec_valid == server, (
        f"{what}: the document says {'valid' if spec_valid else 'invalid'}, "
        f"the server {'accepts' if server else 'refuses'}"
    )


def test_the_cases_hold_both_verdicts():
    verdicts = {BODY.is_valid(body) for _, body in BODY_CASES}
    assert verdicts == {True, False}


@pytest.mark.parametrize(("what", "body"), SPEC_STRICTER, ids=[c[0] for c in SPEC_STRICTER])
def test_where_the_spec_is_stricter_the_server_accepts(what, body):
    assert not BODY.is_valid(body), what
    assert server_accepts_body(body), what


def test_the_largest_payload_the_spec_allows_is_within_the_server_limit():
    schema = DOC["components"]["schemas"]["AppendBody"]["properties"]["payload"]
    longest = "A" * schema["maxLength"]
    assert BODY.is_valid({"subject": "a", "payload": longest})
    assert server_accepts_body({"subject": "a", "payload": longest})
    assert len(base64.b64decode(longest)) <= DEFAULTS.max_payload_bytes


def test_the_meta_schema_spells_out_the_default_depth():
    schemas = DOC["components"]["schemas"]
    levels = sorted(int(name.removeprefix("MetaValue")) for name in schemas
                    if name.startswith("MetaValue"))
    assert levels == list(range(2, DEFAULTS.max_meta_depth + 1))


def test_patterns_in_the_document_match_the_server():
    schemas = DOC["components"]["schemas"]
    body = schemas["AppendBody"]["properties"]
    params = {p["name"]: p["schema"] for p in DOC["paths"]["/entries"]["get"]["parameters"]}
    assert params["cursor"]["pattern"] == CURSOR_PATTERN
    assert schemas["EntryPage"]["properties"]["next_cursor"]["pattern"] == CURSOR_PATTERN
    assert params["subject"]["pattern"] == body["subject"]["pattern"]
    assert params["payload_hash"]["pattern"] == PAYLOAD_HASH_PATTERN
    (header,) = [p for p in DOC["paths"]["/append"]["post"]["parameters"]
                 if p["name"] == "Idempotency-Key"]
    assert header["schema"]["pattern"] == body["request_id"]["pattern"]


# --- GET /entries ------------------------------------------------------------------------------


def test_entries_are_listed_newest_first_unless_asked_otherwise():
    params = {p["name"]: p["schema"] for p in DOC["paths"]["/entries"]["get"]["parameters"]}
    assert params["order"]["default"] == _entry_filter(MultiDict({})).order == "desc"
    assert _entry_filter(MultiDict({"order": "asc"})).order == "asc"


def server_accepts_query(query: dict[str, str]) -> bool:
    try:
        _entry_filter(MultiDict(query))
    except RequestRejected:
        return False
    return True


def spec_accepts_query(query: dict[str, str]) -> bool:
    for name, value in query.items():
        schema = _param("/entries", name)
        typed: Any = int(value) if name == "limit" and re.fullmatch(r"-?\d+", value) else value
        if not schema.is_valid(typed):
            return False
    return True


A_CURSOR = encode_cursor(Cursor(created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                                id=uuid.UUID(int=7)))

QUERY_CASES: list[tuple[str, dict[str, str]]] = [
    ("nothing", {}),
    ("a cursor the server made", {"cursor": A_CURSOR}),
    ("any 32 characters of base64url", {"cursor": "_" * 32}),
    ("the cursor of the end of time", {"cursor": "f" * 32}),
    ("the cursor of the start of time", {"cursor": "g" + "A" * 31}),
    ("an empty cursor", {"cursor": ""}),
    ("a cursor of 31", {"cursor": "A" * 31}),
    ("a cursor of 33", {"cursor": "A" * 33}),
    ("a cursor with padding", {"cursor": "A" * 30 + "=="}),
    ("a cursor in standard base64", {"cursor": "+" * 32}),
    ("a cursor with a final newline", {"cursor": "A" * 32 + "\n"}),
    ("a subject", {"subject": "orders/1"}),
    ("a subject with U+0000", {"subject": "a\x00"}),
    ("a subject with a space", {"subject": "a b"}),
    ("an empty subject", {"subject": ""}),
    ("from", {"from": "2026-01-01T00:00:00Z"}),
    ("from with an offset and nanoseconds", {"from": "2026-01-01T00:00:00.123456789+05:30"}),
    ("from at year 1, ahead of UTC", {"from": "0001-01-01T00:00:00+23:59"}),
    ("to at year 9999, behind UTC", {"to": "9999-12-31T23:59:59-23:59"}),
    ("from without a zone", {"from": "2026-01-01T00:00:00"}),
    ("from, a date", {"from": "2026-01-01"}),
    ("to, words", {"to": "yesterday"}),
    ("limit 1", {"limit": "1"}),
    ("limit 1000", {"limit": "1000"}),
    ("limit 0", {"limit": "0"}),
    ("limit 1001", {"limit": "1001"}),
    ("order desc", {"order": "desc"}),
    ("order sideways", {"order": "sideways"}),
    ("anchored true", {"anchored": "true"}),
    ("anchored yes", {"anchored": "yes"}),
    ("a payload hash", {"payload_hash": SHA}),
    ("a payload hash in upper case", {"payload_hash": SHA.upper()}),
    ("a payload hash of 63", {"payload_hash": SHA[:63]}),
    ("a payload hash of 65", {"payload_hash": SHA + "a"}),
    ("a payload hash that is not hex", {"payload_hash": "g" * 64}),
    ("a payload hash with a final newline", {"payload_hash": SHA + "\n"}),
    ("an empty payload hash", {"payload_hash": ""}),
    ("a payload hash with a page", {"payload_hash": SHA, "limit": "1", "cursor": A_CURSOR,
                                    "order": "desc"}),
]


@pytest.mark.parametrize(("what", "query"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_list_query_the_spec_and_the_server_agree(what, query):
    spec_valid = spec_accepts_query(query)
    server = server_accepts_query(query)
    assert spec_valid == server, (
        f"{what}: the document says {'valid' if spec_valid else 'invalid'}, "
        f"the server {'accepts' if server else 'refuses'}"
    )


@pytest.mark.parametrize("stamp", [
    "2016-12-31T23:59:60Z",  # a leap second: RFC 3339 has them, datetime does not
    "2016-12-31t23:59:60.5z",
    "0000-01-01T00:00:00Z",  # year 0 is RFC 3339 too
])
def test_the_server_reads_rfc3339_beyond_what_datetime_holds(stamp):
    assert server_accepts_query({"from": stamp})


def test_a_payload_hash_is_looked_up_in_lower_case():
    assert _entry_filter(MultiDict({"payload_hash": SHA.upper()})).payload_hash == SHA
    assert _entry_filter(MultiDict({})).payload_hash is None


def test_a_cursor_round_trips_and_fits_either_order():
    cursor = decode_cursor(A_CURSOR)
    assert encode_cursor(cursor) == A_CURSOR
    for order in ("asc", "desc"):
        assert server_accepts_query({"cursor": A_CURSOR, "order": order})


class _NoEntries:
    async def get_by_request_id(self, request_id: str) -> None:
        return None


@pytest.mark.parametrize("request_id", ["r-1", "r\n", "r" * 128, "r" * 129, ".r", "r:1.2_3",
                                        "r/1", "r\x00"])
async def test_by_request_path_the_spec_and_the_server_agree(request_id):
    (param,) = DOC["paths"]["/entries/by-request/{request_id}"]["get"]["parameters"]
    spec_valid = _validator(param["schema"]).is_valid(request_id)
    reads = EntryReads(_NoEntries(), None)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/entries/by-request/x",
                                  match_info={"request_id": request_id})
    try:
        response = await reads.get_entry_by_request(request)
    except RequestRejected:
        server = False
    else:
        assert response.status == 404
        server = True
    assert spec_valid == server, request_id
