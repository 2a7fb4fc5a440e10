"""The benchmark world: private lanes, stage processes, load generators and the checks.

Everything runs as deployed: each stage (``ingest``, ``signer``, ``anchorer``) is its own OS
process started as ``ledger <stage>`` (``python -m ledger.cli``), load comes from another
process (the Kafka producer of :mod:`benchmarks.loadgen`, or vegeta for HTTP), and CPU is read
per process from ``/proc`` (:mod:`benchmarks.procs`). This process only orchestrates and
checks; its own CPU is never part of a figure.

A :class:`Lane` is a private database (migrated), private topics (+ dead-letter topics) and
private consumer groups, so scenarios never see each other's data. After every scenario
:meth:`Lane.check_exactly_once` asserts what the pipeline promises: one row per request, every
entry in exactly one anchored batch, one ``ledger.anchored`` event per entry, nothing
dead-lettered, and Rekor grown by exactly the number of batches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from benchmarks.procs import CpuMeter, CpuSample, peak_rss_mb
from deploy.local.gotools import GoTool, ensure_go_tool
from deploy.local.postgres import Postgres
from deploy.local.stack import Stack
from shared.db import Database, migrate
from shared.kafka_acls import apply_acls, pipeline_acls
from shared.kafka_admin import ensure_topics
from shared.kafka_tls import client_options, connection_environment
from shared.settings import Settings
from tests.support import waiting

__all__ = [
    "VEGETA",
    "Bench",
    "BenchError",
    "Lane",
    "StageProcess",
    "percentile",
    "wait_for",
]

REPO = Path(__file__).resolve().parent.parent
VEGETA = GoTool("vegeta", "github.com/tsenart/vegeta/v12", "v12.13.0")

#: stack service processes measured, by the names ``Stack.processes()`` gives them
STACK_PROCESSES = {
    "kafka": "kafka",
    "postgres": "postgres",
    "openbao": "openbao",
    "rekor-server": "rekor",
    "trillian-log-server": "trillian",
    "trillian-log-signer": "trillian",
}


class BenchError(AssertionError):
    """A benchmark did not complete or its result is wrong (never "too slow")."""


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.1
) -> float:
    """Poll ``check`` until true; return the monotonic time it became true (BenchError
    naming ``what`` after ``within`` seconds)."""
    return await waiting.wait_for(check, within=within, what=what, every=every, error=BenchError)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings_env(settings: Settings, code_dir: Path = REPO) -> dict[str, str]:
    """The environment a stage process reads ``settings`` from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "REKOR_"))}
    env.update(settings.environment())
    env["PYTHONPATH"] = str(code_dir)
    return env


# --- the bench: the stack, the tools, the run directory ------------------------------------


@dataclass
class Bench:
    """One benchmark run: the stack it measures, where it keeps files, how it reports."""

    stack: Stack
    settings: Settings
    run_dir: Path
    progress: Callable[[str], None] = print
    vegeta: Path | None = None
    #: where the stages' code comes from (another checkout compares releases in one run)
    code_dir: Path = REPO

    def ensure_vegeta(self) -> Path:
        if self.vegeta is None:
            self.vegeta = ensure_go_tool(VEGETA, self.stack.cache_dir, self.progress)
        return self.vegeta

    def service_meter(self) -> CpuMeter:
        """A meter over the stack's own processes (Kafka, PostgreSQL, OpenBao, Rekor, ...)."""
        meter = CpuMeter()
        for service, procs in self.stack.processes().items():
            for proc in procs:
                name = STACK_PROCESSES.get(proc.name, proc.name)
                if proc.running():
                    meter.add(name, [proc.pid])
            del service
        return meter

    @contextlib.asynccontextmanager
    async def lane(self, *, partitions: int = 4, **changes: Any) -> AsyncIterator[Lane]:
        lane = await Lane.create(self, partitions=partitions, **changes)
        try:
            yield lane
        finally:
            await lane.close()

    async def rekor_tree_size(self) -> int:
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.settings.rekor_server_url.rstrip('/')}/api/v1/log",
            timeout=aiohttp.ClientTimeout(total=20),
        ) as resp:
            return int((await resp.json())["treeSize"])


# --- stage processes -----------------------------------------------------------------------

_COMMANDS = {  # python -m ledger.cli <stage>: the stages run as in production
    "ingest": ["-m", "ledger.cli", "ingest"],
    "signer": ["-m", "ledger.cli", "signer"],
    "anchorer": ["-m", "ledger.cli", "anchorer"],
}


