"""The benchmark scenarios. Each returns a JSON-able summary; none asserts a speed.

Every scenario that runs the pipeline checks exactly-once delivery at its end
(:meth:`benchmarks.harness.Lane.check_exactly_once`). CPU is per process tree
(:mod:`benchmarks.procs`): the stages by role (several processes of a role add up), and the
stack's engines: ``kafka``, ``postgres`` (every backend, Trillian's included), ``openbao``,
``rekor``, ``trillian``. Load generators report their own CPU apart; it is never part of
the pipeline's total.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import links
from benchmarks.harness import (
    REPO,
    Bench,
    BenchError,
    Lane,
    Measurement,
    free_port,
    vegeta_attack,
    wait_for,
)
from benchmarks.procs import CpuMeter, peak_rss_mb
from deploy.local.postgres import Postgres
from services.ingest import create_token
from shared.kafka_admin import ensure_topics
from shared.kafka_tls import connection_environment
from shared.settings import Settings
from shared.vault_token import VaultToken

__all__ = ["FULL", "NAMES", "SMOKE", "Profile", "run_all", "run_one"]

#: processes whose CPU is the pipeline's (the stages and the engines they use)
PIPELINE = ("ingest", "signer", "anchorer", "kafka", "postgres", "openbao", "rekor",
            "trillian")
STAGES = ("ingest", "signer", "anchorer")


@dataclass(frozen=True)
class Profile:
    """How big each scenario is. ``FULL`` is ``make bench``; ``SMOKE`` runs in ``make test``."""

    name: str
    warm_up_entries: int = 20_000
    idle_seconds: float = 10.0
    kafka_entries: int = 50_000
    backlog_entries: int = 100_000
    latency_rate: float = 1000.0
    latency_seconds: float = 20.0
    sweep_entries: int = 20_000
    sweep_signer_chunks: Sequence[int] = (50, 100, 200)
    sweep_vault_in_flight: Sequence[int] = (1, 2, 4, 8)
    sweep_anchor_batches: Sequence[int] = (100, 500, 1000, 4000)
    two_of_each: bool = True
    http_seconds: float = 10.0
    #: every one of these runs; then the search rates while each still holds
    http_rates: Sequence[float] = (200, 500, 1000, 1500, 2000)
    http_search_rates: Sequence[float] = (2500, 3000, 4000, 5000, 6000)
    bulk_size: int = 500
    bulk_seconds: float = 5.0
    bulk_rates: Sequence[float] = (10, 20, 30, 40, 60)
    runbook_rates: Sequence[float] = (50, 100, 150, 200, 250, 300, 400)
    trivial_rates: Sequence[float] = (1000, 2000, 3000, 4000, 6000, 8000, 10000)
    vault_signatures: int = 20_000
    pg_rows: int = 50_000
    kafka_messages: int = 50_000
    drain_within_s: float = 900.0
    #: secured_links: rounds of (secured, plain) Kafka paths, after a warm-up of each stack
    links_rounds: int = 4
    links_warm_up_entries: int = 20_000


FULL = Profile("full")
SMOKE = Profile(
    "smoke", warm_up_entries=0, idle_seconds=1, kafka_entries=300, backlog_entries=0,
    latency_rate=100, latency_seconds=2, sweep_entries=200, sweep_signer_chunks=(100,),
    sweep_vault_in_flight=(2,), sweep_anchor_batches=(50,), two_of_each=False,
    http_seconds=1, http_rates=(50,), http_search_rates=(), bulk_size=20, bulk_seconds=1,
    bulk_rates=(2,), runbook_rates=(20,), trivial_rates=(50,), vault_signatures=400,
    pg_rows=1000, kafka_messages=1000, drain_within_s=120, links_rounds=1,
    links_warm_up_entries=0,
)

#: A step "holds" a rate when nothing failed and the answers kept up with the offer.
KEEPS_UP = 0.95


def holds(step: dict[str, Any]) -> bool:
    return bool(step["errors"] == 0
                and step["throughput_per_s"] >= KEEPS_UP * step["offered_per_s"])


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def cpu_summary(m: Measurement, entries: int) -> dict[str, Any]:
    """CPU-seconds and µs per entry by process, the pipeline's total, cores busy."""
    per = {k: v / max(entries, 1) * 1e6 for k, v in m.cpu_s.items()}
    return {
        "wall_s": m.wall_s,
        "cpu_s": dict(m.cpu_s),
        "cpu_us_per_entry": per,
        "cpu_us_per_entry_total": sum(v for k, v in per.items() if k in PIPELINE),
        "cores_busy": m.cores_busy,
    }


