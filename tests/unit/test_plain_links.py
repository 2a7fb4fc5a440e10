"""``Stack(..., plain_links=True)``: the stack the benchmark of what TLS costs compares with.

Only a constructor argument turns it on; the normal stack keeps every link secured."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.links import compare, side_order
from deploy.local.kafka import Kafka
from deploy.local.openbao import OpenBao
from deploy.local.postgres import Postgres
from deploy.local.process import StackError
from deploy.local.stack import Stack

#: what a developer's shell may hold; a plain-links stack ignores all of it
_ENV = {
    "CRDB_DSN": "postgresql://u:p@db.example:5432/ledger?sslmode=verify-full",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093",
    "KAFKA_SECURITY_PROTOCOL": "SSL",
    "LEDGER_REQUIRE_TLS": "true",
    "LEDGER_STACK_SERVICES": "postgres,kafka",
}


def _properties(kafka: Kafka) -> dict[str, str]:
    kafka.service_dir.mkdir(parents=True, exist_ok=True)
    kafka._write_config(9092, 9093)
    lines = kafka.config_path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_normal_stack_secures_every_link(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path / "cache", environ={})
    kafka, postgres = stack.services["kafka"], stack.services["postgres"]
    assert isinstance(kafka, Kafka) and isinstance(postgres, Postgres)
    assert not stack.plain_links and not kafka.plain_links and not postgres.plain_links
    props = _properties(kafka)
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SSL:SSL"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["ssl.client.auth"] == "required"


def test_plain_links_come_from_the_constructor_only(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path / "cache", environ=_ENV, plain_links=True)
    assert stack.external == {}  # every service local, whatever the environment says
    assert list(stack.services) == ["postgres", "kafka", "openbao", "rekor"]
    kafka, postgres, openbao = (stack.services[n] for n in ("kafka", "postgres", "openbao"))
    assert isinstance(kafka, Kafka) and kafka.plain_links
    assert isinstance(postgres, Postgres) and postgres.plain_links
    assert isinstance(openbao, OpenBao) and not openbao.tls


def test_plain_kafka_has_plaintext_listeners_no_authorizer_and_no_ssl_endpoints(
    tmp_path: Path,
) -> None:
    kafka = Kafka(tmp_path, tmp_path / "cache", plain_links=True)
    props = _properties(kafka)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert not [k for k in props if k.startswith(("ssl.", "authorizer.", "super.users"))]
    assert not kafka.clients_dir.exists()  # no certificates issued
    kafka.save_state({"ports": {"port": 9092}})
    assert kafka.endpoints() == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                                 "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}


def test_plain_postgres_accepts_plaintext_from_loopback(tmp_path: Path) -> None:
    postgres = Postgres(tmp_path, tmp_path / "cache", plain_links=True)
    postgres.save_state({"ports": {"port": 5432}, "password": "abc123"})
    assert postgres.endpoints() == {
        "CRDB_DSN": "postgresql://ledger:abc123@127.0.0.1:5432/ledger?sslmode=disable"}
    postgres.data_dir.mkdir(parents=True)
    (postgres.data_dir / "pg_hba.conf").write_text("")
    postgres._write_hba()
    hba = (postgres.data_dir / "pg_hba.conf").read_text()
    assert "host       all  all  127.0.0.1/32   scram-sha-256" in hba
    assert "hostssl" not in hba and "reject" not in hba

    secured = Postgres(tmp_path / "secured", tmp_path / "cache")
    secured.save_state({"ports": {"port": 5432}, "password": "abc123"})
    assert "sslmode=verify-full" in secured.endpoints()["CRDB_DSN"]
    assert secured.endpoints()["LEDGER_REQUIRE_TLS"] == "true"


def test_plain_links_refuse_containers(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="plain_links"):
        Stack(tmp_path, tmp_path / "cache", environ={}, use_containers=True, plain_links=True)


def test_rounds_alternate_and_ratios_are_secured_over_plain() -> None:
    assert side_order(2) == ["secured", "plain", "plain", "secured"]
    runs = [{"side": side, "entries_per_s": eps, "cores_busy": 1.0,
             "cpu_us_per_entry_total": total, "cpu_us_per_entry": {"kafka": kafka}}
            for side, eps, total, kafka in (("secured", 900.0, 440.0, 60.0),
                                            ("plain", 1000.0, 400.0, 40.0),
                                            ("secured", 1100.0, 460.0, 80.0),
                                            ("plain", 1000.0, 400.0, 40.0))]
    result = compare(runs)
    assert result["sides"]["secured"]["mean"]["entries_per_s"] == 1000.0
    assert result["sides"]["secured"]["min"]["kafka"] == 60.0
    assert result["sides"]["secured"]["max"]["kafka"] == 80.0
    assert result["ratio_secured_over_plain"]["total"] == pytest.approx(1.125)
    assert result["ratio_secured_over_plain"]["kafka"] == pytest.approx(1.75)
