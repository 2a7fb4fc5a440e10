"""Signer over a backlog, against the raw Kafka produce rate and the raw Vault batch rate.

1. Baseline: produce N append requests with ``acks=all`` (a plain idempotent producer
   configured like the project's) to a private topic: produce rate. That is the backlog.
2. Baseline: raw Vault Transit ``batch_input`` signing of N statements, 200 per call,
   sequential (``TransitSigner.sign_batch``, which also verifies each signature locally,
   as the signer does). Measured before and after the signer run; the mean is the baseline.
3. The signer (in-process, real wiring) over the backlog: entries/s from its first stored
   row to its last (the consumer-group join is reported apart).

Correctness asserted: every request stored exactly once, and ``ledger.signed`` carries every
entry id.
"""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.harness import (
    Lane,
    ResultsFile,
    header,
    metric_total,
    private_lane,
    ratio,
    read_topic,
    report,
    running,
    wait_for,
)
from deploy.local.stack import Stack
from services.signer import run_signer
from shared.messages import AppendRequest
from shared.settings import Settings
from shared.statement import entry_id_for, statement_bytes
from shared.vault import BATCH_MAX, TransitSigner

pytestmark = [pytest.mark.bench, pytest.mark.integration]

N = 3000
PARTITIONS = 4


def requests(lane: Lane, n: int) -> list[AppendRequest]:
    now = datetime.now(UTC)
    return [
        AppendRequest(
            request_id=lane.rid(i),
            subject=f"acct/{i % 13}",
            payload_sha256=hashlib.sha256(f"{lane.prefix}/{i}".encode()).hexdigest(),
            meta={"source": "bench", "n": i},
            submitted_at=now,
        )
        for i in range(n)
    ]


async def produce(settings: Settings, topic: str, reqs: list[AppendRequest]) -> float:
    """Send every request (pipelined) and wait for every ack; return the seconds it took."""
    values = [(r.subject.encode(), r.to_bytes()) for r in reqs]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
        enable_idempotence=True, linger_ms=5, max_batch_size=1024 * 1024,
        request_timeout_ms=30_000,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        for fut in futures:
            await fut
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def vault_rate(settings: Settings, statements: list[bytes]) -> float:
    """Signatures/s of sequential ``batch_input`` calls of ``BATCH_MAX`` statements."""
    vault = TransitSigner(settings)
    try:
        await vault.sign_batch(settings.vault_transit_key, statements[:1])  # key cache, pool
        t0 = time.perf_counter()
        for i in range(0, len(statements), BATCH_MAX):
            sigs = await vault.sign_batch(settings.vault_transit_key,
                                          statements[i : i + BATCH_MAX])
            assert len(sigs) == len(statements[i : i + BATCH_MAX])
        return len(statements) / (time.perf_counter() - t0)
    finally:
        await vault.close()


@pytest.mark.timeout(900)
async def test_bench_signer_backlog(stack: Stack, settings: Settings,
                                    results: ResultsFile) -> None:
    async with private_lane(stack, settings, partitions=PARTITIONS) as lane:
        s = lane.settings
        reqs = requests(lane, N)
        statements = [
            statement_bytes(request_id=f"vault-{uuid.uuid4().hex}", subject=r.subject,
                            payload_sha256=r.payload_sha256, meta=r.meta,
                            submitted_at=r.submitted_at)
            for r in reqs
        ]

        vault_before = await vault_rate(s, statements)
        produce_s = await produce(s, s.topic_append, reqs)
        produce_rate = N / produce_s

        async def rows() -> int:
            return await lane.count("SELECT count(*) FROM ledger.entries")

        async def any_row() -> bool:
            return await rows() > 0

        async def all_rows() -> bool:
            return await rows() >= N

        async with running(run_signer, s, "signer") as metrics:
            started = time.monotonic()
            first_at = await wait_for(any_row, within=120, what="a first signed row")
            first_rows = await rows()
            done_at = await wait_for(all_rows, within=600, what=f"{N} signed rows")
            # every event published (offsets are committed after it; rows come before it)
            expected_ids = {str(entry_id_for(r.request_id)).encode() for r in reqs}
            signed = await read_topic(
                s, s.topic_signed, within=120,
                until=lambda recs: {header(x, "entry_id") for x in recs} >= expected_ids)
            vault_calls = metrics.registry.get_sample_value("ledger_vault_batch_size_count")
            # where the signer's time goes: consumed batches vs the Vault calls inside them
            batch_s = metric_total(metrics, "ledger_stage_batch_seconds_sum")
            batches = metric_total(metrics, "ledger_stage_batch_seconds_count")
            vault_s = metric_total(metrics, "ledger_vault_request_seconds_sum")
            new = metrics.registry.get_sample_value("ledger_entries_signed_total",
                                                    {"outcome": "new"})

        vault_after = await vault_rate(s, statements)

        # --- correctness: every request stored exactly once, every entry published ---------
        stored = await lane.db.fetch(
            "SELECT request_id, count(*) AS n FROM ledger.entries GROUP BY request_id")
        assert len(stored) == N and all(r["n"] == 1 for r in stored)
        assert {r["request_id"] for r in stored} == {r.request_id for r in reqs}
        published = {header(rec, "entry_id") for rec in signed}
        assert published == expected_ids
        assert new == N, new
        dlq = await read_topic(s, s.topic_append + ".dlq")
        assert not dlq, f"{len(dlq)} requests dead-lettered"

    total_rate = N / (done_at - started)
    # from the first stored row (the group join is not signing time) to the last
    steady_rate = (N - first_rows) / (done_at - first_at) if done_at > first_at else total_rate
    vault = statistics.mean([vault_before, vault_after])
    rows_out = [
        ("Kafka produce, acks=all (baseline)", produce_rate, 1.0, ratio(produce_rate, vault)),
        ("Vault batch_input 200/call (baseline, mean)", vault, ratio(vault, produce_rate), 1.0),
        ("  before / after the signer run", f"{vault_before:.0f} / {vault_after:.0f}", "", ""),
        ("signer, first row to last", steady_rate, ratio(steady_rate, produce_rate),
         ratio(steady_rate, vault)),
        ("signer, incl. group join", total_rate, ratio(total_rate, produce_rate),
         ratio(total_rate, vault)),
        ("  Vault time / batch time in the signer", f"{vault_s:.2f}s / {batch_s:.2f}s "
         f"({batches:.0f} batches)", "", ""),
    ]
    report(
        results, "signer", f"signer over a backlog of {N} (entries/s)",
        header_row=("what", "per s", "/ produce", "/ vault"), rows=rows_out,
        summary={
            "n": N, "partitions": PARTITIONS,
            "produce_per_s": produce_rate,
            "vault_per_s_before": vault_before, "vault_per_s_after": vault_after,
            "vault_per_s": vault,
            "signer_per_s": steady_rate, "signer_per_s_incl_join": total_rate,
            "group_join_s": first_at - started,
            "signer_vs_vault": ratio(steady_rate, vault),
            "signer_vs_produce": ratio(steady_rate, produce_rate),
            "vault_calls": vault_calls, "entries_per_vault_call": ratio(N, vault_calls or 0),
            "signed_events": len(signed),
            "consumed_batches": batches, "consumed_batch_seconds": batch_s,
            "vault_sign_seconds_in_signer": vault_s,
            "vault_share_of_batch_time": ratio(vault_s, batch_s),
            "signing_window_s": done_at - first_at,
        },
    )
