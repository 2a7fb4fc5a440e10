"""docker-compose.yml: both databases and OpenBao speak TLS only, and every client verifies
them against the CA of the db-certs job."""

from __future__ import annotations

import re
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.errors import ConfigError
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("ingest", "signer", "anchorer", "ledger-migrate")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path → volume name"""
    out = {}
    for entry in service.get("volumes", []):
        volume, target = str(entry).split(":")[:2]
        out[target] = volume
    return out


def _issued(compose: dict[str, Any]) -> dict[str, tuple[set[str], str]]:
    """certificate name → (DNS names, the volume it is installed into), from db-certs."""
    job = compose["services"]["db-certs"]
    script = "\n".join(job["command"]).replace("\\\n", " ")
    mounts = _mounts(job)
    out = {}
    for line in script.splitlines():
        words = shlex.split(line)
        if words[:3] != ["python", "-m", "deploy.local.tls"]:
            continue
        dns = {words[i + 1] for i, w in enumerate(words) if w == "--dns"}
        install = words[words.index("--install") + 1]
        out[words[4]] = (dns, mounts[install])
    return out


def _check_client_dsn(dsn: str, service: dict[str, Any], server_volume: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["sslmode"] == "verify-full"
    ca_dir, _, ca_file = query["sslrootcert"].rpartition("/")
    assert ca_file == "ca.crt"
    assert _mounts(service)[ca_dir] == server_volume  # the CA next to the server's files
    assert parts.hostname is not None
    return parts.hostname


def test_the_pipeline_verifies_the_ledger_database(compose: dict[str, Any]) -> None:
    issued = _issued(compose)
    for name in CLIENTS:
        service = compose["services"][name]
        env = service["environment"]
        assert env["LEDGER_REQUIRE_TLS"] == "true", name
        host = _check_client_dsn(env["CRDB_DSN"], service, issued["postgres"][1])
        assert host in issued["postgres"][0], name


def test_trillian_verifies_its_database(compose: dict[str, Any]) -> None:
    issued = _issued(compose)
    for name in ("trillian-log-server", "trillian-log-signer"):
        service = compose["services"][name]
        uri = next(f for f in service["command"] if f.startswith("--postgresql_uri="))
        host = _check_client_dsn(uri.partition("=")[2], service, issued["trillian-db"][1])
        assert host in issued["trillian-db"][0]


def test_both_databases_refuse_plaintext(compose: dict[str, Any]) -> None:
    issued = _issued(compose)
    hba = compose["configs"]["pg-hba"]["content"].splitlines()
    assert any(line.split()[:1] == ["hostnossl"] and line.split()[-1] == "reject"
               for line in hba)
    assert not [line for line in hba if line.split()[:1] == ["host"]]
    for name, cert in (("postgres", "postgres"), ("trillian-db", "trillian-db")):
        service = compose["services"][name]
        flags = " ".join(service["command"])
        assert "ssl=on" in flags and "ssl_min_protocol_version=TLSv1.2" in flags
        assert f"ssl_key_file=/db-tls/{cert}.key" in flags
        assert _mounts(service)["/db-tls"] == issued[cert][1]
        assert "hba_file=/etc/ledger/pg_hba.conf" in flags
        assert service["depends_on"]["db-certs"]["condition"] == "service_completed_successfully"


def test_the_compose_settings_without_tls_would_not_start(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in compose["services"]["signer"]["environment"].items()}
    env["CRDB_DSN"] = env["CRDB_DSN"].partition("?")[0]
    with pytest.raises(ConfigError, match="LEDGER_REQUIRE_TLS is on but CRDB_DSN has no sslmode"):
        Settings.from_env(env)


def _check_ca_file(path: str, service: dict[str, Any], server_volume: str) -> None:
    ca_dir, _, ca_file = path.rpartition("/")
    assert ca_file == "ca.crt"
    assert _mounts(service)[ca_dir] == server_volume  # the CA next to the server's files


def test_openbao_serves_https_only_and_every_client_verifies_it(compose: dict[str, Any]) -> None:
    names, volume = _issued(compose)["openbao"]
    services = compose["services"]
    openbao = services["openbao"]
    assert openbao["depends_on"]["db-certs"]["condition"] == "service_completed_successfully"
    config = compose["configs"]["openbao-config"]["content"]
    assert "tls_disable" not in config
    files = dict(re.findall(r'^\s*(tls_cert_file|tls_key_file)\s*=\s*"([^"]+)"', config, re.M))
    assert files == {"tls_cert_file": "/openbao-tls/openbao.crt",
                     "tls_key_file": "/openbao-tls/openbao.key"}
    assert _mounts(openbao)["/openbao-tls"] == volume
    assert re.search(r'^\s*api_addr\s*=\s*"https://openbao:8200"', config, re.M)
    health = openbao["healthcheck"]["test"][1]
    assert "BAO_ADDR=https://127.0.0.1:8200" in health
    _check_ca_file(re.findall(r"BAO_CACERT=(\S+)", health)[0], openbao, volume)

    clients = {name: (services[name]["environment"]["VAULT_ADDR"],
                      services[name]["environment"]["VAULT_CACERT"])
               for name in ("ingest", "signer", "anchorer")}
    init_env = services["openbao-init"]["environment"]
    clients["openbao-init"] = (init_env["BAO_ADDR"], init_env["BAO_CACERT"])
    for name, (addr, cacert) in clients.items():
        url = urllib.parse.urlsplit(addr)
        assert url.scheme == "https", name
        assert url.hostname in names, name
        _check_ca_file(cacert, services[name], volume)
