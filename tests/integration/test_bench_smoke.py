"""The benchmark harness, tiny: every scenario runs (stages as processes, vegeta, /proc
accounting, exactly-once checks) and the report is written. No timing is asserted here;
``make bench`` is where the figures come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report, scenarios
from benchmarks.harness import Bench
from deploy.local.stack import Stack
from shared.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(900)
async def test_the_smoke_profile_runs_every_scenario_and_reports(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    bench = Bench(stack=stack, settings=settings, run_dir=tmp_path / "run",
                  progress=lambda _m: None)
    bench.run_dir.mkdir()
    results = await scenarios.run_all(bench, scenarios.SMOKE)
    results["command"] = "smoke test"
    written = report.write(results, tmp_path / "out")

    # every scenario of the profile ran (the profile sizes backlog, 2+2 and the previous
    # release at zero) and the pipeline delivered exactly once in each
    skipped = {"backlog_drain", "kafka_e2e_2x", "previous_release"}
    assert set(results) >= {n for n in scenarios.NAMES if n not in skipped}
    e2e = results["kafka_e2e"]
    assert e2e["exactly_once"]["rows"] == e2e["entries"] == scenarios.SMOKE.kafka_entries
    assert e2e["exactly_once"]["events"] == e2e["entries"]
    assert e2e["exactly_once"]["rekor_growth"] == e2e["exactly_once"]["batches"] >= 1
    for mode in ("http_async", "http_wait", "http_bulk"):
        steps = results[mode]["steps"]
        assert steps and all(s["errors"] == 0 for s in steps), (mode, steps)
        assert results[mode]["exactly_once"]["rows"] == sum(s["entries"] for s in steps)
        assert sum(s["published"] for s in steps) == sum(s["entries"] for s in steps)
    # what the secured links cost: the Kafka path on this stack and on a second one with
    # plain links, in turns, both delivered exactly once
    links = results["secured_links"]
    assert links["order"] == ["secured", "plain"]
    assert links["links"]["secured"]["kafka"] == "SSL" and links["links"]["secured"][
        "postgres_tls"]
    assert links["links"]["plain"] == {"kafka": "PLAINTEXT", "postgres_tls": False,
                                       "openbao_tls": False}
    for run in links["runs"]:
        assert run["exactly_once"]["rows"] == run["exactly_once"]["events"] == run["entries"]
        assert run["cpu_s"]["kafka"] > 0 and run["cpu_s"]["signer"] > 0
    assert links["ratio_secured_over_plain"]["entries_per_s"] > 0
    # CPU was read per process, the stages and every engine
    assert {"signer", "anchorer", "kafka", "postgres", "openbao", "trillian"} <= set(
        e2e["cpu_s"])
    assert e2e["cpu_s"]["signer"] > 0 and e2e["cpu_s"]["postgres"] > 0

    md, results_json, *pictures = written
    doc = json.loads(results_json.read_text())
    for key in ("kafka_e2e_entries_per_s", "cpu_us_per_entry_total", "cpu_us_per_entry",
                "http_async_p99_ms", "http_wait_p99_ms", "http_async_max_req_per_s",
                "runbook_design_max_req_per_s", "ratio_vs_runbook_design",
                "time_to_anchored_p99_ms", "peak_rss_mb", "secured_links_ratio_entries_per_s",
                "secured_links_ratio_cpu_us_per_entry_total"):
        assert doc[key] not in (None, {}, []), key
    assert set(doc["cpu_us_per_entry"]) >= {"signer", "anchorer", "kafka", "postgres"}
    assert set(doc["peak_rss_mb"]) >= {"signer", "anchorer", "ingest"}
    assert doc["http_async_p99_ms"] == {"50": pytest.approx(
        results["http_async"]["steps"][0]["p99_ms"])}
    text = md.read_text()
    for heading in ("## Targets", "## The Kafka path", "## What the secured links cost",
                    "## How to size a deployment"):
        assert heading in text
    assert {p.name for p in pictures} == {"throughput-vs-batch.png", "latency-vs-rate.png",
                                          "cpu-per-entry.png"}
    for picture in pictures:
        assert picture.read_bytes().startswith(PNG_MAGIC)
        assert f"benchmarks/{picture.name}" in text
