"""Ingest under faults on the real stack: health tells the truth, waits are bounded.

* Kafka frozen (SIGSTOP of the broker): ``/health`` and ``/readyz`` answer 503 promptly,
  ``/livez`` 200; concurrent appends answer 503 + ``Retry-After`` + their request id within
  ``publish_timeout_ms`` and a margin; after SIGCONT the retries with the same request ids
  give exactly one row each (the first attempts may still reach Kafka: the signer stores one
  row per request id).
* Vault: a bad token, a token that may not read the key, a frozen and a sealed OpenBao each
  show in ``checks.vault.state`` while ingest stays ready (200, degraded); the signer's ops
  server says ``sealed`` too.
* ``/health`` asked 60 times, concurrently and one after another, probes once per window.
* PostgreSQL frozen: ingest is degraded, not unhealthy; an append with a client request id
  gives up its idempotency lookup after ``lookup_timeout_ms`` and is accepted; a read
  answers 503 within the command timeout; the entry is stored once the database is back.

Timings are measured and printed; the assertions use generous margins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from benchmarks.procs import tree_pids
from deploy.local.process import free_port
from services.signer import run_signer
from shared.db import Database, migrate
from shared.lifecycle import Lifecycle
from shared.settings import Settings
from shared.telemetry import Metrics
from shared.vault_errors import cacert_context
from tests.integration.test_ingest import (
    PARTITIONS,
    Ingest,
    b64,
    ingest_running,
    scan_topic,
    signer_running,
)
from tests.support.lanes import new_prefix, private_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PUBLISH_TIMEOUT_MS = 2000
#: what a request may take beyond the bound (a loaded 2-core machine); measured figures print
MARGIN_S = 5.0


@pytest.fixture
async def lane(settings: Settings, tmp_path: Path) -> Settings:
    s = await private_lane(
        settings, new_prefix("f"), PARTITIONS,
        http_port=0,
        tokens_file=str(tmp_path / "tokens.jsonl"),
        append_wait_ms=2000,
        publish_timeout_ms=PUBLISH_TIMEOUT_MS,
        health_timeout_s=1.0,
        health_cache_s=0.2,
        shutdown_grace_s=10.0,
        signer_batch_ms=5,
    )
    return s


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings)
    await migrate(database)
    yield database
    await database.close()


async def _get(ing: Ingest, path: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with ing.session.get(f"{ing.url}{path}") as r:
        return r.status, await r.json(), time.monotonic() - started


async def _fresh_health(ing: Ingest, lane: Settings) -> tuple[int, dict[str, Any], float]:
    """``/health`` once the answer cached before is stale (a probe that starts now)."""
    probes = ing.metrics.registry.get_sample_value("ledger_health_probes_total") or 0.0
    while True:
        answer = await _get(ing, "/health")
        now = ing.metrics.registry.get_sample_value("ledger_health_probes_total") or 0.0
        if now > probes:
            return answer
        await asyncio.sleep(lane.health_cache_s / 4)  # (paces the polling of the cache)


async def _append(ing: Ingest, rid: str) -> tuple[int, dict[str, Any], Any, float]:
    started = time.monotonic()
    status, doc, headers = await ing.append(
        {"subject": f"{ing.prefix}/frozen", "payload": b64(rid.encode())},
        Prefer="respond-async", Idempotency_Key=rid,
    )
    return status, doc, headers, time.monotonic() - started


@contextlib.contextmanager
def frozen(stack: Any, name: str) -> Any:
    """SIGSTOP a service's process group and every descendant (PostgreSQL's backends put
    themselves in sessions of their own, so the group alone would leave them serving)."""
    procs = stack.require(name).processes()
    assert procs, f"{name} runs as a local process"
    stopped: list[int] = []
    for p in procs:
        p.signal(signal.SIGSTOP)
        for pid in tree_pids(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
    try:
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for p in procs:
            p.signal(signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_kafka_frozen_every_request_answers_503_promptly_and_retries_store_once(
    lane: Settings, db: Database, stack: Any
) -> None:
    n = 200
    rids = [f"{lane.topic_append}-{i}" for i in range(n)]
    async with ingest_running(lane) as ing:
        status, doc, _, _ = await _append(ing, f"{lane.topic_append}-warm")
        assert status == 202, doc  # the producer is connected before the freeze
        status, body, _ = await _get(ing, "/health")
        assert status == 200 and body["kafka"] is True, body
        # one connection per request: the client's default pool (100) would queue the rest
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as unpooled:
            burst = dataclasses.replace(ing, session=unpooled)
            await _get(burst, "/livez")
            with frozen(stack, "kafka"):
                started = time.monotonic()
                results = await asyncio.gather(*(_append(burst, rid) for rid in rids))
                burst_s = time.monotonic() - started
                health = await _get(ing, "/health")
                ready = await _get(ing, "/readyz")
                live = await _get(ing, "/livez")
        slowest = max(r[3] for r in results)
        print(f"\nKafka frozen: {n} concurrent appends answered in {burst_s:.2f} s, slowest "
              f"{slowest:.2f} s (bound {PUBLISH_TIMEOUT_MS} ms); /health {health[2]:.2f} s")
        for rid, (status, doc, headers, _) in zip(rids, results, strict=True):
            assert status == 503, (rid, status, doc)
            assert int(headers["Retry-After"]) > 0 and doc["request_id"] == rid, doc
        assert slowest <= PUBLISH_TIMEOUT_MS / 1000 + MARGIN_S
        assert health[0] == 503 and health[1]["status"] == "unhealthy", health
        assert health[1]["kafka"] is False and health[1]["checks"]["kafka"]["ok"] is False
        assert health[2] <= lane.health_timeout_s + MARGIN_S
        assert ready[0] == 503 and ready[1]["ready"] is False
        assert live[0] == 200
        # Kafka is back: the same request ids again; the signer stores one row each
        async with signer_running(lane):
            async def retried() -> bool:
                again = await asyncio.gather(*(_append(ing, rid) for rid in rids))
                return all(r[0] in (201, 202) for r in again)

            await wait_for(retried, within=120, what="retries to be accepted after SIGCONT")

            async def stored() -> bool:
                count = await db.fetchval(
                    "SELECT count(*) FROM ledger.entries WHERE request_id = ANY($1::text[])",
                    rids)
                return bool(count == n)

            await wait_for(stored, within=180, what="one row per request id")
    rows = await db.fetch(
        "SELECT request_id, count(*) AS n FROM ledger.entries"
        " WHERE request_id = ANY($1::text[]) GROUP BY request_id", rids)
    assert sorted(r["request_id"] for r in rows) == sorted(rids)
    assert all(r["n"] == 1 for r in rows)
    published = [json.loads(v)["request_id"] for v in await scan_topic(lane, lane.topic_append)]
    print(f"records in {lane.topic_append} for the {n} request ids: "
          f"{sum(1 for p in published if p in set(rids))} (first attempts that still arrived "
          "plus retries); rows: one each")


def _vault(stack: Any) -> tuple[str, aiohttp.ClientSession]:
    """OpenBao's address, and a session that verifies its certificate (``VAULT_CACERT``)."""
    env = stack.endpoints()
    connector = aiohttp.TCPConnector(ssl=cacert_context(env.get("VAULT_CACERT", "")))
    return env["VAULT_ADDR"].rstrip("/"), aiohttp.ClientSession(connector=connector)


