"""Dependency restarts during a stream of appends, on the real local stack.

Each test runs a stream of 20,000 appends into a private lane (its own database, topics and
consumer groups; ingest, a signer and an anchorer as separate processes): 10,000 from HTTP
clients (each request with its own request id, retried with the same id until acknowledged)
and 10,000 from a Kafka producer (each send retried until the broker acknowledges it). Once
a fifth of the stream is stored, one dependency fails:

* Kafka: ``kill -9`` of the broker, started again on the same data directory and port;
* PostgreSQL: restarted (fast shutdown: every open connection is cut);
* OpenBao: restarted, which brings it back *sealed*; the signer must pause (its metric
  ``ledger_stage_paused`` is 1, or ``ledger_dependency_up{dependency="vault"}`` is 0), its ``/health`` must
  say ``vault``: ``sealed``, and it must go on after the stored key share unseals it;
* Rekor: rekor-server and both Trillian programs restarted.

Afterwards (:func:`benchmarks.faults.invariants`): every acknowledged request has exactly one
row, every row is in exactly one anchored batch, every entry has its ``ledger.anchored``
event (at-least-once: after a crash the anchorer may publish an entry's event again, and every
copy must be byte-identical), Rekor grew by exactly the number of batches, nothing was dead-lettered, ``ledger audit
--online`` is clean (it verifies every batch's receipt against the pinned Rekor key and
Rekor itself), and every stage still runs and stops cleanly on SIGTERM.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults import StreamPlan, run_stream
from benchmarks.harness import Bench
from deploy.local.stack import Stack
from shared.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLAN = StreamPlan(http=10_000, kafka=10_000, rate=300)
#: the fault comes once a fifth of the stream is stored: the rest flows through it
AT_ROWS = 4_000


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "fault", ["kafka_kill", "postgres_restart", "openbao_restart", "rekor_restart"]
)
async def test_a_dependency_restart_loses_and_duplicates_nothing(
    stack: Stack, settings: Settings, tmp_path: Path, fault: str
) -> None:
    bench = Bench(stack=stack, settings=settings, run_dir=tmp_path, progress=lambda _m: None)
    result = await run_stream(bench, PLAN, [(AT_ROWS, fault)])

    table = result["table"]
    assert table["problems"] == [], table
    assert table["acknowledged"] == PLAN.http + PLAN.kafka
    assert table["rows"] == table["anchored"] == table["events"] == table["acknowledged"]
    assert table["duplicates"] == 0 and table["dead_letters"] == 0
    assert table["rekor_growth"] == table["batches"] >= 1
    assert table["audit"] == "clean"
    (tried,) = result["faults"]
    assert tried["fault"] == fault
    if fault == "openbao_restart":
        assert tried["paused_while_sealed"] == ["signer-1"]
        assert tried["health_vault_state"] == {"signer-1": "sealed"}