def bench_within(entries: int, rate: float) -> float:
    """A generous bound for a run: never a speed goal, only a hang detector."""
    produce_s = entries / rate if rate else 0.0
    return produce_s + 120 + entries / 100


# --- the stack at rest, and the JIT --------------------------------------------------------


async def idle(bench: Bench, profile: Profile) -> dict[str, Any]:
    """What the engines burn doing nothing (a floor under every per-entry figure)."""
    bench.progress(f"idle engines for {profile.idle_seconds:g}s")
    m = Measurement(bench.service_meter())
    m.start()
    await asyncio.sleep(profile.idle_seconds)  # measuring idleness: nothing to wait for
    m.stop()
    return {"seconds": m.wall_s, "cpu_ms_per_s": {k: v / m.wall_s * 1000
                                                  for k, v in m.cpu_s.items()}}


async def warm_up(bench: Bench, profile: Profile) -> dict[str, Any]:
    """Not measured: Kafka's JVM compiles its hot paths during its first minutes of load
    (its C2 compiler alone took 2 of the broker's first 9 CPU-seconds, and each new kind of
    load — bursts, a trickle, HTTP — starts it again); production brokers are long warm."""
    if not profile.warm_up_entries:
        return {}
    burst = await kafka_path(bench, entries=profile.warm_up_entries, label="warm-up, burst")
    trickle = await kafka_path(bench, entries=3000, rate=300, label="warm-up, trickle")
    http = await http_ingest(bench, replace(profile, http_rates=(500,), http_search_rates=(),
                                            http_seconds=8), mode="async")
    return {"burst_entries_per_s": burst["entries_per_s"],
            "trickle_cpu_us_per_entry_total": trickle["cpu_us_per_entry_total"],
            "http_p99_ms": http["steps"][0]["p99_ms"]}


# --- the Kafka path ------------------------------------------------------------------------


async def kafka_path(
    bench: Bench, *, entries: int, rate: float = 0.0, signers: int = 1, anchorers: int = 1,
    backlog_first: bool = False, label: str = "", **changes: Any,
) -> dict[str, Any]:
    """Producers → ``ledger.append`` → signer(s) → anchorer(s) → ``ledger.anchored``.

    ``rate`` 0 produces as fast as the load generator goes (a backlog builds up and drains);
    a rate offers that many entries per second. ``backlog_first`` produces everything before
    the stages start (draining a backlog; peak memory matters there).
    """
    bench.progress(f"kafka path {label}: {entries} entries"
                   + (f" at {rate:g}/s" if rate else "") + (f" {changes}" if changes else ""))
    async with bench.lane(**changes) as lane:
        rekor_before = await bench.rekor_tree_size()
        if backlog_first:
            produced = await (await lane.produce(entries))
            await lane.start_stages(signers, anchorers)
            m = Measurement(lane.meter())
            m.start()
        else:
            await lane.start_stages(signers, anchorers)
            m = Measurement(lane.meter())
            m.start()
            producing = await lane.produce(entries, rate=rate)
        done_at = await lane.wait_anchored(entries, within=bench_within(entries, rate))
        m.stop(at=done_at)
        if not backlog_first:
            produced = await producing
        rss = await lane.stop_stages()
        counts = await lane.check_exactly_once(entries, rekor_before=rekor_before)
        lat = await lane.latencies()
    return {
        "label": label, "entries": entries, "offered_per_s": rate, "signers": signers,
        "anchorers": anchorers, "settings": dict(changes),
        "code": str(bench.code_dir),
        "entries_per_s": entries / m.wall_s,
        **cpu_summary(m, entries),
        "loadgen_cpu_s": produced.get("cpu_s"),
        "peak_rss_mb": rss,
        "time_to_signed_ms": {"p50": lat["s50"], "p99": lat["s99"]},
        "time_to_anchored_ms": {"p50": lat["a50"], "p99": lat["a99"]},
        "exactly_once": counts,
    }


