"""The shutdown recipe: stop → drain within grace → close in reverse order, once."""

from __future__ import annotations

import asyncio

import pytest

from shared.lifecycle import Lifecycle, run_service


async def test_close_steps_run_in_reverse_order_once_even_if_one_fails() -> None:
    lc = Lifecycle(name="t", grace_s=1)
    order: list[str] = []

    async def closer(name: str) -> None:
        order.append(name)
        if name == "b":
            raise RuntimeError("b failed")

    for name in ("a", "b", "c"):
        lc.on_close(name, lambda n=name: closer(n))  # type: ignore[misc]
    await lc.shutdown()
    await lc.shutdown()
    assert order == ["c", "b", "a"]
    assert lc.stopping.is_set()


async def test_main_finishes_its_batch_after_a_stop_request() -> None:
    lc = Lifecycle(name="t", grace_s=5)
    finished = asyncio.Event()
    closed: list[str] = []

    async def main(lc: Lifecycle) -> None:
        lc.on_close("client", lambda: _append(closed, "client"))
        await lc.stopping.wait()
        await asyncio.sleep(0)  # the batch in hand
        finished.set()

    task = asyncio.create_task(run_service("t", main, grace_s=5, lifecycle=lc,
                                           install_signals=False))
    lc.request_stop("test")
    await asyncio.wait_for(task, 5)
    assert finished.is_set() and closed == ["client"]


async def test_main_that_overruns_the_grace_period_is_cancelled_and_clients_close() -> None:
    lc = Lifecycle(name="t", grace_s=0.05)
    closed: list[str] = []
    cancelled = asyncio.Event()

    async def main(lc: Lifecycle) -> None:
        lc.on_close("client", lambda: _append(closed, "client"))
        try:
            await asyncio.Event().wait()  # never drains
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(run_service("t", main, grace_s=0.05, lifecycle=lc,
                                           install_signals=False))
    await asyncio.sleep(0)
    lc.request_stop("test")
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set() and closed == ["client"]


async def test_a_crash_in_main_propagates_after_closing() -> None:
    closed: list[str] = []

    async def main(lc: Lifecycle) -> None:
        lc.on_close("client", lambda: _append(closed, "client"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await run_service("t", main, grace_s=1, install_signals=False)
    assert closed == ["client"]


async def test_sleep_wakes_early_on_stop() -> None:
    lc = Lifecycle(name="t", grace_s=1)
    asyncio.get_running_loop().call_soon(lc.request_stop, "test")
    assert await asyncio.wait_for(lc.sleep(30), 5) is True
    assert await Lifecycle(name="u", grace_s=1).sleep(0) is False


async def _append(target: list[str], item: str) -> None:
    target.append(item)
