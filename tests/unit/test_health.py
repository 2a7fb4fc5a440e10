"""The health vocabulary (shared.health) and the stages' ops server (shared.ops)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
import pytest

from shared.health import OK, Check, HealthCache, guarded, health_body, overall
from shared.ops import serve_ops
from shared.settings import Settings
from shared.telemetry import Metrics
from tests.support.waiting import wait_for


def test_status_is_unhealthy_only_when_a_required_check_is_down() -> None:
    up = {"database": OK, "kafka": OK, "vault": OK}
    assert overall(up, required=["kafka"]) == "healthy"
    assert overall({**up, "vault": Check(False, "sealed")}, required=["kafka"]) == "degraded"
    assert overall({**up, "kafka": Check(False, "paused")}, required=["kafka"]) == "unhealthy"


def test_body_keeps_the_runbook_shape_with_details_beside() -> None:
    body = health_body(
        {"database": Check(False, "unreachable"), "rekor": OK, "kafka": OK,
         "vault": Check(False, "token invalid")},
        required=["kafka"],
    )
    assert body == {
        "status": "degraded", "database": "unreachable", "rekor": True, "kafka": True,
        "vault": False,
        "checks": {"database": {"ok": False, "state": "unreachable"},
                   "rekor": {"ok": True, "state": "ok"}, "kafka": {"ok": True, "state": "ok"},
                   "vault": {"ok": False, "state": "token invalid"}},
    }
    assert health_body({"database": OK}, required=[])["database"] == "ok"


async def test_a_probe_that_raises_or_hangs_is_down_not_an_error() -> None:
    async def raises() -> bool:
        raise RuntimeError("boom")

    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    assert await guarded(raises, timeout_s=1) == Check(False, "error")
    assert await guarded(hangs, timeout_s=0.01) == Check(False, "timeout")


async def test_a_probe_slow_to_cancel_still_answers_at_the_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # a clean-up that takes its time (asyncpg, frozen server)
            raise
        return True

    answer = asyncio.create_task(guarded(stubborn, timeout_s=0.05))
    await wait_for(lambda: _true(answer.done()), within=5, what="the answer at the timeout")
    assert answer.result() == Check(False, "timeout")
    release.set()


async def test_cache_shares_one_probe_and_reprobes_after_the_window() -> None:
    now = 100.0
    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return f"at {now}"

    cache = HealthCache(probe, ttl_s=1.0, clock=lambda: now)
    callers = [asyncio.create_task(cache.get()) for _ in range(50)]
    await wait_for(lambda: _true(cache.probes == 1), within=5, what="the probe to start")
    callers[0].cancel()  # a caller that gives up does not cancel the shared probe
    release.set()
    results = await asyncio.gather(*callers[1:])
    assert set(results) == {"at 100.0"} and cache.probes == 1
    now = 100.9
    assert await cache.get() == "at 100.0" and cache.probes == 1
    now = 101.5
    assert await cache.get() == "at 101.5" and cache.probes == 2


async def _true(value: bool) -> bool:
    return value


class _Stage:
    def __init__(self) -> None:
        self.checks: dict[str, Check] = {"database": OK, "vault": OK, "kafka": OK}
        self.calls = 0

    async def health(self) -> Mapping[str, Check]:
        self.calls += 1
        return dict(self.checks)


@pytest.fixture
async def ops() -> AsyncIterator[tuple[str, _Stage, Metrics]]:
    stage, metrics = _Stage(), Metrics()
    runner = await serve_ops(Settings(metrics_port=0, health_cache_s=0), metrics, stage.health)
    try:
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        yield f"http://127.0.0.1:{port}", stage, metrics
    finally:
        await runner.cleanup()


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, await r.json()


async def test_stage_ops_server_speaks_the_same_vocabulary(
    ops: tuple[str, _Stage, Metrics],
) -> None:
    url, stage, metrics = ops
    status, body = await _get(url + "/health")
    assert status == 200 and body["status"] == "healthy" and body["paused"] is False
    assert body["database"] == "ok" and body["vault"] is True
    # Vault sealed: the loop pauses on it; health says both
    stage.checks.update({"vault": Check(False, "sealed"), "kafka": Check(False, "paused")})
    status, body = await _get(url + "/health")
    assert status == 503 and body["status"] == "unhealthy" and body["paused"] is True
    assert body["checks"] == {"database": {"ok": True, "state": "ok"},
                              "vault": {"ok": False, "state": "sealed"},
                              "kafka": {"ok": False, "state": "paused"}}
    assert await _get(url + "/readyz") == (503, {"status": "unhealthy", "ready": False})
    assert await _get(url + "/livez") == (200, {"status": "alive"})
    # the loop consumes again while the database is down: degraded, still ready
    stage.checks = {"database": Check(False, "timeout"), "vault": OK, "kafka": OK}
    assert await _get(url + "/readyz") == (200, {"status": "degraded", "ready": True})
    assert metrics.registry.get_sample_value("ledger_health_probes_total") == stage.calls == 4
