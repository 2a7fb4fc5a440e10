"""The local stack itself: services answer real requests, bind only loopback, survive a
restart with the same ports and data, and leave no process behind when stopped.

Kafka and database *contracts* are tested elsewhere; here only the stack's own promises.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local.base import default_cache_dir, port_available
from deploy.local.kafka import TOPICS, Kafka, partitions_from_env
from deploy.local.process import ManagedProcess
from deploy.local.sockets import is_loopback, listeners
from deploy.local.stack import Stack, stack_status
from shared.kafka_tls import client_options
from shared.settings import Settings

pytestmark = pytest.mark.integration


# --- helpers ----------------------------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    """Every live process in process group ``pgid`` (a service and its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _all_pids(processes: list[ManagedProcess]) -> list[int]:
    pids: list[int] = []
    for proc in processes:
        if proc.running():
            pids += _group_pids(proc.pid)
    return pids


async def _pg_roundtrip(dsn: str, table: str, value: str | None = None) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (v text)")
        if value is not None:
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", value)
        return [r["v"] for r in await conn.fetch(f"SELECT v FROM {table} ORDER BY v")]
    finally:
        await conn.close()


# --- the session stack ------------------------------------------------------------------------


async def test_postgres_answers(stack: Stack) -> None:
    dsn = stack.endpoints()["CRDB_DSN"]
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        user, superuser = await conn.fetchrow(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    if stack.service("postgres") is not None:
        assert int(version) // 10000 == 15
        assert user == "ledger"
        assert superuser is False
    table = f"stack_probe_{uuid.uuid4().hex[:8]}"
    assert await _pg_roundtrip(dsn, table, "x") == ["x"]


async def test_postgres_tcp_needs_the_password(stack: Stack) -> None:
    if stack.service("postgres") is None:
        pytest.skip("external PostgreSQL")
    dsn = stack.endpoints()["CRDB_DSN"]
    without_password = dsn.replace(dsn.split("//")[1].split("@")[0], "ledger")
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(without_password.replace("ledger@", "postgres@"), timeout=10)


def _kafka(endpoints: dict[str, str]) -> dict[str, Any]:
    """aiokafka's connection keywords for a stack's endpoints (its administrator)."""
    return client_options(Settings.from_env(environ=endpoints))


async def test_kafka_answers_with_the_pipeline_topics(stack: Stack) -> None:
    admin = AIOKafkaAdminClient(**_kafka(stack.endpoints()))
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        assert set(TOPICS) <= topics
        if stack.service("kafka") is not None:
            described = await admin.describe_topics(list(TOPICS))
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            assert counts == dict.fromkeys(TOPICS, partitions_from_env())
    finally:
        await admin.close()


async def test_kafka_does_not_auto_create_topics(stack: Stack) -> None:
    if stack.service("kafka") is None:
        pytest.skip("external Kafka")
    kafka = _kafka(stack.endpoints())
    name = f"stack.no-such-topic.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(**kafka, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - aiokafka: timeout or unknown topic
            await producer.send_and_wait(name, b"x")
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(**kafka)
    await admin.start()
    try:
        assert name not in await admin.list_topics()
    finally:
        await admin.close()


def test_services_listen_on_loopback_only(stack: Stack) -> None:
    if not stack.services:
        pytest.skip("every service is external")
    problems = []
    for name, processes in stack.processes().items():
        pids = _all_pids(processes)
        assert pids, f"{name}: no running process"
        sockets = listeners(pids, ("tcp", "tcp6", "udp", "udp6"))
        assert any(p.startswith("tcp") for p, _, _ in sockets), f"{name}: listens nowhere"
        for proto, addr, port in sockets:
            if not is_loopback(addr):
                problems.append(f"{name}: {proto} {addr}:{port}")
    assert not problems, f"non-loopback listeners: {problems}"


def test_status_sees_the_session_stack(stack: Stack) -> None:
    supervisor, services, processes = stack_status(stack.stack_dir)
    assert supervisor == os.getpid()
    by_name = {s.name: s for s in services}
    for name in stack.services:
        assert all(by_name[name].listening.values()), by_name[name]
    alive = {p.name: p.pid for p in processes if p.alive}
    for procs in stack.processes().values():
        for proc in procs:
            assert alive.get(proc.name) == proc.pid, proc.name


def test_endpoints_file_is_sourceable(stack: Stack) -> None:
    env_file = stack.env_file
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    out = subprocess.run(
        ["sh", "-c", f". {env_file} && env"], capture_output=True, text=True, check=True
    ).stdout
    for key, value in stack.endpoints().items():
        assert f"{key}={value}" in out.splitlines()


# --- a private stack: restart and stop ---------------------------------------------------------


@pytest.mark.timeout(300)
async def test_postgres_starts_in_a_checkout_below_an_owner_only_directory(
    stack_run_dir: Path,
) -> None:
    """A clone inside ``mktemp -d`` (mode 700, root's group): PostgreSQL, run as its own
    user when we are root, must still reach its data directory."""
    owner_only = stack_run_dir / "mktemp"
    owner_only.mkdir(mode=0o700)
    owner_only.chmod(0o700)
    private = Stack(owner_only / "clone" / ".stack", services=["postgres"], environ={})
    try:
        private.start_all()
        dsn = private.endpoints()["CRDB_DSN"]
        assert await _pg_roundtrip(dsn, "owner_only_probe", "reached") == ["reached"]
    finally:
        private.stop_all()


async def test_restart_reuses_ports_and_data_and_stop_leaves_nothing(stack_run_dir: Path) -> None:
    private = Stack(stack_run_dir / "restart", services=["postgres", "kafka"], environ={})
    private.install_all()
    try:
        private.start_all()
        first = private.endpoints()
        dsn, kafka = first["CRDB_DSN"], _kafka(first)
        assert await _pg_roundtrip(dsn, "restart_probe", "before") == ["before"]
        producer = AIOKafkaProducer(**kafka, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("ledger.append", b"survives", key=b"k", partition=0)
        finally:
            await producer.stop()
        ports = {n: s.load_state()["ports"] for n, s in private.services.items()}
        pids = _all_pids([p for ps in private.processes().values() for p in ps])
        assert pids

        private.stop_all()
        private.stop_all()  # safe twice
        _assert_gone(pids, ports, private)

        private.start_all()
        assert private.endpoints() == first
        assert {n: s.load_state()["ports"] for n, s in private.services.items()} == ports
        assert await _pg_roundtrip(dsn, "restart_probe") == ["before"]
        consumer = AIOKafkaConsumer(**_kafka(first), enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition("ledger.append", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            batch = await consumer.getmany(tp, timeout_ms=10000)
            assert [m.value for m in batch.get(tp, [])] == [b"survives"]
        finally:
            await consumer.stop()
        pids = _all_pids([p for ps in private.processes().values() for p in ps])
    finally:
        private.stop_all()
    _assert_gone(pids, ports, private)


def _assert_gone(pids: list[int], ports: dict[str, dict[str, int]], stack: Stack) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    assert not alive, f"processes left: {alive}"
    assert not list((stack.stack_dir / "pids").glob("*.pid"))
    assert not (stack.stack_dir / "supervisor.pid").exists()
    for service_ports in ports.values():
        for port in service_ports.values():
            assert port_available(port), port


@pytest.mark.timeout(180)
def test_cli_up_status_env_down(stack_run_dir: Path) -> None:
    """`ledger stack up` in the background, then `status`, `env` and `down` from outside."""
    stack_dir = stack_run_dir / "cli"
    env = {
        k: v for k, v in os.environ.items()
        if k not in {"CRDB_DSN", "KAFKA_BOOTSTRAP_SERVERS", "VAULT_ADDR", "REKOR_SERVER_URL"}
    }
    env.update(LEDGER_STACK_DIR=str(stack_dir), LEDGER_STACK_SERVICES="postgres")
    cli = [sys.executable, "-m", "ledger.cli"]
    up = subprocess.Popen([*cli, "stack", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (stack_dir / "endpoints.env").exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "stack up did not get ready"
            time.sleep(0.2)
        status = subprocess.run([*cli, "stack", "status"], env=env, capture_output=True,
                                text=True, check=True)
        assert "postgres" in status.stdout and "running" in status.stdout
        exported = subprocess.run([*cli, "stack", "env"], env=env, capture_output=True,
                                  text=True, check=True).stdout
        assert exported.startswith("export CRDB_DSN='postgresql://ledger:")
        assert "sslmode=verify-full&sslrootcert=" in exported
        assert "export LEDGER_REQUIRE_TLS=true" in exported
        pg_pid = int((stack_dir / "pids" / "postgres.pid").read_text())
        down = subprocess.run([*cli, "stack", "down"], env=env, capture_output=True, text=True,
                              check=True, timeout=120)
        assert "supervisor" in down.stdout
        assert up.wait(30) == 0
        output = up.stdout.read() if up.stdout else ""
        assert "stopped" in output
        assert not Path(f"/proc/{pg_pid}").exists()
        status = subprocess.run([*cli, "stack", "status"], env=env, capture_output=True,
                                text=True, check=False)
        assert status.returncode == 3, status.stdout
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        subprocess.run([*cli, "stack", "down"], env=env, capture_output=True, check=False)


def test_kafka_formats_with_a_cluster_id_that_starts_with_a_dash(stack_run_dir: Path) -> None:
    """Base64url cluster ids start with "-" one time in 64; the storage tool must not read
    such an id as an option (a CI run failed on exactly that)."""
    kafka = Kafka(stack_run_dir / "dash-cluster-id", default_cache_dir())
    kafka.save_state({**kafka.load_state(), "cluster_id": "-LedgerTestClusterId1"})
    try:
        kafka.start(lambda _message: None)
        meta = (kafka.data_dir / "meta.properties").read_text()
        assert "cluster.id=-LedgerTestClusterId1" in meta
        assert kafka.endpoints()["KAFKA_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:")
    finally:
        kafka.stop()
