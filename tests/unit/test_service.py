"""The service skeleton: dependencies open in order (waiting while down), the work runs on
their clients, ``/health`` comes from the pings, and everything closes in reverse order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.consumer import RebalanceHooks
from shared.errors import DatabaseUnavailable
from shared.health import OK, Check
from shared.lifecycle import Lifecycle
from shared.ops import register_stage_kafka
from shared.service import Service, at_once
from shared.settings import Settings
from shared.stage import Backoff

NO_WAIT = Backoff(base_s=0.001, cap_s=0.001)


class Client:
    def __init__(self, name: str, events: list[str], *, up: bool = True) -> None:
        self.name = name
        self.events = events
        self.is_up = up

    async def ping(self) -> bool:
        self.events.append(f"ping {self.name}")
        return self.is_up

    async def close(self) -> None:
        self.events.append(f"close {self.name}")


def opener(name: str, events: list[str], *, fails: int = 0) -> Callable[[], Awaitable[Client]]:
    """Opens a client after ``fails`` attempts that find the service down."""
    attempts = 0

    async def open_client() -> Client:
        nonlocal attempts
        attempts += 1
        if attempts <= fails:
            raise DatabaseUnavailable(f"{name} is down")
        events.append(f"open {name}")
        return Client(name, events)

    return open_client


async def test_opens_in_order_runs_the_work_and_closes_in_reverse() -> None:
    events: list[str] = []
    service = Service("t", grace_s=1, backoff=NO_WAIT)
    db = service.register("database", opener("db", events), close=Client.close)
    kafka = service.register("kafka", opener("kafka", events), close=Client.close)

    async def work(lc: Lifecycle) -> None:
        events.append(f"work on {db.client.name} and {kafka.client.name}")
        lc.on_close("server", lambda: _append(events, "close server"))

    await service.run(work, install_signals=False)
    assert events == ["open db", "open kafka", "work on db and kafka",
                      "close server", "close kafka", "close db"]


async def test_a_dependency_down_at_start_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    service = Service("t", grace_s=1, backoff=NO_WAIT)
    service.register("database", opener("db", events, fails=3), close=Client.close)

    async def work(lc: Lifecycle) -> None:
        events.append("work")

    with caplog.at_level(logging.WARNING, logger="ledger.service"):
        await service.run(work, install_signals=False)
    assert events == ["open db", "work", "close db"]
    waits = [r for r in caplog.records if r.msg == "dependency not ready at start-up; retrying"]
    assert [r.__dict__["dependency"] for r in waits] == ["database"] * 3


async def test_a_stop_while_waiting_skips_the_work_and_closes_what_opened() -> None:
    events: list[str] = []
    service = Service("t", grace_s=1, backoff=Backoff(base_s=0.05, cap_s=0.05))
    service.register("kafka", opener("kafka", events), close=Client.close)
    service.register("database", opener("db", events, fails=10**9), close=Client.close)

    async def work(lc: Lifecycle) -> None:
        events.append("work")

    lc = Lifecycle(name="t", grace_s=1)
    task = asyncio.create_task(service.run(work, lifecycle=lc, install_signals=False))
    await asyncio.sleep(0.2)
    lc.request_stop("test")
    await asyncio.wait_for(task, 5)
    assert events == ["open kafka", "close kafka"]


async def test_health_comes_from_the_pings_by_dependency_name() -> None:
    events: list[str] = []
    service = Service("t", grace_s=1, backoff=NO_WAIT)
    db = service.register("database", opener("db", events), close=Client.close,
                          ping=Client.ping)
    service.register("kafka", opener("producer", events), close=Client.close,
                     what="kafka producer")  # no ping: does not count
    tail = service.register("kafka", opener("tail", events), close=Client.close,
                            ping=Client.ping, what="kafka tail")
    service.register("vault", opener("vault", events), close=Client.close)  # never reported
    assert await service.health() == {  # nothing open yet
        "database": Check(False, "not open"), "kafka": Check(False, "not open")}
    seen: list[dict[str, bool]] = []

    async def work(lc: Lifecycle) -> None:
        seen.append(_oks(await service.health()))
        tail.client.is_up = False
        seen.append(_oks(await service.health()))
        db.client.is_up = False
        checks = service.health_checks()
        seen.append({name: (await check()).ok for name, check in checks.items()})

    await service.run(work, install_signals=False)
    assert seen == [{"database": True, "kafka": True}, {"database": True, "kafka": False},
                    {"database": False, "kafka": False}]
    assert list(seen[0]) == ["database", "kafka"]  # in the order registered
    pings = [e for e in events if e.startswith("ping")]
    assert pings[:2] == ["ping db", "ping tail"]  # asked one after another, in that order


async def test_what_a_dependency_opens_can_be_replaced_before_the_run() -> None:
    events: list[str] = []
    service = Service("t", grace_s=1, backoff=NO_WAIT)
    rekor = service.register("rekor", opener("real", events), close=Client.close)
    rekor.open = at_once(lambda: Client("instrumented", events))
    used: list[str] = []

    async def work(lc: Lifecycle) -> None:
        used.append(rekor.client.name)

    await service.run(work, install_signals=False)
    assert used == ["instrumented"] and events == ["close instrumented"]


def test_a_client_is_registered_once() -> None:
    service = Service("t", grace_s=1)
    service.register("database", opener("db", []), close=Client.close)
    with pytest.raises(ValueError, match="registered twice"):
        service.register("database", opener("db", []), close=Client.close)
    with pytest.raises(RuntimeError, match="not open"):
        _ = Service("u", grace_s=1).register("rekor", opener("r", []), close=Client.close).client


async def test_a_stage_reports_kafka_up_while_it_consumes() -> None:
    service = Service("signer", grace_s=1, backoff=NO_WAIT)
    consuming = False
    producer, consumer = register_stage_kafka(
        service, Settings(), group_id="g", topic="t", hooks=RebalanceHooks(),
        consuming=lambda: consuming, fetch_max_wait_ms=5, fetch_min_bytes=1,
    )
    assert [producer.what, consumer.what] == ["kafka producer", "kafka consumer"]
    assert producer.name == consumer.name == "kafka"
    fake: Any = object()  # no broker here: the clients are stand-ins
    producer.open, consumer.open = at_once(lambda: fake), at_once(lambda: fake)
    producer.close = consumer.close = _close_nothing
    seen: list[dict[str, Check]] = []

    async def work(lc: Lifecycle) -> None:
        nonlocal consuming
        seen.append(await service.health())
        consuming = True
        seen.append(await service.health())

    await service.run(work, install_signals=False)
    assert seen == [{"kafka": Check(False, "paused")}, {"kafka": OK}]


async def test_a_ping_that_hangs_is_cut_off_and_reported_as_timeout() -> None:
    service = Service("t", grace_s=1, backoff=NO_WAIT)
    never = asyncio.Event()

    async def hangs(_: object) -> bool:
        await never.wait()
        return True

    service.register("rekor", at_once(object), close=_close_nothing, ping=hangs)
    seen: list[dict[str, Check]] = []

    async def work(lc: Lifecycle) -> None:
        seen.append(await service.health(timeout_s=0.05))

    await service.run(work, install_signals=False)
    assert seen == [{"rekor": Check(False, "timeout")}]


def _oks(checks: dict[str, Check]) -> dict[str, bool]:
    return {name: check.ok for name, check in checks.items()}


async def _append(target: list[str], item: str) -> None:
    target.append(item)


async def _close_nothing(_: object) -> None:
    return None