async def _vault_admin(stack: Any, method: str, path: str, body: Any = None) -> Any:
    openbao = stack.require("openbao")
    addr, session = _vault(stack)
    async with session as http, http.request(
        method, f"{addr}/v1/{path}", json=body,
        headers={"X-Vault-Token": openbao.root_token},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as r:
        assert r.status in (200, 204), (path, r.status, await r.text())
        return await r.json() if r.status == 200 else None


async def _unseal(stack: Any) -> None:
    openbao = stack.require("openbao")
    addr, session = _vault(stack)
    init = json.loads(await asyncio.to_thread(Path(openbao.init_path).read_text))
    async with session as http:
        for key in init["unseal_keys_b64"]:
            async with http.put(f"{addr}/v1/sys/unseal", json={"key": key}) as r:
                assert r.status == 200, await r.text()

        async def active() -> bool:
            async with http.get(f"{addr}/v1/sys/health") as r:
                return r.status == 200

        await wait_for(active, within=60, what="OpenBao active again")


async def _vault_state(ing: Ingest) -> tuple[int, str, str]:
    status, body, _ = await _get(ing, "/health")
    return status, body["status"], body["checks"]["vault"]["state"]


@contextlib.asynccontextmanager
async def _signer_ops(lane: Settings) -> AsyncIterator[str]:
    port = free_port()
    s = lane.model_copy(update={"metrics_port": port})
    lc = Lifecycle(name="signer", grace_s=s.shutdown_grace_s)
    task = asyncio.create_task(run_signer(s, lifecycle=lc, metrics=Metrics(),
                                          install_signals=False))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def listening() -> bool:
                try:
                    async with http.get(f"{url}/livez") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(listening, within=90, what="the signer's ops server")
        yield url
    finally:
        lc.request_stop("test over")
        await asyncio.wait_for(task, 60)


@pytest.mark.timeout(300)
async def test_vault_probe_authenticates_and_says_sealed(lane: Settings, stack: Any) -> None:
    bad = lane.model_copy(update={"vault_token": SecretStr("s.not-a-valid-token")})
    async with ingest_running(bad) as ing:
        assert await _vault_state(ing) == (200, "degraded", "token invalid")
    no_policy = await _vault_admin(stack, "POST", "auth/token/create",
                                   {"policies": ["default"], "ttl": "10m"})
    weak = lane.model_copy(update={"vault_token": SecretStr(no_policy["auth"]["client_token"])})
    async with ingest_running(weak) as ing:
        assert (await _vault_state(ing))[2] == "key not readable"
    async with ingest_running(lane) as ing, _signer_ops(lane) as signer:
        assert (await _vault_state(ing))[2] == "ok"
        with frozen(stack, "openbao"):  # a frozen Vault: the probe's timeout, still ready
            status, body, took = await _fresh_health(ing, lane)
        assert status == 200 and body["checks"]["vault"]["state"] == "timeout", body
        assert took <= lane.health_timeout_s + MARGIN_S
        await _vault_admin(stack, "PUT", "sys/seal")
        try:
            async def says_sealed() -> bool:
                return (await _vault_state(ing)) == (200, "degraded", "sealed")

            await wait_for(says_sealed, within=30, what="ingest's health to say sealed")
            async with aiohttp.ClientSession() as http:
                async def signer_says_sealed() -> bool:
                    async with http.get(f"{signer}/health") as r:
                        body = await r.json()
                    return bool(body["checks"]["vault"]["state"] == "sealed")

                await wait_for(signer_says_sealed, within=30,
                               what="the signer's health to say sealed")
                async with http.get(f"{signer}/livez") as r:
                    assert r.status == 200
                async with http.get(f"{signer}/readyz") as r:
                    # nothing to sign in this lane: the loop is not paused, so still ready
                    assert r.status == 200 and (await r.json())["status"] == "degraded"
            status, doc, _ = await ing.append(
                {"subject": f"{ing.prefix}/sealed", "payload": b64(b"x")},
                Prefer="respond-async")
            assert status == 202, doc  # appends still go to Kafka
        finally:
            await _unseal(stack)

        async def unsealed() -> bool:
            return (await _vault_state(ing))[2] == "ok"

        await wait_for(unsealed, within=30, what="ingest's health to see Vault back")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_database_frozen_appends_still_accepted_and_reads_answer_503(
    lane: Settings, db: Database, stack: Any
) -> None:
    async with ingest_running(lane) as ing:
        status, body, _ = await _get(ing, "/health")
        assert status == 200 and body["database"] == "ok", body
        with frozen(stack, "postgres"):
            health = await _fresh_health(ing, lane)
            appended = await _append(ing, f"{lane.topic_append}-db-frozen")
            started = time.monotonic()
            read_status, read = await ing.get("/entries", {"subject": f"{ing.prefix}/frozen"})
            read_s = time.monotonic() - started
        print(f"\nPostgreSQL frozen: /health {health[2]:.2f} s, append {appended[3]:.2f} s, "
              f"GET /entries {read_s:.2f} s")
        # appends still reach Kafka: 200 and degraded, the database named with its reason
        assert health[0] == 200 and health[1]["status"] == "degraded", health
        assert health[1]["database"] == "timeout"
        assert health[2] <= lane.health_timeout_s + MARGIN_S
        # the idempotency lookup is given up after lookup_timeout_ms; the append is published
        assert appended[0] == 202, appended
        assert appended[3] <= lane.lookup_timeout_ms / 1000 + MARGIN_S
        # reads need the database: 503 + Retry-After within the command timeout (10 s)
        assert read_status == 503, read
        assert read_s <= 10 + MARGIN_S
        async with signer_running(lane):
            async def stored() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM ledger.entries WHERE request_id = $1",
                    f"{lane.topic_append}-db-frozen") == 1)

            await wait_for(stored, within=120, what="the append stored once PostgreSQL is back")


async def test_health_probes_once_per_window_however_often_it_is_asked(lane: Settings) -> None:
    s = lane.model_copy(update={"health_cache_s": 60.0})
    async with ingest_running(s) as ing:
        probes = "ledger_health_probes_total"
        concurrent = await asyncio.gather(*(_get(ing, p) for p in ("/health", "/readyz") * 25))
        sequential = [await _get(ing, "/health") for _ in range(10)]
        assert {a[0] for a in concurrent + sequential} == {200}
        assert ing.metrics.registry.get_sample_value(probes) == 1
        assert {a[1]["status"] for a in sequential} == {concurrent[0][1]["status"]}
