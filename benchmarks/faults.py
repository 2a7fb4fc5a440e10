"""Faults under a stream of appends, and what must hold afterwards.

Used by the restart tests (``tests/integration/test_restarts.py``), the recovery measurement
(``python -m benchmarks.recovery``) and the chaos run (``make chaos``). Everything runs on a
:class:`benchmarks.harness.Lane`: its private database, topics and consumer groups, its
stages as separate processes.

* :class:`HttpClients`: concurrent HTTP clients of ingest, each request with its own request
  id (``Idempotency-Key``); a request that fails (connection refused or reset, timeout,
  5xx) is sent again with the same id until it is acknowledged, so every request of the
  stream ends acknowledged, exactly as a careful client behaves.
* :class:`Faults`: the dependency faults on the local stack (``kill -9`` of Kafka,
  PostgreSQL / Rekor and Trillian restarts, an OpenBao restart that comes back *sealed* and is
  unsealed with the stored key share) and ``kill -9`` of a stage process (then a replacement).
* :func:`invariants`: the table the stream must satisfy: every acknowledged request has
  exactly one row, is in exactly one anchored batch, each batch has one Rekor entry and a
  receipt that ``ledger audit --online`` verifies, every entry has its ``ledger.anchored``
  event (a crash may replay one, byte-identical: counted, allowed), nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.harness import (
    REPO,
    Bench,
    BenchError,
    Lane,
    StageProcess,
    free_port,
    settings_env,
    wait_for,
)
from deploy.local.base import default_cache_dir
from deploy.local.openbao import OpenBao
from deploy.local.stack import Stack
from services.ingest import create_token
from shared.settings import Settings
from tests.support import waiting

__all__ = [
    "DEPENDENCY_FAULTS",
    "STAGE_FAULTS",
    "Faults",
    "HttpClients",
    "StreamPlan",
    "audit",
    "bench_on_a_stack",
    "invariants",
    "run_stream",
    "scrape",
    "stop_load",
]

#: dependency faults by name (see :class:`Faults`)
DEPENDENCY_FAULTS = ("kafka_kill", "postgres_restart", "openbao_restart", "rekor_restart")
#: ``kill -9`` of one stage process, then a replacement
STAGE_FAULTS = ("ingest_kill", "signer_kill", "anchorer_kill")


# --- HTTP clients with request ids and retries ----------------------------------------------


@dataclass
class HttpClients:
    """``count`` appends ``<prefix>-h<i>`` at about ``rate`` per second from ``concurrency``
    clients, each retried with the same request id until acknowledged (within ``give_up_s``).

    ``url`` is asked before every attempt: a replaced ingest may listen elsewhere.
    """

    url: Callable[[], str]
    token: str
    prefix: str
    count: int
    rate: float
    concurrency: int = 16
    timeout_s: float = 10.0
    give_up_s: float = 300.0
    acknowledged: set[str] = field(default_factory=set)
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def rid(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    async def run(self) -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            workers = [asyncio.create_task(self._worker(http, queue))
                       for _ in range(self.concurrency)]
            t0 = time.monotonic()
            for i in range(self.count):
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await queue.put(i)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)

    async def _worker(self, http: aiohttp.ClientSession, queue: asyncio.Queue[int | None]) -> None:
        while (i := await queue.get()) is not None:
            await self._append(http, i)

    async def _append(self, http: aiohttp.ClientSession, i: int) -> None:
        rid = self.rid(i)
        body = {"request_id": rid, "subject": f"acct/{i % 64}",
                "payload_sha256": hashlib.sha256(rid.encode()).hexdigest(),
                "meta": {"source": "faults", "n": i}}
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": rid,
                   "Prefer": "respond-async"}
        deadline = time.monotonic() + self.give_up_s
        attempt = 0
        while True:
            try:
                async with http.post(f"{self.url()}/append", json=body, headers=headers) as r:
                    await r.read()
                    if r.status in (200, 201, 202):
                        self.acknowledged.add(rid)
                        return
                    if r.status < 500 and r.status != 429:
                        raise BenchError(f"append {rid} refused with {r.status}")
                    self.failures[str(r.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise BenchError(f"append {rid} not acknowledged within {self.give_up_s:g}s")
            attempt += 1
            self.retries += 1
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))


# --- metrics of a stage ---------------------------------------------------------------------


async def scrape(port: int) -> dict[str, float]:
    """A stage's ``/metrics`` as ``{'name{labels}': value}`` (empty when it does not answer)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=2)
        ) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


