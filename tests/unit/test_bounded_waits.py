"""Every wait on a dependency has a timeout: a scan of services/ and shared/ that finds any
that does not, including one added later.

A *dependency wait* is an ``await``, ``async with`` or ``async for`` on a method of a
dependency client: the receiver is named like one (``producer``, ``consumer``, ``pool``,
``conn``, ``session``, ``response``, ``client``…; ``self._x`` counts as ``_x``). It is
*bounded* when it is

* inside ``async with asyncio.timeout(...)``, or an argument of ``asyncio.wait_for(...)``;
* given a ``timeout``/``timeout_s``/``timeout_ms`` keyword argument;
* or listed in :data:`BOUNDED_ELSEWHERE` with the reason it is bounded where the scan
  cannot see it (the caller's ``wait_for``, a session-wide ``ClientTimeout``…).

A new unbounded wait fails :func:`test_every_dependency_wait_is_bounded`; an entry of the
allow-list that no longer matches anything fails :func:`test_the_allow_list_has_no_stale_entries`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("services", "shared")

#: a receiver named like a dependency client (asyncpg, aiokafka, aiohttp, hvac)
_CLIENT = re.compile(
    r"^_?(producer|consumer|pool|conn|connection|session|response|resp|client|http|"
    r"aiokafka|kafka|redis)$"
)
_TIMEOUT_KWARGS = frozenset({"timeout", "timeout_s", "timeout_ms"})

#: "path::function::receiver.method" → why it is bounded although the scan cannot see it
BOUNDED_ELSEWHERE: dict[str, str] = {
    # --- shared/kafka.py: the adapter over aiokafka ------------------------------------------
    "shared/kafka.py::_send_many::_producer.partitions_for":
        "only called through send_many's asyncio.wait_for(self._send_many(...))",
    "shared/kafka.py::_send_many::_producer.send_batch":
        "only called through send_many's asyncio.wait_for(self._send_many(...))",
    "shared/kafka.py::send_each::_producer.partitions_for":
        "metadata wait bounded by aiokafka's request_timeout_ms; ingest's caller also stops "
        "waiting after publish_timeout_ms (services/ingest/publisher.py)",
    "shared/kafka.py::send_each::_producer.send":
        "buffer wait bounded by aiokafka's request_timeout_ms; ingest's caller also stops "
        "waiting after publish_timeout_ms (services/ingest/publisher.py)",
    "shared/kafka.py::dead_letter::producer.send":
        "Producer.send: the adapter's own asyncio.wait_for(send_and_wait, send_timeout)",
    # --- the project's Kafka wrappers (shared.kafka.Producer / Consumer), bounded inside ---
    "services/anchorer/app.py::publish::_producer.send_many":
        "shared.kafka.Producer.send_many: asyncio.wait_for inside",
    "services/ingest/publisher.py::_flush::producer.send_each":
        "the flush runs on; each caller waits at most publish_timeout_ms (send_many)",
    "services/signer/publisher.py::publish_signed::_producer.send_many":
        "shared.kafka.Producer.send_many: asyncio.wait_for inside",
    "shared/consumer.py::_report_lag::_consumer.lag":
        "shared.kafka.Consumer.lag: asyncio.wait_for inside",
    "shared/stage.py::__call__::_consumer.commit":
        "shared.kafka.Consumer.commit: asyncio.wait_for inside",
    "services/ingest/publisher.py::close::_producer.close":
        "shared.kafka.Producer.close: asyncio.wait_for inside",
    # --- services/ingest/waiter.py: the ledger.signed tail (aiokafka) ---------------------
    "services/ingest/waiter.py::_start::_consumer.start":
        "only called through start's asyncio.wait_for(self._start(), start timeout)",
    "services/ingest/waiter.py::_start::_consumer.seek_to_end":
        "only called through start's asyncio.wait_for(self._start(), start timeout)",
    "services/ingest/waiter.py::_start::_consumer.position":
        "only called through start's asyncio.wait_for(self._start(), start timeout)",
    "services/ingest/waiter.py::start::_consumer.stop":
        "aiokafka stop closes local connections; it does not wait on the broker",
    "services/ingest/waiter.py::close::_consumer.stop":
        "aiokafka stop closes local connections; it does not wait on the broker",
    "services/ingest/waiter.py::ping::_consumer.topics":
        "a health probe: shared.health.guarded cuts it off after health_timeout_s",
    # --- shared/db.py: asyncpg --------------------------------------------------------------
    "shared/db.py::execute::_conn.execute":
        "asyncpg pool created with command_timeout (Database.connect)",
    "shared/db.py::executemany::_conn.executemany":
        "asyncpg pool created with command_timeout (Database.connect)",
    "shared/db.py::fetch::_conn.fetch":
        "asyncpg pool created with command_timeout (Database.connect)",
    "shared/db.py::fetchrow::_conn.fetchrow":
        "asyncpg pool created with command_timeout (Database.connect)",
    "shared/db.py::fetchval::_conn.fetchval":
        "asyncpg pool created with command_timeout (Database.connect)",
    "shared/db.py::_run_once::conn.transaction":
        "BEGIN on a connection of the pool created with command_timeout",
    "shared/db.py::_apply::conn.transaction":
        "BEGIN on a connection of the pool created with command_timeout",
    "shared/db.py::connect::pool.close":
        "closing a pool that failed its first query: local, after the wait_for above",
    # --- aiohttp sessions created with a session-wide ClientTimeout(total=...) ------------
    "shared/health.py::_get::_session.get":
        "VaultProbe's session: ClientTimeout(total=health_timeout_s)",
    "shared/health.py::_get::response.json":
        "VaultProbe's session: ClientTimeout(total=health_timeout_s)",
    "shared/vault.py::_post::_session.request":
        "HttpTransit's session: ClientTimeout(total=timeout_s)",
    "shared/vault.py::_post::resp.read":
        "HttpTransit's session: ClientTimeout(total=timeout_s)",
    # --- aiohttp sessions closed at shutdown: no request is made ------------------------
    "shared/health.py::close::_session.close": "closes local connections only",
    "shared/http_client.py::close::session.close": "closes local connections only",
    "shared/vault.py::close::_session.close": "closes local connections only",
}


def _receiver(call: ast.Call) -> tuple[str, str] | None:
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    value = func.value
    if isinstance(value, ast.Call):  # self._client().method(...)
        value = value.func
    if isinstance(value, ast.Attribute):
        return value.attr, func.attr
    if isinstance(value, ast.Name):
        return value.id, func.attr
    return None


def _is_timeout_guard(node: ast.AST) -> bool:
    """``asyncio.timeout(...)``/``timeout(...)``/``asyncio.wait_for(...)``/``wait_for(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("timeout", "timeout_at", "wait_for")


def _waits(tree: ast.Module) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    """Every awaited call with its ancestors (innermost first)."""
    stack: list[ast.AST] = []

    def visit(node: ast.AST) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
        calls: list[ast.expr] = []
        if isinstance(node, ast.Await):
            calls = [node.value]
        elif isinstance(node, ast.AsyncWith):
            calls = [item.context_expr for item in node.items]
        elif isinstance(node, ast.AsyncFor):
            calls = [node.iter]
        for call in calls:
            if isinstance(call, ast.Call):
                yield call, list(reversed(stack))
        stack.append(node)
        for child in ast.iter_child_nodes(node):
            yield from visit(child)
        stack.pop()

    yield from visit(tree)


def _bounded(call: ast.Call, ancestors: list[ast.AST]) -> bool:
    if _has_timeout(call):
        return True
    for node in ancestors:
        if _is_timeout_guard(node):
            return True  # an argument of wait_for(...)
        if isinstance(node, ast.AsyncWith) and any(
            _is_timeout_guard(item.context_expr) or _has_timeout(item.context_expr)
            for item in node.items
        ):
            return True  # asyncio.timeout, or a request whose timeout covers its body
    return False


def _has_timeout(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and any(k.arg in _TIMEOUT_KWARGS for k in node.keywords)


def _dependency_waits() -> dict[str, list[str]]:
    """key (as in BOUNDED_ELSEWHERE) → where, for every unbounded dependency wait."""
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            for call, ancestors in _waits(tree):
                target = _receiver(call)
                if target is None or not _CLIENT.match(target[0]):
                    continue
                if _bounded(call, ancestors):
                    continue
                function = next(
                    (a.name for a in ancestors
                     if isinstance(a, ast.AsyncFunctionDef | ast.FunctionDef)),
                    "<module>",
                )
                key = f"{rel}::{function}::{target[0]}.{target[1]}"
                found.setdefault(key, []).append(f"{rel}:{call.lineno}")
    return found


def test_every_dependency_wait_is_bounded() -> None:
    unbounded = {k: v for k, v in _dependency_waits().items() if k not in BOUNDED_ELSEWHERE}
    assert not unbounded, (
        "waits on a dependency without a timeout (wrap in asyncio.timeout/wait_for, pass a "
        f"timeout, or add to BOUNDED_ELSEWHERE with the reason): {unbounded}"
    )


def test_the_allow_list_has_no_stale_entries() -> None:
    stale = set(BOUNDED_ELSEWHERE) - set(_dependency_waits())
    assert not stale, f"BOUNDED_ELSEWHERE entries that match nothing any more: {sorted(stale)}"


def test_the_scan_finds_an_unbounded_wait_and_accepts_a_bounded_one() -> None:
    source = (
        "async def f(self):\n"
        "    await self._producer.send_and_wait('t', b'v')\n"
        "    async with asyncio.timeout(1):\n"
        "        await self._pool.fetch('SELECT 1')\n"
        "    await asyncio.wait_for(self._consumer.getmany(), 1)\n"
        "    async with self._session.get(url, timeout=2) as response:\n"
        "        await response.read()\n"
    )
    tree = ast.parse(source)
    unbounded = [
        _receiver(call) for call, ancestors in _waits(tree)
        if not _bounded(call, ancestors) and (r := _receiver(call)) and _CLIENT.match(r[0])
    ]
    assert unbounded == [("_producer", "send_and_wait")]
    tree = ast.parse("async def g(session):\n    async with session.get(url) as r:\n"
                     "        await r.read()\n")
    assert [_receiver(c) for c, a in _waits(tree) if not _bounded(c, a)] == [
        ("session", "get"), ("r", "read")]
