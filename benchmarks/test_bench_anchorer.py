"""Anchorer over a backlog of signed entries: batches of up to 1000 vs one Rekor entry per
ledger entry (N=1), against raw sequential Rekor ``hashedrekord`` submissions.

1. Baseline: ``REKOR_BASELINE`` sequential ``hashedrekord`` submissions straight to the
   stack's Rekor (fresh random digests, a local ECDSA P-256 key): submissions/s.
2. Batch mode: N signed entries (produced, then signed by the in-process signer, which is
   then stopped) anchored by the in-process anchorer with batch max 1000.
3. N=1 mode: ``N1`` signed entries, batch max 1, on a second private lane.

Rekor entries per ledger entry come from the log's growth (``GET /api/v1/log`` treeSize
before and after each phase; nothing else writes to the stack's Rekor meanwhile).
Entries/s is measured from the anchorer's start to the last entry anchored (the start is
reported apart: database time from the first batch row to the last ``anchored_at``).

Correctness asserted: every entry is in exactly one anchored batch, one Rekor entry per
batch, and ``ledger.anchored`` carries every entry id.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from benchmarks.harness import (
    Lane,
    ResultsFile,
    private_lane,
    ratio,
    read_topic,
    report,
    running,
    wait_for,
)
from deploy.local.stack import Stack
from services.anchorer import run_anchorer
from services.signer import run_signer
from shared.kafka import make_producer
from shared.messages import AnchoredEntry, AppendRequest
from shared.rekor import RekorClient
from shared.settings import Settings

pytestmark = [pytest.mark.bench, pytest.mark.integration]

N = 3000
BATCH_MAX = 1000
N1 = 200
REKOR_BASELINE = 50
PARTITIONS = 4


async def tree_size(settings: Settings) -> int:
    async with RekorClient(settings.rekor_server_url, timeout_s=20) as rekor:
        return (await rekor.get_log_info()).tree_size


async def raw_rekor_rate(settings: Settings, n: int) -> tuple[float, int]:
    """Sequential hashedrekord submissions/s, and how much the log grew."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    digests = [hashlib.sha256(os.urandom(32)).digest() for _ in range(n)]
    signatures = [key.sign(d, ec.ECDSA(Prehashed(hashes.SHA256()))) for d in digests]
    before = await tree_size(settings)
    async with RekorClient(settings.rekor_server_url, timeout_s=20) as rekor:
        t0 = time.perf_counter()
        for digest, signature in zip(digests, signatures, strict=True):
            await rekor.create_hashedrekord(digest.hex(), signature, pem)
        seconds = time.perf_counter() - t0
    return n / seconds, await tree_size(settings) - before


async def signed_backlog(lane: Lane, n: int) -> None:
    """Publish ``n`` append requests and run the signer until all are stored, then stop it."""
    s = lane.settings
    now = datetime.now(UTC)
    reqs = [
        AppendRequest(
            request_id=lane.rid(i), subject=f"acct-{i % 17}",
            payload_sha256=hashlib.sha256(f"{lane.prefix}/{i}".encode()).hexdigest(),
            meta={"n": i, "source": "bench"}, submitted_at=now,
        )
        for i in range(n)
    ]
    producer = await make_producer(s, client_id=f"{lane.prefix}-bench")
    try:
        for start in range(0, n, 1000):
            await producer.send_many(
                (s.topic_append, r.subject, r.to_bytes(), None) for r in reqs[start : start + 1000])
    finally:
        await producer.close()

    async def signed() -> bool:
        return await lane.count("SELECT count(*) FROM ledger.entries") >= n

    async with running(run_signer, s, "signer"):
        await wait_for(signed, within=600, what=f"{n} signed entries", every=0.2)
    assert await lane.count("SELECT count(*) FROM ledger.entries") == n