async def vault_health(port: int) -> str:
    """The ``vault`` check's state in a stage's ops ``/health`` (empty when it does not answer)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=3)
        ) as resp:
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return ""
    vault = body.get("checks", {}).get("vault", {}) if isinstance(body, dict) else {}
    return str(vault.get("state", "")) if isinstance(vault, dict) else ""


# --- faults ---------------------------------------------------------------------------------


@dataclass
class Faults:
    """Faults of the stack's services and of a lane's stages; each returns what it observed
    (seconds down, and for OpenBao that the stages paused while it was sealed)."""

    stack: Stack
    lane: Lane
    #: stage processes' metrics ports, by process name (to see a stage pause)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    #: where a replacement ingest listens (the clients keep their URL) and its tokens
    ingest_port: int = 0
    tokens_file: str = ""
    log: Callable[[str], None] = lambda _m: None

    async def run(self, name: str) -> dict[str, Any]:
        t0 = time.monotonic()
        fault = getattr(self, name)
        observed: dict[str, Any] = await fault()
        observed["seconds"] = round(time.monotonic() - t0, 1)
        self.log(f"fault {name}: {observed}")
        return observed

    async def kafka_kill(self) -> dict[str, Any]:
        """``kill -9`` the broker, start it again on the same data directory and port."""
        kafka = self.stack.require("kafka")
        await asyncio.to_thread(kafka.kill)
        await asyncio.to_thread(kafka.start, lambda _m: None)
        return {}

    async def postgres_restart(self) -> dict[str, Any]:
        """Restart PostgreSQL (fast shutdown: open connections are cut)."""
        await asyncio.to_thread(self.stack.require("postgres").restart)
        return {}

    async def rekor_restart(self) -> dict[str, Any]:
        """Restart rekor-server and both Trillian programs."""
        await asyncio.to_thread(self.stack.require("rekor").restart)
        return {}

    async def openbao_restart(self) -> dict[str, Any]:
        """Restart OpenBao, which comes back sealed; wait until every signer and anchorer with
        a metrics port reports itself paused on the sealed Vault, then unseal."""
        bao = self.stack.require("openbao")
        assert isinstance(bao, OpenBao)
        await asyncio.to_thread(bao.stop)
        await asyncio.to_thread(bao.start_sealed)
        if not await asyncio.to_thread(bao.sealed):
            raise BenchError("OpenBao came back unsealed: a restart must not unseal it")
        running = {p.name for p in self.lane.processes if p.alive()}
        stages = {name: port for name, port in self.metrics_ports.items()
                  if name.startswith("signer") and name in running}
        paused: dict[str, bool] = {}

        said: dict[str, str] = {}

        async def all_paused() -> bool:
            for name, port in stages.items():
                m = await scrape(port)
                role = name.rsplit("-", 1)[0]
                paused[name] = (m.get(f'ledger_stage_paused{{stage="{role}"}}') == 1.0
                                or m.get('ledger_dependency_up{dependency="vault"}') == 0.0)
                said[name] = await vault_health(port)
            return all(paused.values()) and all(s == "sealed" for s in said.values())

        await wait_for(all_paused, within=60,
                       what="the signers to pause on a sealed OpenBao and their /health to say so")
        await asyncio.to_thread(bao.unseal)
        return {"paused_while_sealed": sorted(paused), "health_vault_state": said}

    async def stage_kill(self, role: str, *, metrics: bool = False) -> dict[str, Any]:
        """``kill -9`` one running process of ``role`` and start a replacement."""
        victims = [p for p in self.lane.processes if p.role == role and p.alive()]
        if not victims:
            raise BenchError(f"no running {role} to kill")
        victim = random.choice(victims)
        await kill_9(self.lane, victim)
        if role == "ingest":
            await self.lane.start_ingest(http_port=self.ingest_port,
                                         tokens_file=self.tokens_file)
        else:
            await self.spawn(role)
        return {"killed": victim.name}

    async def spawn(self, role: str, **changes: Any) -> StageProcess:
        """Start a signer or anchorer with a metrics port of its own."""
        port = free_port()
        proc = await self.lane.spawn(role, metrics_port=port, **changes)
        self.metrics_ports[proc.name] = port
        return proc

    async def ingest_kill(self) -> dict[str, Any]:
        return await self.stage_kill("ingest")

    async def signer_kill(self) -> dict[str, Any]:
        return await self.stage_kill("signer")

    async def anchorer_kill(self) -> dict[str, Any]:
        return await self.stage_kill("anchorer")


async def kill_9(lane: Lane, victim: StageProcess) -> None:
    """``kill -9`` a stage's process group and forget it (its peak RSS is not reported)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(victim.pid, signal.SIGKILL)
    await asyncio.wait_for(victim.proc.wait(), 30)
    lane.processes.remove(victim)


# --- afterwards -----------------------------------------------------------------------------