@dataclass
class StageProcess:
    """A stage running in its own process (its own process group), logging to a file."""

    role: str
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    rss_mb: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.returncode is None

    def sample_rss(self) -> None:
        value = peak_rss_mb(self.pid)
        if value is not None:
            self.rss_mb = max(self.rss_mb or 0.0, value)

    async def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM (graceful drain), SIGKILL if it does not exit in time; the exit code."""
        self.sample_rss()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


# --- a private lane ------------------------------------------------------------------------


@dataclass
class Lane:
    """Private database, topics and consumer groups of one scenario, and its processes."""

    bench: Bench
    settings: Settings
    db: Database
    prefix: str
    dir: Path
    processes: list[StageProcess] = field(default_factory=list)
    _stopped: dict[str, float | None] = field(default_factory=dict)
    #: processes ever started per role: a replacement never reuses a name (or its log)
    _spawned: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def create(cls, bench: Bench, *, partitions: int, **changes: Any) -> Lane:
        prefix = f"b{uuid.uuid4().hex[:10]}"
        postgres = bench.stack.require("postgres")
        if not isinstance(postgres, Postgres):
            raise BenchError("benchmarks need the stack's own PostgreSQL (private databases)")
        dsn = await asyncio.to_thread(postgres.create_database, f"bench_{prefix}")
        s = bench.settings.model_copy(update={
            "database_dsn": dsn,
            "topic_append": f"{prefix}.append",
            "topic_signed": f"{prefix}.signed",
            "topic_anchored": f"{prefix}.anchored",
            "signer_group": f"{prefix}-signer",
            "anchorer_group": f"{prefix}-anchorer",
            "sweeper_interval_s": 3600.0,
            "sweeper_age_s": 3600.0,
            "shutdown_grace_s": 15.0,
            "log_level": "INFO",
            **changes,
        })
        await ensure_topics(s,
            [s.topic_append, s.topic_signed, s.topic_anchored,
             f"{s.topic_append}.dlq", f"{s.topic_signed}.dlq"],
            partitions,
        )
        if s.kafka_security_protocol == "SSL":
            # the stages' own principals may use only what the ACLs name: the lane's names
            await apply_acls(s, pipeline_acls(s))
        db = await Database.connect(s, max_size=4)
        await migrate(db)
        directory = bench.run_dir / prefix
        directory.mkdir(parents=True, exist_ok=True)
        return cls(bench=bench, settings=s, db=db, prefix=prefix, dir=directory)

    async def close(self) -> None:
        for p in self.processes:
            with contextlib.suppress(Exception):
                await p.stop(grace_s=20)
        await self.db.close()

    def rid(self, n: int | str) -> str:
        return f"{self.prefix}-{n}"

    # --- processes ---------------------------------------------------------------------------

    async def spawn(self, role: str, **changes: Any) -> StageProcess:
        s = self.settings.model_copy(update=changes)
        self._spawned[role] = self._spawned.get(role, 0) + 1
        name = f"{role}-{self._spawned[role]}"
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *_COMMANDS[role], cwd=str(self.bench.code_dir),
                env=settings_env(s, self.bench.code_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        stage = StageProcess(role=role, name=name, proc=proc, log=log)
        self.processes.append(stage)
        return stage

    async def start_stages(self, signers: int = 1, anchorers: int = 1, **changes: Any) -> None:
        """Start signers and anchorers; return once both groups are stable with all of them."""
        for _ in range(signers):
            await self.spawn("signer", **changes)
        for _ in range(anchorers):
            await self.spawn("anchorer", **changes)
        await self.wait_groups()

    async def start_ingest(self, **changes: Any) -> str:
        """Start ingest (on ``http_port``, default a free port); return its base URL once it
        answers."""
        port = int(changes.pop("http_port", 0)) or free_port()
        proc = await self.spawn("ingest", http_port=port, **changes)
        base = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            self.assert_alive()
            try:
                async with aiohttp.ClientSession() as http, http.get(
                    f"{base}/openapi.json", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_for(up, within=60, what=f"{proc.name} to listen on {base}", every=0.2)
        return base

    def assert_alive(self) -> None:
        for p in self.processes:
            if not p.alive():
                raise BenchError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")

    async def stop_stages(self) -> dict[str, float | None]:
        """Stop every process (SIGTERM drain); their peak RSS in MiB by name."""
        rss = dict(self._stopped)
        for p in self.processes:
            rss[p.name] = await self._stop(p)
        self.processes.clear()
        self._stopped.clear()
        return rss

    async def stop_role(self, role: str) -> None:
        """Stop the processes of one role now (their peak RSS is reported with the rest)."""
        for p in [p for p in self.processes if p.role == role]:
            self._stopped[p.name] = await self._stop(p)
            self.processes.remove(p)

    @staticmethod
    async def _stop(p: StageProcess) -> float | None:
        code = await p.stop()
        if code != 0:
            raise BenchError(f"{p.name} exited with {code} on SIGTERM:\n{p.tail()}")
        return p.rss_mb

    def sample_rss(self) -> None:
        for p in self.processes:
            if p.alive():
                p.sample_rss()

    def meter(self) -> CpuMeter:
        """The stack's processes and this lane's stages, by role (several processes add up)."""
        meter = self.bench.service_meter()
        for p in self.processes:
            meter.add(p.role, [p.pid], threads=p.role == "signer")
        return meter

    async def wait_groups(self) -> None:
        want = {
            self.settings.signer_group: {p.pid for p in self.processes if p.role == "signer"},
            self.settings.anchorer_group: {p.pid for p in self.processes if p.role == "anchorer"},
        }

        async def stable() -> bool:
            self.assert_alive()
            for group, pids in want.items():
                if pids and await _group_members(self.settings, group) != pids:
                    return False
            return True

        await wait_for(stable, within=90, what="consumer groups stable", every=0.3)

    # --- Kafka views -------------------------------------------------------------------------

    async def end_offsets(self, topic: str) -> int:
        """Records in ``topic`` (sum of its partitions' end offsets)."""
        consumer = AIOKafkaConsumer(**client_options(self.settings),
                                    group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps) if tps else {}
            return int(sum(ends.values()))
        finally:
            await consumer.stop()

    async def wait_anchored(self, count: int, *, within: float) -> float:
        """Wait until ``ledger.anchored`` holds ``count`` events; return that moment."""
        watcher = OffsetWatch(self.settings, self.settings.topic_anchored)
        await watcher.start()
        try:

            async def done() -> bool:
                self.assert_alive()
                self.sample_rss()
                return await watcher.total() >= count

            return await wait_for(done, within=within, what=f"{count} anchored events",
                                  every=0.1)
        finally:
            await watcher.stop()

    async def read_anchored(self) -> list[bytes]:
        return await read_topic(self.settings, self.settings.topic_anchored)

    # --- loads -------------------------------------------------------------------------------

    async def produce(self, count: int, *, rate: float = 0.0, start: int = 0) -> asyncio.Task[
        dict[str, Any]
    ]:
        """Start the Kafka load generator (its own process); the task gives its summary."""
        argv = [sys.executable, "-m", "benchmarks.loadgen",
                "--bootstrap", self.settings.kafka_bootstrap_servers,
                "--topic", self.settings.topic_append, "--prefix", self.prefix,
                "--count", str(count), "--rate", str(rate), "--start", str(start)]
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=str(REPO),
            env={**os.environ, **connection_environment(self.settings), "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

        async def finished() -> dict[str, Any]:
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise BenchError(f"load generator failed ({proc.returncode}): {err.decode()}")
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            return result

        task = asyncio.create_task(finished())
        task.pid = proc.pid  # type: ignore[attr-defined]
        return task

    # --- results from the database -----------------------------------------------------------

    async def latencies(self) -> dict[str, float]:
        """Time-to-signed and time-to-anchored percentiles (ms) over every row of the lane."""
        row = await self.db.fetchrow(
            "SELECT"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM"
            "   created_at - submitted_at)) AS s50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM"
            "   created_at - submitted_at)) AS s99,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM"
            "   anchored_at - submitted_at)) AS a50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM"
            "   anchored_at - submitted_at)) AS a99"
            " FROM ledger.entries"
        )
        assert row is not None
        return {k: float(row[k] or math.nan) * 1000 for k in ("s50", "s99", "a50", "a99")}

    async def check_exactly_once(self, expected: int, *, rekor_before: int) -> dict[str, int]:
        """Assert the delivery guarantees for ``expected`` requests; return the counts."""
        counts = await self.delivery_counts(expected, rekor_before=rekor_before)
        if counts["problems"]:
            raise BenchError("exactly-once check failed: " + "; ".join(counts["problems"]))
        return {"rows": counts["rows"], "batches": counts["batches"],
                "events": counts["events"], "rekor_growth": counts["rekor_growth"]}

    async def delivery_counts(self, expected: int, *, rekor_before: int,
                              replays_allowed: bool = False) -> dict[str, Any]:
        """The delivery guarantees for ``expected`` requests, counted: rows, anchored rows,
        duplicates, batches, events, Rekor growth, dead letters, and ``problems`` (a list of
        what does not hold; empty when everything does).

        ``ledger.anchored`` is at-least-once: after a crash an event may be published again,
        byte-identical (consumers de-duplicate by entry id). ``replays_allowed`` accepts such
        replays (counted in ``event_replays``); events that differ never pass."""
        rows = await self.db.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT request_id) AS ids,"
            " count(*) FILTER (WHERE batch_id IS NOT NULL AND anchored_at IS NOT NULL)"
            "   AS anchored,"
            " count(*) FILTER (WHERE batch_id IS NULL OR anchored_at IS NULL) AS open,"
            " count(DISTINCT (batch_id, leaf_index)) AS leaves FROM ledger.entries"
        )
        batches = await self.db.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS entries,"
            " count(*) FILTER (WHERE state <> 'anchored') AS pending FROM ledger.batches"
        )
        assert rows is not None and batches is not None
        problems = []
        if rows["n"] != expected or rows["ids"] != expected:
            problems.append(f"{rows['n']} rows ({rows['ids']} request ids) for {expected} requests")
        if rows["open"]:
            problems.append(f"{rows['open']} entries not anchored")
        if rows["leaves"] != expected or batches["entries"] != expected:
            problems.append(f"{rows['leaves']} distinct leaves, batches hold "
                            f"{batches['entries']} entries, expected {expected}")
        if batches["pending"]:
            problems.append(f"{batches['pending']} batches not anchored")
        events = await self.read_anchored()
        by_entry: dict[str, set[bytes]] = {}
        for value in events:
            by_entry.setdefault(json.loads(value)["entry"]["entry_id"], set()).add(value)
        replays = len(events) - len(by_entry)
        if len(by_entry) != expected or (replays and not replays_allowed):
            problems.append(f"{len(events)} ledger.anchored events for {len(by_entry)} entries, "
                            f"expected one per entry ({expected})")
        if (differing := sum(1 for values in by_entry.values() if len(values) > 1)):
            problems.append(f"{differing} entries have ledger.anchored events that differ")
        grown = await self.bench.rekor_tree_size() - rekor_before
        if grown != batches["n"]:
            problems.append(f"Rekor grew by {grown} entries for {batches['n']} batches")
        dead_letters = 0
        for dlq in (f"{self.settings.topic_append}.dlq", f"{self.settings.topic_signed}.dlq"):
            if (dead := await self.end_offsets(dlq)):
                problems.append(f"{dead} messages dead-lettered in {dlq}")
                dead_letters += dead
        return {"rows": int(rows["n"]), "anchored": int(rows["anchored"]),
                "duplicates": int(rows["n"]) - int(rows["ids"]),
                "batches": int(batches["n"]), "events": len(by_entry), "event_replays": replays,
                "rekor_growth": grown, "dead_letters": dead_letters, "problems": problems}

    # --- HTTP load -----------------------------------------------------------------------------

    def targets(self, url: str, token: str, *, count: int, prefer_async: bool,
                bulk: int = 0) -> Path:
        """A vegeta JSON targets file of ``count`` distinct append requests (or bulk bodies)."""
        path = self.dir / f"targets-{uuid.uuid4().hex[:6]}.jsonl"
        headers = {"Authorization": [f"Bearer {token}"], "Content-Type": ["application/json"]}
        if prefer_async:
            headers["Prefer"] = ["respond-async"]
        with path.open("w") as out:
            for i in range(count):
                if bulk:
                    doc: dict[str, Any] = {"entries": [_entry_body(self.prefix, f"{i}.{j}")
                                                       for j in range(bulk)]}
                else:
                    doc = _entry_body(self.prefix, str(i))
                body = base64.b64encode(json.dumps(doc).encode()).decode()
                out.write(json.dumps({"method": "POST", "url": url, "header": headers,
                                      "body": body}) + "\n")
        return path