async def sweeps(bench: Bench, profile: Profile) -> dict[str, list[dict[str, Any]]]:
    """One knob at a time, the others at their defaults, each over the same backlog."""
    out: dict[str, list[dict[str, Any]]] = {"signer_chunk": [], "vault_in_flight": [],
                                             "anchor_batch": []}
    for chunk in profile.sweep_signer_chunks:
        out["signer_chunk"].append(await kafka_path(
            bench, entries=profile.sweep_entries, label=f"signer chunk {chunk}",
            signer_batch_max=chunk))
    for in_flight in profile.sweep_vault_in_flight:
        out["vault_in_flight"].append(await kafka_path(
            bench, entries=profile.sweep_entries, label=f"Vault calls in flight {in_flight}",
            signer_vault_in_flight=in_flight))
    for size in profile.sweep_anchor_batches:
        out["anchor_batch"].append(await kafka_path(
            bench, entries=profile.sweep_entries, label=f"anchor batch {size}",
            anchor_batch_max=size))
    return out


@contextlib.contextmanager
def _checkout(ref: str) -> Any:
    """A worktree of ``ref`` (the stages' code of another release), removed afterwards."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    path = REPO / ".bench" / f"ref-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), sha], cwd=REPO,
                       check=True, capture_output=True)
    try:
        yield path, sha
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO,
                       check=False, capture_output=True)


async def previous_release(bench: Bench, profile: Profile, ref: str) -> dict[str, Any]:
    """The Kafka path with the stages of ``ref``, then with this checkout's, on one private
    stack with plain links (same load, same checks): stages older than the secured links
    cannot connect to the normal stack (mutual TLS, ACLs), and like is compared with like."""
    with _checkout(ref) as (path, sha):
        async with links.plain_bench(bench, "release-stack") as plain:
            await _warm_up(plain, profile, "release stack")
            result = await kafka_path(replace(plain, code_dir=path),
                                      entries=profile.kafka_entries, label=f"release {sha}")
            current = await kafka_path(plain, entries=profile.kafka_entries,
                                       label="this release, same stack")
    return {**result, "ref": sha, "links": "plain", "this_release_same_stack": current}


async def _warm_up(bench: Bench, profile: Profile, what: str) -> None:
    """Not measured: a fresh Kafka JVM compiles its hot paths first (see :func:`warm_up`)."""
    if profile.links_warm_up_entries:
        await kafka_path(bench, entries=profile.links_warm_up_entries, label=f"warm-up, {what}")


async def secured_links(bench: Bench, profile: Profile) -> dict[str, Any]:
    """The Kafka path (1+1) on this stack (secured links) and on a private stack with plain
    links, in interleaved rounds (:mod:`benchmarks.links`): what TLS and the ACLs cost."""
    async with links.plain_bench(bench) as plain:
        benches = {"secured": bench, "plain": plain}
        for side, b in benches.items():
            await _warm_up(b, profile, f"{side} links")
        runs = await links.interleave(
            benches, profile.links_rounds,
            lambda b, label: kafka_path(b, entries=profile.kafka_entries, label=label))
    return {"entries": profile.kafka_entries, "warm_up_entries": profile.links_warm_up_entries,
            "order": links.side_order(profile.links_rounds),
            "links": {side: _links_of(b.settings) for side, b in benches.items()},
            "runs": runs, **links.compare(runs)}


def _links_of(settings: Settings) -> dict[str, Any]:
    return {"kafka": settings.kafka_security_protocol,
            "postgres_tls": "sslmode=verify-full" in settings.database_dsn,
            "openbao_tls": settings.vault_addr.startswith("https://")}


# --- HTTP ------------------------------------------------------------------------------------


async def _attack_steps(
    bench: Bench, lane: Lane | None, url: str, token: str, meter: CpuMeter, *,
    rates: Sequence[float], search: Sequence[float], seconds: float, prefer_async: bool,
    bulk: int = 0, drain: bool = True, within: float = 900.0, label: str,
) -> list[dict[str, Any]]:
    """Constant-rate steps, then higher rates while each still holds; drains between steps
    so that every step starts with an empty pipeline (its CPU includes its own drain)."""
    steps: list[dict[str, Any]] = []
    accepted = 0
    plan = [(r, False) for r in rates] + [(r, True) for r in search]
    directory = lane.dir if lane is not None else bench.run_dir
    for rate, searching in plan:
        if searching and steps and not holds(steps[-1]):
            break
        count = max(1, int(rate * seconds))
        if lane is not None:
            targets = lane.targets(url, token, count=count, prefer_async=prefer_async, bulk=bulk)
        else:
            targets = _plain_targets(directory, url, count)
        bench.progress(f"{label}: {rate:g} req/s for {seconds:g}s")
        m = Measurement(meter)
        m.start()
        before = _children_cpu_s()
        step = await vegeta_attack(bench, targets, rate=rate, duration_s=seconds,
                                   out_dir=directory)
        step["vegeta_cpu_s"] = _children_cpu_s() - before
        entries = step["ok"] * max(bulk, 1)
        if lane is not None:
            # what ingest published, acknowledged to the client or not (a request that timed
            # out at the client may still have been published): the pipeline owes all of it
            published = await lane.end_offsets(lane.settings.topic_append) - accepted
            step["published"] = published
            accepted += published
        if lane is not None and drain:
            done_at = await lane.wait_anchored(accepted, within=within)
            m.stop(at=done_at)
        else:
            m.stop()
        step.update(entries=entries, entries_per_s=step["throughput_per_s"] * max(bulk, 1),
                    **cpu_summary(m, max(step.get("published", entries), 1)))
        steps.append(step)
        targets.unlink(missing_ok=True)
    return steps


def _plain_targets(directory: Path, url: str, count: int) -> Path:
    path = directory / f"targets-{uuid.uuid4().hex[:6]}.jsonl"
    with path.open("w") as out:
        for i in range(count):
            body = {"subject": f"acct/{i % 64}",
                    "payload": base64.b64encode(f"payload {i}".encode()).decode(),
                    "meta": {"source": "bench", "n": i}}
            out.write(json.dumps({"method": "POST", "url": url,
                                  "header": {"Content-Type": ["application/json"]},
                                  "body": base64.b64encode(json.dumps(body).encode()).decode()})
                      + "\n")
    return path


async def http_ingest(bench: Bench, profile: Profile, *, mode: str) -> dict[str, Any]:
    """``POST /append`` (``mode`` ``async``: ``Prefer: respond-async``; ``wait``: the default
    wait for the signer; ``bulk``: ``POST /append/batch``) with the whole pipeline running."""
    async with bench.lane() as lane:
        tokens = lane.dir / "tokens.jsonl"
        token = create_token(tokens, "bench", ["append", "read"])
        rekor_before = await bench.rekor_tree_size()
        await lane.start_stages()
        base = await lane.start_ingest(tokens_file=str(tokens))
        meter = lane.meter()
        if mode == "bulk":
            steps = await _attack_steps(
                bench, lane, f"{base}/append/batch", token, meter, rates=profile.bulk_rates[:1],
                search=profile.bulk_rates[1:], seconds=profile.bulk_seconds, prefer_async=True,
                bulk=profile.bulk_size, drain=False, label="bulk append",
            )
        else:
            steps = await _attack_steps(
                bench, lane, f"{base}/append", token, meter, rates=profile.http_rates,
                search=profile.http_search_rates, seconds=profile.http_seconds,
                prefer_async=mode == "async", within=profile.drain_within_s,
                label=f"ingest ({mode})",
            )
        # stop ingest first: a request a client gave up on may still be published meanwhile
        await lane.stop_role("ingest")
        published = await lane.end_offsets(lane.settings.topic_append)
        await lane.wait_anchored(published, within=profile.drain_within_s)
        rss = await lane.stop_stages()
        acknowledged = sum(s["entries"] for s in steps)
        if acknowledged > published:
            raise BenchError(f"{acknowledged} appends acknowledged to clients, only "
                             f"{published} published to Kafka")
        counts = await lane.check_exactly_once(published, rekor_before=rekor_before)
    per_request = max(profile.bulk_size, 1) if mode == "bulk" else 1
    return {"mode": mode, "steps": steps, "peak_rss_mb": rss, "exactly_once": counts,
            "entries_per_request": per_request,
            "max_holding_per_s": max((s["offered_per_s"] for s in steps if holds(s)),
                                     default=0)}


@contextlib.asynccontextmanager
async def baseline_server(bench: Bench, kind: str, env: dict[str, str]
                          ) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    log = bench.run_dir / f"{kind}-server.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.servers", kind, "--port", str(port),
            cwd=str(REPO), env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    try:
        async def listening() -> bool:
            if proc.returncode is not None:
                raise BenchError(f"{kind} server exited: {log.read_text()[-2000:]}")
            return f"listening {port}" in log.read_text()

        await wait_for(listening, within=60, what=f"the {kind} server")
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def http_baseline(bench: Bench, profile: Profile, *, kind: str) -> dict[str, Any]:
    """The trivial handler or the runbook's design, same load generator, same stack."""
    env: dict[str, str] = {}
    if kind == "runbook":
        postgres = bench.stack.require("postgres")
        assert isinstance(postgres, Postgres)
        env = {
            "CRDB_DSN": await asyncio.to_thread(postgres.create_database,
                                                f"runbook_{int(time.time())}"),
            "VAULT_ADDR": bench.settings.vault_addr,
            "VAULT_CACERT": bench.settings.vault_cacert,
            # the runbook's design signs entries: the signer's token
            "VAULT_TOKEN": VaultToken.for_stage(bench.settings, "signer").value,
            "REKOR_SERVER_URL": bench.settings.rekor_server_url,
        }
    rates = profile.runbook_rates if kind == "runbook" else profile.trivial_rates
    async with baseline_server(bench, kind, env) as (proc, base):
        meter = bench.service_meter()
        meter.add(kind, [proc.pid])
        steps = await _attack_steps(
            bench, None, f"{base}/append", "", meter, rates=rates[:1], search=rates[1:],
            seconds=profile.http_seconds, prefer_async=False, drain=False, label=kind,
        )
        rss = peak_rss_mb(proc.pid)
    return {"kind": kind, "steps": steps, "peak_rss_mb": rss,
            "max_holding_per_s": max((s["offered_per_s"] for s in steps if holds(s)),
                                     default=0)}


