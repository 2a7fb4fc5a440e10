"""Unit tests of the local-stack plumbing that need no running service."""

from __future__ import annotations

import io
import json
import socket
import subprocess
from pathlib import Path

import pytest

from deploy.local import stack as stack_mod
from deploy.local.base import LocalService, Progress, port_available
from deploy.local.containers import require_docker
from deploy.local.kafka import Kafka, partitions_from_env
from deploy.local.openbao import OPENBAO_ENV_NAMES, TLS_ENV, OpenBao, tls_from_env
from deploy.local.process import StackError
from deploy.local.stack import SERVICE_ORDER, Stack, stack_status, stop_stale
from ledger.cli import ProgressDisplay, build_parser


class Dummy(LocalService):
    name = "dummy"

    def install(self, progress: Progress) -> None:
        progress("nothing to install")

    def start(self, progress: Progress) -> None:
        self.port()

    def stop(self) -> None:
        pass

    def endpoints(self) -> dict[str, str]:
        return {"DUMMY": str(self.port())}


def test_ports_are_persisted_and_replaced_only_when_taken(tmp_path: Path) -> None:
    service = Dummy(tmp_path, tmp_path / "cache")
    first = service.port()
    assert service.port() == first
    assert Dummy(tmp_path, tmp_path / "cache").port() == first  # survives a new object
    other = service.port("other")
    assert other != first
    assert oct(service.state_path.stat().st_mode & 0o777) == "0o600"
    with socket.socket() as holder:  # someone else takes the port
        holder.bind(("127.0.0.1", first))
        holder.listen(1)
        assert not port_available(first)
        replacement = service.port()
    assert replacement not in (first, other)
    assert json.loads(service.state_path.read_text())["ports"]["port"] == replacement


def test_all_external_services_start_nothing(tmp_path: Path) -> None:
    env = {
        "CRDB_DSN": "postgresql://u:p@db.example:5432/ledger",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9092",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": "/etc/ledger/kafka-ca.pem",
        "LEDGER_SIGNER_KAFKA_SSL_CERTFILE": "/run/secrets/signer-kafka.pem",
        "VAULT_ADDR": "http://vault.example:8200",
        "VAULT_TOKEN": "t",
        "VAULT_TRANSIT_KEY": "k",
        "VAULT_CACERT": "/etc/ledger/vault-ca.pem",
        "LEDGER_SIGNER_VAULT_TOKEN_FILE": "/run/secrets/signer.token",
        "LEDGER_ANCHORER_VAULT_TOKEN_FILE": "/run/secrets/anchorer.token",
        "LEDGER_REQUIRE_TLS": "true",
        "REKOR_SERVER_URL": "http://rekor.example",
        "LEDGER_REKOR_V2_SERVER_URL": "http://rekor-v2.example",
        "LEDGER_REKOR_V2_TILES_URL": "http://tiles.rekor-v2.example",
        "LEDGER_REKOR_V2_PUBLIC_KEY": "/etc/ledger/rekor-v2.pem",
        "LEDGER_REKOR_V2_ORIGIN": "rekor-v2.example",
        "LEDGER_TSA_URL": "http://tsa.example",
        "LEDGER_TSA_CERT_CHAIN": "/etc/ledger/tsa-chain.pem",
    }
    stack = Stack(tmp_path, tmp_path / "cache", environ=env)
    assert stack.services == {}
    assert stack.endpoints() == env
    stack.start_all()
    stack.stop_all()
    stack.stop_all()
    assert "export KAFKA_BOOTSTRAP_SERVERS=kafka.example:9092" in stack.env_file.read_text()


def test_external_database_still_gives_rekor_a_local_postgres(tmp_path: Path) -> None:
    env = {"CRDB_DSN": "postgresql://u:p@db.example:5432/ledger"}
    stack = Stack(tmp_path, tmp_path / "cache", services=["postgres", "rekor"], environ=env)
    assert list(stack.services) == ["postgres", "rekor"]
    assert stack.endpoints()["CRDB_DSN"] == env["CRDB_DSN"]


def test_service_subset_and_unknown_names(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path / "cache", environ={"LEDGER_STACK_SERVICES": "kafka,postgres"})
    assert list(stack.services) == ["postgres", "kafka"]
    assert stack.service("rekor") is None
    with pytest.raises(StackError):
        stack.require("rekor")
    with pytest.raises(StackError, match="unknown service"):
        Stack(tmp_path, tmp_path / "cache", services=["mysql"], environ={})


def test_missing_service_module_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stack_mod._MODULES, "openbao", ("deploy.local.no_such_module", "X"))
    with pytest.raises(StackError, match=r"not available.*VAULT_ADDR"):
        Stack(tmp_path, tmp_path / "cache", services=["openbao"], environ={})