async def audit(lane: Lane) -> tuple[int, dict[str, Any]]:
    """``ledger audit --online --json`` over the lane's database: exit code and report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ledger.cli", "audit", "--online", "--json",
        cwd=str(REPO), env=settings_env(lane.settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        report = {"output": out.decode(errors="replace")[-2000:],
                  "errors": err.decode(errors="replace")[-2000:]}
    assert proc.returncode is not None
    return proc.returncode, report


class _NotYet(AssertionError):
    pass


async def invariants(lane: Lane, acknowledged: int, *, rekor_before: int,
                     within: float = 300) -> dict[str, Any]:
    """Wait until ``acknowledged`` entries are anchored, then the invariant table: the
    harness's exactly-once check (rows, batches, events, Rekor, dead letters) and
    ``ledger audit --online``. ``problems`` lists every violation (empty: all hold)."""

    async def anchored() -> bool:
        lane.assert_alive()
        n = await lane.db.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE anchored_at IS NOT NULL")
        return int(n) >= acknowledged

    problems: list[str] = []
    with contextlib.suppress(_NotYet):  # the counts below say what is missing
        await waiting.wait_for(anchored, within=within, every=0.5, error=_NotYet,
                               what=f"{acknowledged} anchored entries")
    counts = await lane.delivery_counts(acknowledged, rekor_before=rekor_before,
                                        replays_allowed=True)
    problems.extend(counts.pop("problems"))
    code, report = await audit(lane)
    if code != 0:
        problems.append(f"ledger audit exited {code}: {json.dumps(report)[:1500]}")
    return {"acknowledged": acknowledged, **counts,
            "audit": "clean" if code == 0 else f"exit {code}", "problems": problems}


# --- a stream of appends with faults --------------------------------------------------------


@dataclass(frozen=True)
class StreamPlan:
    """Appends from HTTP clients and from a Kafka producer, each source at ``rate`` per
    second, through ``signers`` signers and ``anchorers`` anchorers."""

    http: int
    kafka: int
    rate: float
    signers: int = 1
    anchorers: int = 1


#: a lane where a batch left claimed by a killed anchorer is re-driven within seconds
FAULT_LANE = {"sweeper_interval_s": 2.0, "sweeper_age_s": 10.0, "shutdown_grace_s": 15.0}


async def run_stream(bench: Bench, plan: StreamPlan, schedule: list[tuple[int, str]],
                     log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Run ``plan`` on a fresh lane; fault ``name`` of ``schedule`` once ``threshold`` rows
    are stored (in order, each over before the next); then wait for everything acknowledged
    to be anchored and return the invariant table, what was tried, and how long it took."""
    async with bench.lane(partitions=4, **FAULT_LANE) as lane:
        tokens = str(lane.dir / "tokens.jsonl")
        token = create_token(tokens, "faults", ["append", "read"])
        port = free_port()
        base = await lane.start_ingest(http_port=port, tokens_file=tokens)
        faults = Faults(bench.stack, lane, ingest_port=port, tokens_file=tokens, log=log)
        for role, n in (("signer", plan.signers), ("anchorer", plan.anchorers)):
            for _ in range(n):
                await faults.spawn(role)
        await lane.wait_groups()
        rekor_before = await bench.rekor_tree_size()
        clients = HttpClients(url=lambda: base, token=token, prefix=lane.prefix,
                              count=plan.http, rate=plan.rate)
        t0 = time.monotonic()
        http = asyncio.create_task(clients.run())
        kafka = await lane.produce(plan.kafka, rate=plan.rate)
        tried: list[dict[str, Any]] = []
        try:
            for threshold, name in schedule:
                await wait_for(functools.partial(_stored_at_least, lane, threshold, http, kafka),
                               within=600, what=f"{threshold} stored rows", every=0.2)
                observed = await faults.run(name)
                tried.append({"at_rows": threshold, "fault": name, **observed})
            await http
            produced = await kafka
        finally:
            http.cancel()
            with contextlib.suppress(BaseException):
                await http
            await stop_load(kafka)
        acknowledged = len(clients.acknowledged) + int(produced["acked"])
        table = await invariants(lane, acknowledged, rekor_before=rekor_before)
        seconds = time.monotonic() - t0
        await lane.stop_stages()
    return {"plan": plan.__dict__, "faults": tried, "table": table,
            "seconds": round(seconds, 1), "http_retries": clients.retries,
            "http_failures": dict(clients.failures),
            "kafka_retries": int(produced.get("retries", 0))}


async def _stored_at_least(lane: Lane, n: int, *loads: asyncio.Task[Any]) -> bool:
    for load in loads:
        if load.done() and load.exception() is not None:
            raise BenchError(f"the load failed: {load.exception()}")
    lane.assert_alive()
    return int(await lane.db.fetchval("SELECT count(*) FROM ledger.entries")) >= n


async def stop_load(load: asyncio.Task[Any]) -> None:
    """Stop a load generator started by :meth:`Lane.produce` before it is done."""
    if not load.done() and (pid := getattr(load, "pid", None)) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(BaseException):
        await load


@contextlib.contextmanager
def bench_on_a_stack(name: str, say: Callable[[str], None] = print) -> Iterator[Bench]:
    """A local stack of its own under ``.bench/<name>-<time>/stack`` (stopped and removed
    afterwards; the stages' logs stay in the run directory) and a :class:`Bench` on it."""
    run_dir = REPO / ".bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stack = Stack(run_dir / "stack", default_cache_dir())
    with stack.signals_stop():
        try:
            stack.install_all(say)
            stack.start_all(say)
            yield Bench(stack=stack, settings=Settings.from_env(environ=stack.endpoints()),
                        run_dir=run_dir, progress=say)
        finally:
            stack.stop_all()
            shutil.rmtree(run_dir / "stack", ignore_errors=True)