# --- raw baselines ----------------------------------------------------------------------------


async def _run_baseline(bench: Bench, argv: list[str], env: dict[str, str],
                        watch: Sequence[str]) -> dict[str, Any]:
    m = Measurement(bench.service_meter())
    m.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.baselines", *argv, cwd=str(REPO),
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    m.stop()
    if proc.returncode != 0:
        raise BenchError(f"baseline {argv[0]} failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["service_cpu_s"] = {k: m.cpu_s.get(k, 0.0) for k in watch}
    return result


async def raw_baselines(bench: Bench, profile: Profile) -> dict[str, Any]:
    s = bench.settings
    vault_env = {"VAULT_ADDR": s.vault_addr, "VAULT_CACERT": s.vault_cacert,
                 "VAULT_TOKEN": VaultToken.for_stage(s, "signer").value}
    out: dict[str, Any] = {}
    for concurrency in (1, 4):
        bench.progress(f"baseline: Vault batch_input 200, {concurrency} in flight")
        out[f"vault_c{concurrency}"] = await _run_baseline(
            bench, ["vault", "--count", str(profile.vault_signatures), "--concurrency",
                    str(concurrency), "--key", s.vault_transit_key], vault_env, ["openbao"])
    postgres = bench.stack.require("postgres")
    assert isinstance(postgres, Postgres)
    dsn = await asyncio.to_thread(postgres.create_database, f"baseline_{int(time.time())}")
    for method in ("executemany", "copy"):
        bench.progress(f"baseline: PostgreSQL {method}, 500 rows per transaction")
        out[f"pg_{method}"] = await _run_baseline(
            bench, ["pg", "--count", str(profile.pg_rows), "--method", method],
            {"CRDB_DSN": dsn}, ["postgres"])
    topic = f"baseline-{int(time.time())}"
    await ensure_topics(s, [topic], 4)
    bench.progress("baseline: Kafka produce and consume")
    out["kafka"] = await _run_baseline(
        bench, ["kafka", "--bootstrap", s.kafka_bootstrap_servers, "--topic", topic,
                "--count", str(profile.kafka_messages)], connection_environment(s), ["kafka"])
    return out


# --- everything ----------------------------------------------------------------------------

Scenario = Callable[[Bench, Profile], Awaitable[Any]]

_SCENARIOS: dict[str, Scenario] = {
    "idle": idle,
    "warm_up": warm_up,
    "baselines": raw_baselines,
    "kafka_e2e": lambda b, p: kafka_path(b, entries=p.kafka_entries, label="1+1"),
    "kafka_e2e_2x": lambda b, p: kafka_path(b, entries=p.kafka_entries, signers=2, anchorers=2,
                                            label="2+2"),
    "kafka_fixed_rate": lambda b, p: kafka_path(
        b, entries=int(p.latency_rate * p.latency_seconds), rate=p.latency_rate,
        label="fixed rate"),
    "backlog_drain": lambda b, p: kafka_path(b, entries=p.backlog_entries, backlog_first=True,
                                             label="backlog"),
    "sweeps": sweeps,
    "http_trivial": lambda b, p: http_baseline(b, p, kind="trivial"),
    "http_async": lambda b, p: http_ingest(b, p, mode="async"),
    "http_wait": lambda b, p: http_ingest(b, p, mode="wait"),
    "http_bulk": lambda b, p: http_ingest(b, p, mode="bulk"),
    "http_runbook": lambda b, p: http_baseline(b, p, kind="runbook"),
    "secured_links": secured_links,
}
#: every scenario, in the order a full run takes them (the previous release right after
#: this one, under the same conditions)
NAMES = ("idle", "warm_up", "baselines", "kafka_e2e", "previous_release",
         *(n for n in _SCENARIOS if n not in {"idle", "warm_up", "baselines", "kafka_e2e"}))


async def run_one(bench: Bench, profile: Profile, name: str, *, baseline_ref: str = "") -> Any:
    if name == "previous_release":
        if not baseline_ref:
            raise BenchError("previous_release needs --baseline-ref")
        return await previous_release(bench, profile, baseline_ref)
    return await _SCENARIOS[name](bench, profile)


async def run_all(bench: Bench, profile: Profile, *, baseline_ref: str = "") -> dict[str, Any]:
    """Every scenario of ``profile`` (those it sizes at zero are left out)."""
    r: dict[str, Any] = {"profile": profile.name}
    for name in NAMES:
        if (name == "backlog_drain" and not profile.backlog_entries) or (
            name == "kafka_e2e_2x" and not profile.two_of_each
        ) or (name == "previous_release" and not baseline_ref) or (
            name == "secured_links" and not profile.links_rounds
        ):
            continue
        r[name] = await run_one(bench, profile, name, baseline_ref=baseline_ref)
    return r