def test_second_supervisor_is_refused(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "supervisor.pid").write_text(f"{sleeper.pid}\n")
        stack = Stack(tmp_path, tmp_path / "cache", services=["postgres"], environ={})
        with pytest.raises(StackError, match="already run by pid"):
            stack.start_all()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_stale_and_status_on_leftover_pid_files(tmp_path: Path) -> None:
    leftover = subprocess.Popen(["sleep", "30"], start_new_session=True)
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "kafka.pid").write_text(f"{leftover.pid}\n")
    (tmp_path / "pids" / "gone.pid").write_text("999999999\n")
    _, _, processes = stack_status(tmp_path)
    assert {p.name: p.alive for p in processes} == {"gone": False, "kafka": True}
    assert stop_stale(tmp_path, timeout=5) == ["kafka"]
    assert leftover.wait(5) is not None
    assert not list((tmp_path / "pids").glob("*.pid"))


def test_containers_refuse_cleanly_without_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(StackError, match="no Docker engine answers"):
        require_docker()


def test_kafka_install_marker_detects_incomplete_libs(tmp_path: Path) -> None:
    kafka = Kafka(tmp_path / "stack", tmp_path / "cache")
    assert not kafka.installed()
    kafka.libs_dir.mkdir(parents=True)
    (kafka.libs_dir / "kafka_2.13-4.3.1.jar").write_bytes(b"jar")
    assert not kafka.installed()  # no marker: an interrupted download
    kafka.marker_path.write_text(json.dumps({
        "pom_sha256": __import__("hashlib").sha256(kafka._pom_text().encode()).hexdigest(),
        "jars": {"kafka_2.13-4.3.1.jar": 3, "slf4j-simple-2.0.17.jar": 10},
    }))
    assert not kafka.installed()  # a recorded jar is missing
    (kafka.libs_dir / "slf4j-simple-2.0.17.jar").write_bytes(b"0123456789")
    assert kafka.installed()
    (kafka.libs_dir / "slf4j-reload4j-2.0.17.jar").write_bytes(b"x")
    assert not kafka.installed()  # a stray jar from another install


def test_partitions_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_KAFKA_PARTITIONS", raising=False)
    assert partitions_from_env() == 4
    monkeypatch.setenv("LEDGER_KAFKA_PARTITIONS", "12")
    assert partitions_from_env() == 12
    monkeypatch.setenv("LEDGER_KAFKA_PARTITIONS", "zero")
    with pytest.raises(StackError):
        partitions_from_env()


def test_openbao_listens_with_tls_unless_opted_out(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls_from_env({}) is True  # the default
    assert tls_from_env({TLS_ENV: "1"}) is True
    assert tls_from_env({TLS_ENV: "0"}) is False
    with pytest.raises(StackError, match=TLS_ENV):
        tls_from_env({TLS_ENV: "no"})
    monkeypatch.delenv(TLS_ENV, raising=False)
    assert OpenBao(Path("/nonexistent"), Path("/nonexistent")).tls is True
    monkeypatch.setenv(TLS_ENV, "0")
    assert OpenBao(Path("/nonexistent"), Path("/nonexistent")).tls is False


def test_openbao_endpoints_follow_how_it_was_started(tmp_path: Path) -> None:
    """Another process (``ledger stack env``) hands out what the running server listens on:
    https with the stack's CA, or plain http after ``LEDGER_OPENBAO_TLS=0``."""
    started = OpenBao(tmp_path, tmp_path / "cache")
    started.save_state({"ports": {"port": 8321}, "tls": True})
    env = OpenBao(tmp_path, tmp_path / "cache", tls=False).endpoints()
    assert set(env) == set(OPENBAO_ENV_NAMES)
    assert env["VAULT_ADDR"] == "https://127.0.0.1:8321"
    assert env["VAULT_CACERT"] == str(tmp_path / "tls" / "ca.crt")  # the stack's one CA
    started.save_state({"ports": {"port": 8321}, "tls": False})
    env = OpenBao(tmp_path, tmp_path / "cache", tls=True).endpoints()
    assert env["VAULT_ADDR"] == "http://127.0.0.1:8321"
    assert "VAULT_CACERT" not in env
    # and the processes it serves cannot require TLS (the stack merges this over PostgreSQL's
    # LEDGER_REQUIRE_TLS=true), else every stage would refuse the plain VAULT_ADDR at start
    assert env["LEDGER_REQUIRE_TLS"] == "false"
    assert SERVICE_ORDER.index("openbao") > SERVICE_ORDER.index("postgres")


def test_plain_progress_when_not_a_tty() -> None:
    out = io.StringIO()
    with ProgressDisplay("install", stream=out) as progress:
        progress("kafka: resolving")
    text = out.getvalue()
    assert "kafka: resolving" in text
    assert "install done in" in text
    assert "\x1b[" not in text  # no terminal control codes in CI logs


def test_cli_parses_stack_commands() -> None:
    parser = build_parser()
    for argv in (["stack", "install"], ["stack", "up", "--no-install"], ["stack", "down"],
                 ["stack", "status"], ["stack", "env"], ["dev"]):
        assert callable(parser.parse_args(argv).func)