async def anchor(lane: Lane, n: int, *, batch_max: int, batch_ms: int) -> dict[str, Any]:
    """Run the anchorer over the signed backlog until every entry is anchored; check it."""
    s = lane.settings.model_copy(update={"anchor_batch_max": batch_max,
                                         "anchor_batch_ms": batch_ms})
    size_before = await tree_size(s)

    async def anchored() -> bool:
        return await lane.count(
            "SELECT count(*) FROM ledger.entries WHERE anchored_at IS NOT NULL") >= n

    async with running(run_anchorer, s, "anchorer") as metrics:
        started = time.monotonic()
        done_at = await wait_for(anchored, within=900, what=f"{n} anchored entries", every=0.1)
        ids = {r["id"] for r in await lane.db.fetch("SELECT id FROM ledger.entries")}

        def all_events(recs: list[Any]) -> bool:
            return {AnchoredEntry.model_validate_json(x.value).entry.entry_id
                    for x in recs} >= ids

        events = await read_topic(s, s.topic_anchored, within=120, until=all_events)
        anchored_metric = metrics.registry.get_sample_value("ledger_entries_anchored_total")
    growth = await tree_size(s) - size_before

    # --- correctness: each entry in exactly one anchored batch, one Rekor entry per batch ---
    rows = await lane.db.fetch(
        "SELECT id, batch_id, leaf_index, anchored_at FROM ledger.entries")
    assert len(rows) == n
    assert all(r["batch_id"] is not None and r["anchored_at"] is not None for r in rows)
    batches = await lane.db.fetch("SELECT id, state, size, rekor_uuid FROM ledger.batches")
    assert all(b["state"] == "anchored" for b in batches)
    members: dict[Any, list[int]] = {}
    for r in rows:
        members.setdefault(r["batch_id"], []).append(r["leaf_index"])
    assert set(members) == {b["id"] for b in batches}
    for b in batches:
        assert sorted(members[b["id"]]) == list(range(b["size"])), "leaf indexes 0..size-1"
    assert len({b["rekor_uuid"] for b in batches}) == len(batches)
    assert growth == len(batches), (growth, len(batches))
    event_ids = {AnchoredEntry.model_validate_json(e.value).entry.entry_id for e in events}
    assert event_ids == {r["id"] for r in rows}
    assert anchored_metric == n, anchored_metric

    span = await lane.db.fetchval(
        "SELECT extract(epoch FROM max(e.anchored_at) - min(b.created_at))"
        " FROM ledger.entries e, ledger.batches b")
    seconds = done_at - started
    return {
        "n": n, "batch_max": batch_max, "batch_ms": batch_ms,
        "seconds": seconds, "per_s": n / seconds,
        "db_span_s": float(span), "per_s_db_span": n / float(span) if span else None,
        "batches": len(batches), "rekor_entries": growth,
        "rekor_entries_per_entry": growth / n,
        "anchored_events": len(events),
    }


@pytest.mark.timeout(1500)
async def test_bench_anchorer(stack: Stack, settings: Settings,
                              results: ResultsFile) -> None:
    async with (
        private_lane(stack, settings, partitions=PARTITIONS) as big,
        private_lane(stack, settings, partitions=PARTITIONS) as one,
    ):
        await signed_backlog(big, N)
        await signed_backlog(one, N1)
        raw_before, raw_growth_1 = await raw_rekor_rate(settings, REKOR_BASELINE)
        batched = await anchor(big, N, batch_max=BATCH_MAX, batch_ms=2000)
        n1 = await anchor(one, N1, batch_max=1, batch_ms=0)
        raw_after, raw_growth_2 = await raw_rekor_rate(settings, REKOR_BASELINE)
    assert raw_growth_1 == raw_growth_2 == REKOR_BASELINE

    raw = statistics.mean([raw_before, raw_after])
    rows = [
        (f"raw Rekor hashedrekord, sequential x{REKOR_BASELINE} (baseline, mean)", raw, 1.0,
         1.0, "-"),
        ("  before / after", f"{raw_before:.1f} / {raw_after:.1f}", "", "", ""),
        (f"anchorer, batch max {BATCH_MAX}, {N} entries", batched["per_s"],
         ratio(batched["per_s"], raw), batched["rekor_entries_per_entry"],
         batched["batches"]),
        (f"anchorer, N=1, {N1} entries", n1["per_s"], ratio(n1["per_s"], raw),
         n1["rekor_entries_per_entry"], n1["batches"]),
    ]
    report(
        results, "anchorer", "anchorer over a signed backlog (entries/s)",
        header_row=("what", "entries/s", "/ raw Rekor", "Rekor entries per entry", "batches"),
        rows=rows,
        summary={
            "rekor_raw_per_s": raw, "rekor_raw_per_s_before": raw_before,
            "rekor_raw_per_s_after": raw_after, "rekor_raw_n": REKOR_BASELINE,
            "batched": batched, "n1": n1,
            "batched_vs_raw": ratio(batched["per_s"], raw), "n1_vs_raw": ratio(n1["per_s"], raw),
        },
    )
