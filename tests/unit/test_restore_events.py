"""The checks ``ledger restore`` and ``ledger audit --events-topic`` run on the events of a
lost batch before anything is written: complete, verified, one batch, the root recomputed;
and the rows rebuilt from them are the anchored ones."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.anchored_events import EventBatch, batch_record, check_batch, entry_records
from shared.messages import AnchoredEntry
from tests.unit.test_bundle import SIZE, World, _pem


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def _batch(events: list[AnchoredEntry]) -> EventBatch:
    batch = EventBatch(events[0].batch.batch_id)
    for e in events:
        batch.add(e, e.to_bytes())
    return batch


def test_a_complete_batch_passes_and_rebuilds_the_anchored_rows(world: World) -> None:
    batch = _batch(world.events + world.events[:2])  # the anchorer may emit an entry twice
    assert check_batch(batch, world.log_pem) == []
    assert batch.repeated == 2
    record = batch_record(batch)
    b = world.batch
    assert (record.id, record.created_at, record.size, record.root_hash, record.manifest,
            record.manifest_sha256, record.anchor_sig, record.anchor_pubkey, record.receipt,
            record.state) == (b.id, b.created_at, b.size, b.root_hash, b.manifest,
                              b.manifest_sha256, b.anchor_sig, b.anchor_pubkey, b.receipt,
                              "anchored")
    rows = entry_records(batch)
    assert [r.leaf_index for r in rows] == list(range(SIZE))
    by_id = {e.entry.entry_id: e for e in world.events}
    for row in rows:
        event = by_id[row.id]
        assert row.signed_entry() == event.entry
        assert (row.batch_id, row.rekor_log_id, row.rekor_index) == (
            b.id, b.receipt.uuid if b.receipt else None, b.receipt.log_index if b.receipt
            else None)


def test_a_missing_leaf_is_named(world: World) -> None:
    gone = world.events[1].leaf_index
    problems = check_batch(_batch([e for e in world.events if e.leaf_index != gone]),
                           world.log_pem)
    assert any(f"{SIZE - 1} of its {SIZE} entries" in p and f"leaf {gone}" in p
               for p in problems), problems


def test_a_changed_event_does_not_verify(world: World) -> None:
    doc = json.loads(world.events[0].to_bytes())
    doc["entry"]["meta"] = {"changed": True}
    changed = AnchoredEntry.model_validate(doc)
    problems = check_batch(_batch([changed, *world.events[1:]]), world.log_pem)
    assert any(f"leaf {changed.leaf_index}" in p and "does not verify" in p
               for p in problems), problems


def test_two_different_events_for_one_leaf_are_refused(world: World) -> None:
    doc = json.loads(world.events[0].to_bytes())
    doc["entry"]["meta"] = {"changed": True}
    other = AnchoredEntry.model_validate(doc)
    problems = check_batch(_batch([*world.events, other]), world.log_pem)
    assert any("two different events" in p for p in problems), problems


def test_another_log_key_refuses_every_event(world: World) -> None:
    other = _pem(ec.generate_private_key(ec.SECP256R1()))
    problems = check_batch(_batch(world.events), other)
    assert sum("does not verify" in p for p in problems) == SIZE, problems


def test_the_event_search_needs_online(capsys: pytest.CaptureFixture[str]) -> None:
    from ledger.cli import build_parser  # noqa: PLC0415

    args = build_parser().parse_args(["audit", "--events-topic", "ledger.anchored"])
    assert args.func(args) == 2
    assert "--events-topic needs --online" in capsys.readouterr().err


def test_restore_needs_a_topic() -> None:
    from ledger.cli import build_parser  # noqa: PLC0415

    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore"])
    args = build_parser().parse_args(["restore", "--from-topic", "t", "--batch",
                                      "00000000-0000-0000-0000-000000000001", "--dry-run"])
    assert args.from_topic == "t" and args.dry_run and len(args.batch) == 1
