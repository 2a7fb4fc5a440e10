"""The anchorer's reading of ``ledger.signed``: the entry id, and every way a record is unusable."""

from __future__ import annotations

import json
import uuid

import pytest

from services.anchorer.app import decode_signed
from shared.errors import InvalidMessage
from shared.kafka import Record

pytestmark = pytest.mark.unit


def _record(value: bytes | None) -> Record:
    return Record(topic="ledger.signed", partition=0, offset=0, key=b"k", value=value,
                  headers=(), timestamp_ms=0)


def test_the_entry_id_is_all_that_is_read() -> None:
    entry_id = uuid.uuid4()
    # the rest of the event is the database's business, not the anchorer's
    value = json.dumps({"version": 1, "entry_id": str(entry_id), "subject": 5}).encode()
    assert decode_signed(_record(value)) == entry_id


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty message"),
        (b"\xff", "not JSON"),
        (b"{", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({"version": 2, "entry_id": str(uuid.uuid4())}).encode(),
         "unsupported version"),
        (json.dumps({"version": 1}).encode(), "invalid fields"),
        (json.dumps({"version": 1, "entry_id": "not-a-uuid"}).encode(), "invalid fields"),
        (json.dumps({"version": 1, "entry_id": 7}).encode(), "invalid fields"),
    ],
)
def test_an_unusable_record_is_refused_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_signed(_record(value))
    assert info.value.reason == reason