def _entry_body(prefix: str, tag: str) -> dict[str, Any]:
    payload = hashlib.sha256(f"{prefix}/{tag}".encode()).digest() * 4
    return {"subject": f"acct/{hash(tag) % 64}", "payload": base64.b64encode(payload).decode(),
            "meta": {"source": "bench", "tag": tag}}


async def vegeta_attack(bench: Bench, targets: Path, *, rate: float, duration_s: float,
                        out_dir: Path, timeout_s: float = 15.0) -> dict[str, Any]:
    """A constant-rate (open model) attack from vegeta's own process; its JSON report."""
    vegeta = bench.ensure_vegeta()
    results = out_dir / f"vegeta-{uuid.uuid4().hex[:6]}.bin"
    attack = await asyncio.create_subprocess_exec(
        str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={rate:g}/1s",
        f"-duration={duration_s:g}s", f"-timeout={timeout_s:g}s", f"-output={results}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await attack.communicate()
    if attack.returncode != 0:
        raise BenchError(f"vegeta attack failed: {err.decode()[-2000:]}")
    report = await asyncio.create_subprocess_exec(
        str(vegeta), "report", "-type=json", str(results),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await report.communicate()
    if report.returncode != 0:
        raise BenchError(f"vegeta report failed: {err.decode()[-2000:]}")
    doc: dict[str, Any] = json.loads(out)
    results.unlink(missing_ok=True)
    lat = doc["latencies"]
    codes = {str(k): int(v) for k, v in (doc.get("status_codes") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    return {
        "offered_per_s": rate,
        "requests": int(doc["requests"]),
        "ok": ok,
        "errors": int(doc["requests"]) - ok,
        "error_kinds": sorted(set(doc.get("errors") or []))[:5],
        "status_codes": codes,
        "throughput_per_s": float(doc["throughput"]),
        "p50_ms": lat["50th"] / 1e6,
        "p95_ms": lat["95th"] / 1e6,
        "p99_ms": lat["99th"] / 1e6,
        "max_ms": lat["max"] / 1e6,
        "mean_ms": lat["mean"] / 1e6,
    }


# --- Kafka helpers ---------------------------------------------------------------------------


class OffsetWatch:
    """Sum of a topic's end offsets, asked cheaply and often (one metadata-only consumer)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._topic = topic
        self._consumer = AIOKafkaConsumer(**client_options(settings), group_id=None,
                                          enable_auto_commit=False)
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self._topic) or set()
        self._tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]

    async def total(self) -> int:
        return int(sum((await self._consumer.end_offsets(self._tps)).values()))

    async def stop(self) -> None:
        await self._consumer.stop()


async def read_topic(settings: Settings, topic: str, *, within: float = 120) -> list[bytes]:
    """Every record value of ``topic`` up to the end offsets seen at the start."""
    c = AIOKafkaConsumer(topic, **client_options(settings),
                         enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=8 * 1024 * 1024)
    await asyncio.wait_for(c.start(), 30)
    try:
        tps = sorted(c.assignment())
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        values: list[bytes] = []
        deadline = time.monotonic() + within
        while any([await c.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                raise BenchError(f"could not read {topic} to its end in {within:.0f}s")
            for recs in (await c.getmany(timeout_ms=200, max_records=10_000)).values():
                values.extend(r.value for r in recs)
        return values
    finally:
        await asyncio.wait_for(c.stop(), 30)


async def _group_members(settings: Settings, group: str) -> set[int]:
    """Pids (from client ids) of the members holding partitions, if the group is Stable."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    except KafkaError:
        return set()
    finally:
        await admin.close()
    pids: set[int] = set()
    for response in responses:
        for g in response.groups:  # (error_code, group, state, protocol_type, protocol, members)
            if g[2] != "Stable":
                return set()
            for member in g[5]:  # (member_id, client_id, client_host, metadata, assignment)
                if member[4]:
                    pids.add(int(member[1].rsplit("-", 1)[1]))
    return pids


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    """CPU of every process tree between :meth:`start` and :meth:`stop`, and the wall time."""

    meter: CpuMeter
    first: CpuSample | None = None
    t0: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    machine_busy_s: float = 0.0

    def start(self) -> None:
        self.first = self.meter.sample()
        self.t0 = time.monotonic()

    def stop(self, at: float | None = None) -> None:
        assert self.first is not None
        last = self.meter.sample()
        self.wall_s = (at or time.monotonic()) - self.t0
        self.cpu_s = last.minus(self.first)
        self.machine_busy_s = last.machine_busy - self.first.machine_busy

    @property
    def cores_busy(self) -> float:
        return self.machine_busy_s / self.wall_s if self.wall_s > 0 else math.nan
