"""What is signed and hashed: canonical, stable, and sensitive to every field."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.statement import (
    content_sha256,
    entry_id_for,
    format_time,
    leaf_bytes,
    manifest_bytes,
    parse_time,
    statement_bytes,
)

T = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
BASE = {"request_id": "r-1", "subject": "order:1", "payload_sha256": "ab" * 32,
        "meta": {"b": 1, "a": [True, None]}, "submitted_at": T}


def test_statement_is_rfc8785_canonical_json() -> None:
    raw = statement_bytes(**BASE)  # type: ignore[arg-type]
    assert raw == (
        b'{"meta":{"a":[true,null],"b":1},"payload_sha256":"' + b"ab" * 32 + b'",'
        b'"request_id":"r-1","subject":"order:1",'
        b'"submitted_at":"2026-11-28T12:00:00.123456Z","v":1}'
    )
    assert json.loads(raw)["meta"] == {"a": [True, None], "b": 1}


@pytest.mark.parametrize(
    "change",
    [{"request_id": "r-2"}, {"subject": "order:2"}, {"payload_sha256": "cd" * 32},
     {"meta": {"b": 2, "a": [True, None]}}, {"submitted_at": T + timedelta(microseconds=1)}],
)
def test_every_field_changes_the_statement(change: dict[str, object]) -> None:
    assert statement_bytes(**{**BASE, **change}) != statement_bytes(**BASE)  # type: ignore[arg-type]


def test_time_has_one_form_whatever_the_zone() -> None:
    plus_two = T.astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus_two) == format_time(T) == "2026-11-28T12:00:00.123456Z"
    assert parse_time(format_time(T)) == T
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(T.replace(tzinfo=None))


def test_content_hash_ignores_time_and_key_order_but_not_content() -> None:
    a = content_sha256(subject="s", payload_sha256="ab" * 32, meta={"x": 1, "y": 2})
    assert a == content_sha256(subject="s", payload_sha256="ab" * 32, meta={"y": 2, "x": 1})
    assert a != content_sha256(subject="s", payload_sha256="ab" * 32, meta={"x": 1})
    assert a != content_sha256(subject="t", payload_sha256="ab" * 32, meta={"x": 1, "y": 2})


def test_entry_ids_are_stable_uuid5_of_the_request_id() -> None:
    assert entry_id_for("r-1") == entry_id_for("r-1")
    assert entry_id_for("r-1") != entry_id_for("r-2")
    assert entry_id_for("r-1").version == 5
    # fixed forever: changing the namespace would re-key every ledger
    assert str(entry_id_for("r-1")) == str(uuid.uuid5(
        uuid.UUID("6f1c2b1e-0c57-4b7e-9c55-2f3b8f4c1a10"), "r-1"))


def test_leaf_commits_to_id_statement_signature_and_key_version() -> None:
    eid = entry_id_for("r-1")
    base = {"entry_id": eid, "statement": b"s", "signature": "vault:v1:AA==",
            "key_name": "k", "key_version": 1}
    leaf = leaf_bytes(**base)  # type: ignore[arg-type]
    for change in ({"entry_id": entry_id_for("r-2")}, {"statement": b"t"},
                   {"signature": "vault:v1:AB=="}, {"key_name": "j"}, {"key_version": 2}):
        assert leaf_bytes(**{**base, **change}) != leaf  # type: ignore[arg-type]


def test_manifest_names_batch_size_root_and_time() -> None:
    bid = uuid.UUID(int=7)
    doc = json.loads(manifest_bytes(batch_id=bid, size=3, root_hex="00" * 32, created_at=T))
    assert doc == {"v": 1, "type": "signed-ledger/batch", "batch_id": str(bid), "size": 3,
                   "tree": "rfc6962-sha256", "root": "00" * 32,
                   "created_at": "2026-11-28T12:00:00.123456Z"}
