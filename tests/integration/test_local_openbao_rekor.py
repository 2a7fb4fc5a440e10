"""Smoke tests: the local OpenBao and Rekor services come up, answer, and keep their state.

They run a private PostgreSQL + OpenBao + Rekor in their own stack directory under the
session's run directory (not the session stack's services), so they can stop and restart
them freely. (Not under pytest's tmp_path: pytest keeps /tmp/pytest-of-<user> at mode 700,
which the PostgreSQL server's OS user cannot traverse.) The first run builds rekor-server
and Trillian with ``go install`` (minutes); later runs reuse ``<cache>/go-bin``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from deploy.local.base import default_cache_dir
from deploy.local.openbao import (
    ANCHOR_KEY,
    LEGACY_POLICY,
    OPENBAO_ENV_NAMES,
    SIGNING_KEY,
    STAGE_POLICIES,
    STAGE_TOKEN_PERIOD_S,
    OpenBao,
    find_bao_binary,
)
from deploy.local.postgres import Postgres
from deploy.local.process import ManagedProcess, free_port, wait_until
from deploy.local.rekor import REKOR_ENV_NAMES, REKOR_METRICS_PORT, Rekor
from deploy.local.sockets import non_loopback_listeners

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SLOW_START = pytest.mark.timeout(1800)  # the first run builds the Go programs


def _progress(message: str) -> None:
    print(message, flush=True)


def _request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
    *, cafile: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP(S) request; an https server is verified against ``cafile`` (else the
    system's CAs)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _der(pem: bytes) -> bytes:
    return serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_dir(stack_run_dir: Path) -> Path:
    path = stack_run_dir / "openbao-rekor-smoke"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def postgres(stack_dir: Path) -> Iterator[Postgres]:
    service = Postgres(stack_dir, default_cache_dir())
    service.install(_progress)
    service.start(_progress)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def openbao(stack_dir: Path) -> Iterator[OpenBao]:
    service = OpenBao(stack_dir, default_cache_dir())
    service.install(_progress)
    service.start(_progress)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def rekor(stack_dir: Path, postgres: Postgres) -> Iterator[Rekor]:
    service = Rekor(stack_dir, default_cache_dir(), postgres=postgres)
    service.install(_progress)
    service.start(_progress)
    yield service
    service.stop()


# --- OpenBao ---------------------------------------------------------------------------------


def _bao(openbao: OpenBao, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    env = openbao.endpoints()
    headers = {"X-Vault-Token": token if token is not None else env["VAULT_TOKEN"]}
    status, _, raw = _request(method, f"{env['VAULT_ADDR']}/v1/{path}", body, headers,
                              cafile=env.get("VAULT_CACERT"))
    return status, (json.loads(raw) if raw else {})


def test_openbao_is_persistent_and_each_stage_signs_only_with_its_own_key(
    openbao: OpenBao,
) -> None:
    env = openbao.endpoints()
    assert set(env) == set(OPENBAO_ENV_NAMES)
    # TLS by default, verified against the stack's CA
    assert env["VAULT_ADDR"].startswith("https://127.0.0.1:")
    assert env["VAULT_CACERT"] == str(openbao.ca_path)
    tokens = {stage: openbao.stage_token(stage) for stage in STAGE_POLICIES}
    assert len(set(tokens.values()) | {openbao.root_token}) == len(STAGE_POLICIES) + 1
    assert env["VAULT_TOKEN"] == tokens["reader"]  # the default: read-only
    for stage in ("signer", "anchorer"):
        path = Path(env[f"LEDGER_{stage.upper()}_VAULT_TOKEN_FILE"])
        assert path.read_text().strip() == tokens[stage]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(openbao.init_path).st_mode) == 0o600
    for proc in openbao.processes():
        assert non_loopback_listeners(proc.pid) == []

    status, _, _ = _request("GET", f"{env['VAULT_ADDR']}/v1/sys/health",
                            cafile=env["VAULT_CACERT"])
    assert status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _request("GET", f"{env['VAULT_ADDR']}/v1/sys/health")  # without the CA

    # Ed25519 (pure) with the signer's token, checked locally
    message = b"ledger statement"
    entry_body = {"input": base64.b64encode(message).decode()}
    status, answer = _bao(openbao, "POST", f"transit/sign/{SIGNING_KEY}", entry_body,
                          tokens["signer"])
    assert status == 200, answer
    signature = answer["data"]["signature"]
    assert signature.startswith("vault:v1:")
    public = serialization.load_pem_public_key(openbao.public_key(SIGNING_KEY))
    assert isinstance(public, ed25519.Ed25519PublicKey)
    public.verify(base64.b64decode(signature.split(":", 2)[2]), message)

    # ECDSA P-256, prehashed SHA-256, ASN.1 with the anchorer's: what goes to Rekor
    digest = hashlib.sha256(message).digest()
    anchor_body = {"input": base64.b64encode(digest).decode(), "prehashed": True,
                   "hash_algorithm": "sha2-256", "marshaling_algorithm": "asn1"}
    status, answer = _bao(openbao, "POST", f"transit/sign/{ANCHOR_KEY}", anchor_body,
                          tokens["anchorer"])
    assert status == 200, answer
    anchor_public = serialization.load_pem_public_key(openbao.public_key(ANCHOR_KEY))
    assert isinstance(anchor_public, ec.EllipticCurvePublicKey)
    anchor_public.verify(base64.b64decode(answer["data"]["signature"].split(":", 2)[2]),
                         message, ec.ECDSA(hashes.SHA256()))

    # least privilege: no stage signs with the other's key, the reader signs with none
    assert _bao(openbao, "POST", f"transit/sign/{ANCHOR_KEY}", anchor_body,
                tokens["signer"])[0] == 403
    assert _bao(openbao, "POST", f"transit/sign/{SIGNING_KEY}", entry_body,
                tokens["anchorer"])[0] == 403
    assert _bao(openbao, "GET", f"transit/keys/{ANCHOR_KEY}", token=tokens["signer"])[0] == 403
    for key in (SIGNING_KEY, ANCHOR_KEY):
        assert _bao(openbao, "POST", f"transit/sign/{key}", entry_body,
                    tokens["reader"])[0] == 403
        assert _bao(openbao, "GET", f"transit/keys/{key}", token=tokens["reader"])[0] == 200
    # ... and no token can do anything else
    for token in tokens.values():
        assert _bao(openbao, "GET", "sys/mounts", token=token)[0] == 403
        assert _bao(openbao, "POST", "transit/keys/other", {"type": "ed25519"}, token)[0] == 403
        assert _bao(openbao, "POST", f"transit/keys/{SIGNING_KEY}/rotate", {}, token)[0] == 403
        assert _bao(openbao, "GET", f"transit/export/signing-key/{SIGNING_KEY}",
                    token=token)[0] == 403
        assert _bao(openbao, "POST", f"transit/verify/{SIGNING_KEY}", entry_body,
                    token)[0] == 403
        looked = _bao(openbao, "GET", "auth/token/lookup-self", token=token)[1]["data"]
        assert looked["renewable"] and looked["period"] == STAGE_TOKEN_PERIOD_S
    assert _bao(openbao, "GET", f"sys/policies/acl/{LEGACY_POLICY}",
                token=openbao.root_token)[0] == 404

    # keys, address and tokens survive a restart (raft storage, unseal from init.json)
    before = {k: openbao.public_key(k) for k in (SIGNING_KEY, ANCHOR_KEY)}
    openbao.stop()
    openbao.stop()  # safe twice
    openbao.start(_progress)
    assert openbao.endpoints() == env
    assert {stage: openbao.stage_token(stage) for stage in STAGE_POLICIES} == tokens
    assert {k: openbao.public_key(k) for k in (SIGNING_KEY, ANCHOR_KEY)} == before
    status, answer = _bao(openbao, "POST", f"transit/verify/{SIGNING_KEY}", {
        "input": base64.b64encode(message).decode(), "signature": signature},
        openbao.root_token)
    assert status == 200 and answer["data"]["valid"] is True

    # a revoked token is re-issued (and its file rewritten) at the next start
    _bao(openbao, "POST", "auth/token/revoke", {"token": tokens["signer"]}, openbao.root_token)
    openbao.stop()
    openbao.start(_progress)
    renewed = openbao.stage_token("signer")
    assert renewed != tokens["signer"]
    assert Path(env["LEDGER_SIGNER_VAULT_TOKEN_FILE"]).read_text().strip() == renewed
    assert _bao(openbao, "POST", f"transit/sign/{SIGNING_KEY}", entry_body, renewed)[0] == 200


# --- Rekor -----------------------------------------------------------------------------------


def _hashedrekord(key: ec.EllipticCurvePrivateKey, artifact: bytes, signed: bytes) -> dict[str, Any]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
    return {
        "kind": "hashedrekord",
        "apiVersion": "0.0.1",
        "spec": {
            "signature": {
                "content": base64.b64encode(signature).decode(),
                "publicKey": {"content": base64.b64encode(pem).decode()},
            },
            "data": {"hash": {"algorithm": "sha256",
                              "value": hashlib.sha256(artifact).hexdigest()}},
        },
    }


@SLOW_START
def test_rekor_answers_with_our_log_key(rekor: Rekor) -> None:
    env = rekor.endpoints()
    assert set(env) == set(REKOR_ENV_NAMES)
    url = env["REKOR_SERVER_URL"]
    assert url.startswith("http://127.0.0.1:")
    status, _, body = _request("GET", f"{url}/api/v1/log")
    assert status == 200
    info = json.loads(body)
    assert int(info["treeID"]) == rekor.tree_id
    status, _, served = _request("GET", f"{url}/api/v1/log/publicKey")
    assert status == 200
    assert _der(served) == _der(Path(env["REKOR_PUBLIC_KEY"]).read_bytes())
    assert stat.S_IMODE(os.stat(rekor.signer_path).st_mode) == 0o600


@SLOW_START
def test_rekor_listens_on_loopback_only(rekor: Rekor) -> None:
    procs = rekor.processes()
    assert {p.name for p in procs} == {"trillian-log-server", "trillian-log-signer",
                                       "rekor-server"}
    for proc in procs:
        assert non_loopback_listeners(proc.pid) == [], proc.name
    # rekor-server's hard-coded ":2112" metrics listener must not have come up
    # (only our guard socket on 127.0.0.1 may hold it)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, port = fields[1].split(":")
            if fields[3] == "0A" and int(port, 16) == REKOR_METRICS_PORT:
                assert table.endswith("tcp") and addr == "0100007F", f"{table}: {line}"


@SLOW_START
def test_hashedrekord_created_duplicate_and_bad_signature(rekor: Rekor) -> None:
    url = rekor.endpoints()["REKOR_SERVER_URL"]
    key = ec.generate_private_key(ec.SECP256R1())
    artifact = os.urandom(32)
    entry = _hashedrekord(key, artifact, artifact)

    status, _, body = _request("POST", f"{url}/api/v1/log/entries", entry)
    assert status == 201, body
    ((uuid, created),) = json.loads(body).items()
    assert uuid.startswith(f"{rekor.tree_id:016x}")
    assert "signedEntryTimestamp" in created["verification"]
    assert "inclusionProof" in created["verification"]

    status, headers, body = _request("POST", f"{url}/api/v1/log/entries", entry)
    assert status == 409, body
    assert uuid in body.decode() or uuid in headers.get("Location", "")

    bad = _hashedrekord(key, os.urandom(32), b"something else")
    status, _, body = _request("POST", f"{url}/api/v1/log/entries", bad)
    assert status == 400, body

    # the rekor signature checks out against our public key file (SET over the entry)
    public = serialization.load_pem_public_key(rekor.public_key_path.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    payload = rfc8785.dumps({k: created[k] for k in ("body", "integratedTime", "logID",
                                                       "logIndex")})
    try:
        public.verify(base64.b64decode(created["verification"]["signedEntryTimestamp"]),
                      payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:  # pragma: no cover - reported as a failure
        pytest.fail("the SET does not verify with the log public key file")

    # restart every Rekor process: same tree, same key, the entry is still there
    tree_id, log_key = rekor.tree_id, rekor.public_key_path.read_bytes()
    rekor.stop()
    rekor.stop()  # safe twice
    rekor.start(_progress)
    assert rekor.tree_id == tree_id
    assert rekor.public_key_path.read_bytes() == log_key
    assert rekor.endpoints()["REKOR_SERVER_URL"] == url
    status, _, served = _request("GET", f"{url}/api/v1/log/publicKey")
    assert _der(served) == _der(log_key)
    status, _, body = _request("GET", f"{url}/api/v1/log/entries/{uuid}")
    assert status == 200, body
    assert json.loads(body)[uuid]["body"] == created["body"]
    status, _, body = _request("POST", f"{url}/api/v1/log/entries", entry)
    assert status == 409, body


# --- docker-compose.yml's OpenBao, checked with the real binary (no Docker needed) -------------


def _compose_openbao_certificate(compose: dict[str, Any], workdir: Path) -> Path:
    """Run the db-certs job's line that issues OpenBao's certificate, with the volumes
    mapped into ``workdir`` (and without ``--owner``: not root here); the installed dir."""
    certs = compose["services"]["db-certs"]["command"][0].replace("\\\n", " ")
    line = next(line for line in certs.splitlines()
                if "deploy.local.tls /ledger-ca openbao " in line)
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "deploy.local.tls"]
    owner = words.index("--owner")
    del words[owner : owner + 2]
    volumes = {"/ledger-ca": workdir / "ca", "/openbao-tls": workdir / "openbao-tls"}
    argv = [sys.executable, *(str(volumes.get(w, w)) for w in words[1:])]
    subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
                   capture_output=True, timeout=60)
    return volumes["/openbao-tls"]


def test_compose_openbao_config_and_init_job_work(stack_dir: Path) -> None:
    """The compose file's OpenBao config (raft + static seal + TLS), its certificate (the
    db-certs job's line) and its init job's script, run against the real ``bao``:
    initialises over verified TLS, creates the keys, one policy and token per stage; is
    idempotent; and after a restart the server unseals itself and keeps the keys."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    job = compose["services"]["openbao-init"]
    script = job["command"][0].replace("$$", "$")
    tokens = {stage: f"compose-test-{stage}-token" for stage in STAGE_POLICIES}

    workdir = stack_dir / "compose-openbao"
    (workdir / "raft").mkdir(parents=True, exist_ok=True)
    (workdir / "bin").mkdir(exist_ok=True)
    bao_link = workdir / "bin" / "bao"
    if not bao_link.exists():
        bao_link.symlink_to(find_bao_binary())
    tls_dir = _compose_openbao_certificate(compose, workdir)
    port, cluster_port = free_port(), free_port()
    config = (
        compose["configs"]["openbao-config"]["content"]
        .replace("/openbao/file", str(workdir / "raft"))
        .replace("/openbao-tls", str(tls_dir))
        .replace("0.0.0.0:8200", f"127.0.0.1:{port}")
        .replace("0.0.0.0:8201", f"127.0.0.1:{cluster_port}")
        .replace("https://openbao:8200", f"https://127.0.0.1:{port}")
        .replace("https://openbao:8201", f"https://127.0.0.1:{cluster_port}")
    )
    assert "0.0.0.0" not in config and "openbao:" not in config
    assert "tls_disable" not in config
    (workdir / "config.hcl").write_text(config)
    addr = f"https://127.0.0.1:{port}"
    ca = job["environment"]["BAO_CACERT"].replace("/openbao-tls", str(tls_dir))
    assert job["environment"]["BAO_ADDR"] == "https://openbao:8200"
    server = ManagedProcess(
        name="compose-openbao",
        argv=[str(find_bao_binary()), "server", f"-config={workdir / 'config.hcl'}"],
        stack_dir=stack_dir,
        env={"LEDGER_BAO_SEAL_KEY": os.urandom(32).hex()},
    )
    env = {
        **os.environ,
        "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}",
        "BAO_ADDR": addr,
        "BAO_CACERT": ca,
        "BAO_INIT_FILE": str(workdir / "init.json"),
        **{f"{stage.upper()}_TOKEN": token for stage, token in tokens.items()},
    }
    env.pop("BAO_TOKEN", None)
    env.pop("VAULT_ADDR", None)

    def health() -> int:
        return _request("GET", f"{addr}/v1/sys/health", cafile=ca)[0]

    def sign(stage: str = "signer", key: str = SIGNING_KEY) -> tuple[int, dict[str, Any]]:
        status, _, raw = _request(
            "POST", f"{addr}/v1/transit/sign/{key}",
            {"input": base64.b64encode(b"x" * 32).decode()},
            {"X-Vault-Token": tokens[stage]}, cafile=ca)
        return status, json.loads(raw)

    def healthcheck(cacert: str) -> int:
        """The compose healthcheck's command, against this server."""
        test = compose["services"]["openbao"]["healthcheck"]["test"][1].replace("$$", "$")
        command = (test.replace("127.0.0.1:8200", f"127.0.0.1:{port}")
                   .replace("BAO_CACERT=/openbao-tls/ca.crt", f"BAO_CACERT={cacert}"))
        assert command != test
        return subprocess.run(["sh", "-c", command], env=env, timeout=60,
                              check=False).returncode

    server.start()
    try:
        wait_until(lambda: health() in (200, 501, 503), timeout=60, what="bao", proc=server)
        for _ in range(2):  # the second run must be a no-op
            result = subprocess.run(["sh", "-c", script], env=env, capture_output=True,
                                    text=True, timeout=180, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
        assert stat.S_IMODE(os.stat(workdir / "init.json").st_mode) == 0o600
        status, first = sign()
        assert status == 200, first
        assert sign("anchorer", ANCHOR_KEY)[0] == 200
        assert sign("signer", ANCHOR_KEY)[0] == 403
        assert sign("anchorer", SIGNING_KEY)[0] == 403
        assert sign("reader", SIGNING_KEY)[0] == 403
        for token in tokens.values():
            status, _, _ = _request("GET", f"{addr}/v1/sys/mounts", None,
                                    {"X-Vault-Token": token}, cafile=ca)
            assert status == 403
        assert healthcheck(ca) == 0
        assert healthcheck(str(workdir / "nonexistent-ca.crt")) != 0  # verified, not skipped
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _request("GET", f"{addr}/v1/sys/health")  # a client without the CA
        server.stop()
        server.start()  # static seal: unsealed again without anyone's help
        wait_until(lambda: health() == 200, timeout=60, what="bao auto-unseal", proc=server)
        status, second = sign()
        assert status == 200, second
        assert second["data"]["signature"] == first["data"]["signature"]  # same Ed25519 key
    finally:
        server.stop()


@SLOW_START
def test_a_rekor_started_while_the_metrics_port_was_held_takes_it_once_freed(
    rekor: Rekor, stack: Any
) -> None:
    """Two local stacks on one machine: the second Rekor starts while the first one's guard
    holds 127.0.0.1:2112. When that guard goes away, the second takes the port at once, so
    rekor-server's wildcard metrics listener can never come up later either."""
    import socket  # noqa: PLC0415

    rekor.stop()
    session_rekor = stack.service("rekor")
    holder: socket.socket | None = None
    if session_rekor is not None and session_rekor._metrics_guard is not None:
        release = session_rekor._metrics_guard.close  # the session stack is the "other stack"
        session_rekor._metrics_guard = None
        holder = None
    else:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", REKOR_METRICS_PORT))
        holder.listen(1)
        release = holder.close
    try:
        rekor.start(_progress)
        assert rekor._metrics_guard is None  # someone else holds the port
        release()
        # the guard's watcher polls every 0.5 s; the bound only keeps a broken watcher from
        # hanging the suite (a loaded machine has been seen to need more than 10 s)
        wait_until(lambda: rekor._metrics_guard is not None, timeout=60, interval=0.1,
                   what="the freed metrics port to be taken by the second Rekor's guard")
        server = next(p for p in rekor.processes() if p.name == "rekor-server")
        assert non_loopback_listeners(server.pid) == []
    finally:
        if holder is not None:
            holder.close()
