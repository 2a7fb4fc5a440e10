"""docker-compose.yml and deploy/Dockerfile agree with the local process stack.

No Docker needed: the files are parsed and compared with the local services' own code
(endpoints(), key names, flags), so the two ways of running the stack cannot drift apart.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local.kafka import TOPICS, Kafka, security_properties
from deploy.local.openbao import (
    ANCHOR_KEY,
    ANCHOR_KEY_TYPE,
    LEGACY_POLICY,
    OPENBAO_ENV_NAMES,
    SIGNING_KEY,
    SIGNING_KEY_TYPE,
    STAGE_POLICIES,
    OpenBao,
    policy_hcl,
)
from deploy.local.postgres import Postgres
from deploy.local.rekor import (
    CHECKPOINT_HOSTNAME,
    REKOR_API_ENDPOINTS,
    REKOR_ENV_NAMES,
    REKOR_VERSION,
    TRILLIAN_VERSION,
    Rekor,
)
from deploy.local.rekor_key import LOG_PUBLIC_KEY_FILE, SIGNER_KEY_FILE
from services.ingest.app import check_auth_config
from shared.settings import ENV_NAMES, PROCESSES, Settings, needed_by, required_env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ("ingest", "signer", "anchorer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command", [])
    return command if isinstance(command, str) else "\n".join(map(str, command))


def _local_endpoint_names(tmp_path: Path) -> set[str]:
    """Env names that the local stack's services hand to clients, from their endpoints().

    A fake state.json (ports, no running process) is enough for endpoints().
    """

    class _NoDatabases:
        def create_database(self, name: str) -> str:
            raise AssertionError("not called")

    names: set[str] = set()
    for service in (
        Kafka(tmp_path, tmp_path / "cache"),
        Postgres(tmp_path, tmp_path / "cache"),
        OpenBao(tmp_path, tmp_path / "cache"),
        Rekor(tmp_path, tmp_path / "cache", postgres=_NoDatabases()),
    ):
        service.save_state({"ports": {"port": 1}, "password": "x"})
        names |= set(service.endpoints())
    return names


def test_same_services_as_the_local_stack(services: dict[str, Any]) -> None:
    for local_name in (Kafka.name, Postgres.name, OpenBao.name, Rekor.name):
        assert any(name.startswith(local_name) for name in services), local_name
    assert any(name.startswith("trillian-log-server") for name in services)
    assert any(name.startswith("trillian-log-signer") for name in services)
    assert any("createtree" in name for name in services)
    for name in PIPELINE:
        assert name in services


def test_pipeline_gets_every_env_var_of_the_local_stack(
    services: dict[str, Any], tmp_path: Path
) -> None:
    local = _local_endpoint_names(tmp_path)
    assert set(OPENBAO_ENV_NAMES) <= local
    assert set(REKOR_ENV_NAMES) <= local
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CRDB_DSN", "VAULT_ADDR", "VAULT_TOKEN",
            "VAULT_TRANSIT_KEY", "REKOR_SERVER_URL"} <= local
    # the local stack's one environment names each stage's token file; compose gives each
    # stage its own VAULT_TOKEN instead (tested with the openbao-init job)
    local -= {"LEDGER_SIGNER_VAULT_TOKEN_FILE", "LEDGER_ANCHORER_VAULT_TOKEN_FILE"}
    # likewise each stage's Kafka certificate: compose gives each its own KAFKA_SSL_CERTFILE
    local -= {f"LEDGER_{name.upper()}_KAFKA_SSL_CERTFILE" for name in PIPELINE}
    for name in PIPELINE:
        env = _env(services[name])
        missing = local - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert env["VAULT_TRANSIT_KEY"] == SIGNING_KEY
        assert env["LEDGER_VAULT_ANCHOR_KEY"] == ANCHOR_KEY
        assert env["REKOR_PUBLIC_KEY"].endswith("/" + LOG_PUBLIC_KEY_FILE)
        # every name is one the pipeline's settings read (REKOR_PUBLIC_KEY: the brief's name)
        assert set(env) - set(ENV_NAMES.values()) <= {"REKOR_PUBLIC_KEY"}


def test_pipeline_services_share_one_image_and_run_ledger_commands(
    services: dict[str, Any],
) -> None:
    images = {services[name]["image"] for name in PIPELINE}
    assert len(images) == 1
    for name in PIPELINE:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["command"] == [name]


def test_ports_published_on_loopback_only(services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
    assert published >= 5  # kafka, postgres, openbao, rekor, ingest


def test_dockerfile_entrypoint_is_the_ledger_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ledger" in scripts
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    # two stages from one base, pinned by digest; the pinned dependencies build the wheels
    base = re.search(r"^ARG PYTHON_IMAGE=(python:3\.11-slim\S*@sha256:[0-9a-f]{64})$", text, re.M)
    assert base is not None
    assert re.findall(r"^FROM (\S+) AS (\w+)$", text, re.M) == [
        ("${PYTHON_IMAGE}", "build"), ("${PYTHON_IMAGE}", "runtime")]
    assert "pip wheel --wheel-dir /wheels -c constraints.txt ." in text
    assert "pip install --no-index --find-links /wheels signed-ledger" in text
    # the runtime runs as a numeric, non-root user
    users = re.findall(r"^USER\s+(\d+)(?::(\d+))?$", text, re.M)
    assert len(users) == 1 and int(users[0][0]) != 0
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.M)
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["ledger"]


def test_kafka_topics_match_the_local_stack(services: dict[str, Any]) -> None:
    assert _env(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    created = _command_text(services["kafka-init"])
    for topic in TOPICS:
        assert re.search(rf"(^|\s){re.escape(topic)}(\s|;|$)", created), topic


def test_openbao_matches_the_local_stack(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert services["openbao"]["image"].startswith("openbao/openbao:")
    config = compose["configs"]["openbao-config"]["content"]
    assert 'storage "raft"' in config  # persistent, like the local stack
    assert 'seal "static"' in config
    script = _command_text(services["openbao-init"])
    assert f"transit/keys/{SIGNING_KEY} type={SIGNING_KEY_TYPE}" in script
    assert f"transit/keys/{ANCHOR_KEY} type={ANCHOR_KEY_TYPE}" in script
    assert f"bao policy delete {LEGACY_POLICY}" in script
    assert 'bao policy write "$$policy"' in script
    assert '-policy="$$policy" -orphan -period=' in script
    init_env = _env(services["openbao-init"])
    tokens = set()
    for stage, policy in STAGE_POLICIES.items():
        # each policy's rules, exactly as the local stack writes them, and nothing more
        block = script.split(f"cat > /tmp/{policy}.hcl <<'EOF'\n", 1)[1].split("EOF", 1)[0]
        assert [line.strip() for line in block.strip().splitlines()] == (
            policy_hcl(policy).splitlines()), policy
        token = init_env[f"{stage.upper()}_TOKEN"]
        assert f'"{policy}:$${stage.upper()}_TOKEN"' in script
        service = {"signer": "signer", "anchorer": "anchorer", "reader": "ingest"}[stage]
        assert _env(services[service])["VAULT_TOKEN"] == token, stage
        tokens.add(token)
    assert len(tokens) == len(STAGE_POLICIES)  # one token per stage, none shared


def test_rekor_matches_the_local_stack(services: dict[str, Any]) -> None:
    rekor = services["rekor-server"]
    assert rekor["image"].endswith(f"/rekor-server:{REKOR_VERSION}")
    for name in ("trillian-log-server", "trillian-log-signer"):
        assert services[name]["image"].endswith(f":{TRILLIAN_VERSION}")
        flags = services[name]["command"]
        assert "--storage_system=postgresql" in flags
    assert "--force_master" in services["trillian-log-signer"]["command"]
    flags = rekor["command"]
    assert "--enable_retrieve_api=false" in flags
    assert f"--enabled_api_endpoints={','.join(REKOR_API_ENDPOINTS)}" in flags
    assert "--enable_attestation_storage=false" in flags
    assert f"--rekor_server.hostname={CHECKPOINT_HOSTNAME}" in flags
    assert f"--rekor_server.signer=/rekor-keys/{SIGNER_KEY_FILE}" in flags
    assert any(f.startswith("--config=") for f in flags)  # carries the tree id
    assert f"createtree@{TRILLIAN_VERSION}" in _command_text(services["trillian-createtree"])
    assert f"trillian@{TRILLIAN_VERSION}" in _command_text(services["trillian-schema"])
    assert rekor["depends_on"]["trillian-createtree"]["condition"] == (
        "service_completed_successfully"
    )


# --- every ledger process gets the settings it needs (from shared/settings.py) -------------

_DEFAULTED = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _resolved(value: str) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default (no .env here)."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", value)


def _ledger_processes(services: dict[str, Any]) -> dict[str, str]:
    """compose service → the ledger process it runs (the image's entrypoint is ``ledger``)."""
    found = {}
    for name, service in services.items():
        command = service.get("command")
        if service.get("image") == "signed-ledger:local" and "entrypoint" not in service:
            assert isinstance(command, list) and command, name
            found[name] = str(command[0])
    return found


def test_every_ledger_process_runs_a_known_command(services: dict[str, Any]) -> None:
    processes = _ledger_processes(services)
    assert processes == {"ledger-migrate": "migrate", "ingest": "ingest",
                         "signer": "signer", "anchorer": "anchorer"}
    assert set(processes.values()) == set(PROCESSES)


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_gets_every_setting_it_needs(
    services: dict[str, Any], process: str
) -> None:
    name = next(n for n, p in _ledger_processes(services).items() if p == process)
    env = {k: _resolved(v) for k, v in _env(services[name]).items()}
    groups = required_env(process)
    assert groups  # derived from the settings' needed_by metadata
    for group in groups:
        assert any(env.get(var) for var in group), f"{name} sets none of {sorted(group)}"
    settings = Settings.from_env(env)  # every value is valid
    for field in Settings.model_fields:
        if process in needed_by(field):
            value = str(getattr(settings, field))
            assert "127.0.0.1" not in value, f"{name}: {ENV_NAMES[field]} is a loopback address"
    if process == "ingest":
        check_auth_config(settings)  # what made ingest exit and restart in a loop
        assert not settings.auth_disabled


def test_ingest_tokens_file_is_created_once_by_a_job_ingest_waits_for(
    services: dict[str, Any],
) -> None:
    ingest = services["ingest"]
    tokens = _env(ingest)["LEDGER_TOKENS_FILE"]
    volume = next(v.split(":")[0] for v in ingest["volumes"]
                  if tokens.startswith(v.split(":")[1] + "/"))
    assert any(v == f"{volume}:{tokens.rsplit('/', 1)[0]}:ro" for v in ingest["volumes"])
    creators = [n for n, s in services.items()
                if n != "ingest" and any(str(v).startswith(volume + ":") for v in
                                         s.get("volumes", []))]
    assert creators == ["ingest-token"]
    assert ingest["depends_on"]["ingest-token"]["condition"] == (
        "service_completed_successfully")
    script = _command_text(services["ingest-token"])
    assert "ledger token create --name ledger-dev --scopes append,read" in script
    assert f"--file {tokens}" in script
    assert f"[ -s {tokens} ]" in script  # only when absent: printed once
    # the image's user (deploy/Dockerfile) must be able to read the 0600 file
    uid = re.search(r"^USER\s+(\d+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert uid is not None and f"chown {uid.group(1)} {tokens}" in script


def test_kafka_is_secured_as_the_local_stack_is(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    for key, value in security_properties("/kafka-tls/broker.pem", "/kafka-tls/ca.crt").items():
        name = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(name, "").replace("$$", "$") == value, name
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SSL"}, "no plaintext listener"
    # topics and ACLs made as the administrator, with the ACL table of shared/kafka_acls.py
    init = _command_text(services["kafka-init"])
    assert "--command-config /kafka-tls/admin.properties" in init and "acls.sh" in init
    assert "ledger kafka-acls" in _command_text(services["kafka-certs"])


def test_each_stage_mounts_only_its_own_kafka_certificate(services: dict[str, Any]) -> None:
    for name in PIPELINE:
        env = _env(services[name])
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL"
        assert env["KAFKA_SSL_CERTFILE"] == "/kafka-client/client.pem"
        kafka_volumes = [v for v in services[name]["volumes"] if str(v).startswith("kafka-")]
        assert kafka_volumes == [f"kafka-{name}-tls:/kafka-client:ro"], name
        Settings.from_env(env)  # LEDGER_REQUIRE_TLS holds for Kafka too
    certs = _command_text(services["kafka-certs"])
    for name in PIPELINE:
        assert "/kafka-$$p-tls/client.pem" in certs and name in certs
