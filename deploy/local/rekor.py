"""Sigstore Rekor (v1 API) with its Trillian log, as a local service.

Real programs, built from source with ``go install <module>@<version>`` into
``<cache_dir>/go-bin`` (a ``versions.json`` marker records what is there; binaries already
built elsewhere, e.g. by a warm-up into ``<cache_dir>/bin``, are reused when
``go version -m`` shows the right module version):

* ``trillian_log_server`` and ``trillian_log_signer`` (``--force_master``) v1.7.3, storing in
  PostgreSQL (database ``trillian`` from the stack's Postgres service; the schema shipped
  in the Trillian module is applied once);
* ``createtree`` makes the log tree once; its id is kept in ``<stack_dir>/rekor/state.json``
  and passed to Rekor at every start (without it Rekor would make a new tree each time);
* ``rekor-server`` v1.5.4 with a file signer: an ECDSA P-256 key generated once into
  ``<stack_dir>/rekor/signer.pem`` (PKCS#8, unencrypted, mode 600, so no
  ``--rekor_server.signer-passwd``); the log's public key is written next to it as
  ``log-public.pem``. The search index (Redis) and attestation storage are disabled.

Everything listens on 127.0.0.1. rekor-server v1.5.4 also starts a Prometheus listener on
``:2112`` (all interfaces, not configurable, error ignored); while this service object is
alive it holds 127.0.0.1:2112 itself so that that wildcard bind fails, and after every
start it checks in ``/proc`` that none of its processes listens on a non-loopback address.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from deploy.local.base import LocalService, Progress, run_coro
from deploy.local.files import write_file
from deploy.local.gotools import (
    GoTool,
    binary_module_version,
    go_env,
    go_executable,
    go_install,
)
from deploy.local.openbao import stable_port
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.rekor_key import LOG_PUBLIC_KEY_FILE, SIGNER_KEY_FILE, ensure_signer_key
from deploy.local.sockets import non_loopback_listeners

__all__ = [
    "COSIGN",
    "GO_BINARIES",
    "REKOR_CLI",
    "REKOR_ENV_NAMES",
    "REKOR_METRICS_PORT",
    "Rekor",
]

REKOR_VERSION = "v1.5.4"
TRILLIAN_VERSION = "v1.7.3"
REKOR_MODULE = "github.com/sigstore/rekor"
TRILLIAN_MODULE = "github.com/google/trillian"
#: The Go version the modules need (rekor v1.5.4's go.mod says ``go 1.25.11``).
MIN_GO = (1, 25, 11)

#: binary name → (package, module, version)
GO_BINARIES: dict[str, tuple[str, str, str]] = {
    "rekor-server": (f"{REKOR_MODULE}/cmd/rekor-server", REKOR_MODULE, REKOR_VERSION),
    "trillian_log_server": (
        f"{TRILLIAN_MODULE}/cmd/trillian_log_server", TRILLIAN_MODULE, TRILLIAN_VERSION
    ),
    "trillian_log_signer": (
        f"{TRILLIAN_MODULE}/cmd/trillian_log_signer", TRILLIAN_MODULE, TRILLIAN_VERSION
    ),
    "createtree": (f"{TRILLIAN_MODULE}/cmd/createtree", TRILLIAN_MODULE, TRILLIAN_VERSION),
}

#: Rekor's own client, the module and version of the server above (``docs/verification.md``
#: checks a batch's log entry with it); built on demand with ``ensure_go_tool``.
REKOR_CLI = GoTool("rekor-cli", f"{REKOR_MODULE}/cmd/rekor-cli", REKOR_VERSION, MIN_GO)

#: Sigstore's ``cosign`` (v2, whose go.mod says ``go 1.25.0``): ``docs/verification.md``
#: verifies a batch's Sigstore bundle with ``cosign verify-blob``; built on demand with
#: ``ensure_go_tool`` (4 to 5 minutes the first time on two cores; a rebuild with a warm
#: build cache takes seconds).
COSIGN = GoTool("cosign", "github.com/sigstore/cosign/v2/cmd/cosign", "v2.6.5", (1, 25, 0))

#: rekor-server's hard-coded metrics port (``Addr: ":2112"`` in cmd/rekor-server/app/serve.go).
REKOR_METRICS_PORT = 2112

#: Every API operation except ``searchIndex`` (that one needs Redis or MySQL).
REKOR_API_ENDPOINTS = (
    "getLogInfo",
    "getPublicKey",
    "getLogProof",
    "createLogEntry",
    "getLogEntryByIndex",
    "getLogEntryByUUID",
    "searchLogQuery",
)
#: The checkpoint origin is "<hostname> - <tree id>"; keep it stable across machines.
CHECKPOINT_HOSTNAME = "rekor.ledger.local"

#: The environment variables :meth:`Rekor.endpoints` provides.
REKOR_ENV_NAMES: tuple[str, ...] = (
    "REKOR_SERVER_URL",
    "REKOR_PUBLIC_KEY",
    "LEDGER_REKOR_PUBLIC_KEY",
)

_SCHEMA_REL = Path("storage/postgresql/schema/storage.sql")
_HTTP_TIMEOUT = 10.0
#: Trillian's own shutdown is done in milliseconds; the rest is a fixed sleep.
_TRILLIAN_STOP_TIMEOUT = 3.0


class DatabaseProvider(Protocol):
    """What Rekor needs from the Postgres service."""

    def create_database(self, name: str) -> str: ...


# --- helpers ---------------------------------------------------------------------------------


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as resp:  # noqa: S310 - loopback
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _apply_schema(dsn: str, schema: str) -> bool:
    import asyncpg  # noqa: PLC0415 - only needed here

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if await conn.fetchval("SELECT to_regclass('trees') IS NOT NULL"):
            return False
        async with conn.transaction():
            await conn.execute(schema)
        return True
    finally:
        await conn.close()


async def _tree_exists(dsn: str, tree_id: int) -> bool:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        found = await conn.fetchval(
            "SELECT 1 FROM trees WHERE treeid = $1 AND deleted IS NOT TRUE", tree_id
        )
        return found is not None
    finally:
        await conn.close()


# --- the service -----------------------------------------------------------------------------


class Rekor(LocalService):
    """rekor-server + Trillian log server/signer on 127.0.0.1, storing in PostgreSQL."""

    name = "rekor"

    def __init__(
        self, stack_dir: Path, cache_dir: Path, *, postgres: DatabaseProvider
    ) -> None:
        super().__init__(stack_dir, cache_dir)
        self._postgres = postgres
        self._log_server: ManagedProcess | None = None
        self._log_signer: ManagedProcess | None = None
        self._rekor: ManagedProcess | None = None
        self._metrics_guard: socket.socket | None = None
        self._guard_stop = threading.Event()

    def port(self, key: str = "port") -> int:
        return stable_port(self, key)

    # --- paths ------------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        return self.cache_dir / "go-bin"

    @property
    def marker_path(self) -> Path:
        return self.bin_dir / "versions.json"

    @property
    def schema_path(self) -> Path:
        return self.bin_dir / f"trillian-{TRILLIAN_VERSION}-postgresql-storage.sql"

    @property
    def signer_path(self) -> Path:
        return self.service_dir / SIGNER_KEY_FILE

    @property
    def public_key_path(self) -> Path:
        return self.service_dir / LOG_PUBLIC_KEY_FILE

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def url(self) -> str:
        port = self.load_state().get("ports", {}).get("port")
        if port is None:
            raise StackError("Rekor: not started yet (no port chosen)")
        return f"http://127.0.0.1:{port}"

    @property
    def tree_id(self) -> int | None:
        value = self.load_state().get("tree_id")
        return int(value) if value is not None else None

    # --- install ----------------------------------------------------------------------------

    def _marker(self) -> dict[str, str]:
        try:
            data = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _installed(self) -> bool:
        marker = self._marker()
        return all(
            marker.get(name) == f"{pkg}@{version}" and self.binary(name).is_file()
            for name, (pkg, _mod, version) in GO_BINARIES.items()
        ) and self.schema_path.is_file()

    def install(self, progress: Progress) -> None:
        if self._installed():
            progress(f"rekor: rekor-server {REKOR_VERSION}, Trillian {TRILLIAN_VERSION} "
                     f"found in {self.bin_dir}")
            return
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        with (self.bin_dir / ".lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress(f"rekor: another install is running in {self.bin_dir}; waiting")
                fcntl.flock(lock, fcntl.LOCK_EX)
            if self._installed():
                return
            self._install_locked(progress)

    def _install_locked(self, progress: Progress) -> None:
        env = go_env(MIN_GO)
        env["GOBIN"] = str(self.bin_dir)
        marker = self._marker()
        missing: dict[tuple[str, str], list[str]] = {}
        for name, (pkg, mod, version) in GO_BINARIES.items():
            want = f"{pkg}@{version}"
            target = self.binary(name)
            if marker.get(name) == want and target.is_file():
                continue
            if self._adopt_existing(name, (pkg, mod, version), env, progress):
                marker[name] = want
                continue
            missing.setdefault((mod, version), []).append(pkg)
        for (mod, version), pkgs in missing.items():
            progress(f"rekor: go install {mod} {version} ({len(pkgs)} commands); "
                     "the first build takes several minutes")
            go_install([f"{pkg}@{version}" for pkg in pkgs], env, progress, label="rekor")
            for name, (pkg, _mod, ver) in GO_BINARIES.items():
                if pkg in pkgs:
                    found = binary_module_version(self.binary(name), env)
                    if found is None or found[2] != ver:
                        raise StackError(f"Rekor: {self.binary(name)} missing after go install")
                    marker[name] = f"{pkg}@{ver}"
        self._save_marker(marker)
        if not self.schema_path.is_file():
            self._copy_schema(env, progress)
        progress(f"rekor: binaries ready in {self.bin_dir}")

    def _save_marker(self, marker: dict[str, str]) -> None:
        tmp = self.marker_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.marker_path)

    def _adopt_existing(
        self, name: str, want: tuple[str, str, str], env: dict[str, str], progress: Progress
    ) -> bool:
        """Use a binary of the right version already in go-bin or ``<cache_dir>/bin``."""
        for candidate in (self.binary(name), self.cache_dir / "bin" / name):
            if not candidate.is_file():
                continue
            if binary_module_version(candidate, env) == want:
                if candidate != self.binary(name):
                    progress(f"rekor: reusing {candidate}")
                    tmp = self.binary(name).with_suffix(".tmp")
                    shutil.copy2(candidate, tmp)
                    tmp.replace(self.binary(name))
                return True
        return False

    def _copy_schema(self, env: dict[str, str], progress: Progress) -> None:
        result = subprocess.run(
            [go_executable(), "mod", "download", "-json", f"{TRILLIAN_MODULE}@{TRILLIAN_VERSION}"],
            capture_output=True, text=True, check=False, env=env, cwd=self.bin_dir,
        )
        try:
            module_dir = Path(json.loads(result.stdout)["Dir"])
        except (ValueError, KeyError) as exc:
            raise StackError(
                f"Rekor: cannot locate the Trillian module ({result.stderr.strip()})"
            ) from exc
        source = module_dir / _SCHEMA_REL
        if not source.is_file():
            raise StackError(f"Rekor: Trillian schema not found at {source}")
        shutil.copyfile(source, self.schema_path)
        progress(f"rekor: Trillian PostgreSQL schema copied from {source}")

    # --- start / stop -----------------------------------------------------------------------

    def start(self, progress: Progress) -> None:
        if self._rekor is not None and self._rekor.running():
            return
        if not self._installed():
            raise StackError("Rekor: not installed; run install() (`ledger stack install`)")
        started = time.monotonic()
        ports = {
            key: self.port(key)
            for key in ("trillian_grpc", "trillian_http", "signer_grpc", "signer_http", "port")
        }
        try:
            dsn = self._postgres.create_database("trillian")
            if run_coro(lambda: _apply_schema(dsn, self.schema_path.read_text())):
                progress("rekor: Trillian schema applied")
            self._ensure_signer_key()
            self._start_trillian(dsn, ports, progress)
            tree_id = self._ensure_tree(dsn, ports["trillian_grpc"], progress)
            url = self._start_rekor_server(tree_id, ports, progress)
            self._check_public_key(url)
            self._check_loopback_only()
        except BaseException:
            self.stop()
            raise
        progress(f"rekor: ready on {url} (tree {tree_id}) in {time.monotonic() - started:.1f}s")

    def _start_trillian(self, dsn: str, ports: dict[str, int], progress: Progress) -> None:
        """trillian_log_server, then trillian_log_signer, each healthy before the next."""
        storage = [
            "--storage_system=postgresql",
            "--quota_system=noop",
            f"--config={self._write_flag_file(dsn)}",  # the DSN (password) not in argv
        ]
        for name, extra, grpc, http in (
            ("trillian_log_server", [], "trillian_grpc", "trillian_http"),
            ("trillian_log_signer", ["--force_master"], "signer_grpc", "signer_http"),
        ):
            proc = ManagedProcess(
                name=name.replace("_", "-"),
                argv=[str(self.binary(name)), *storage, *extra,
                      f"--rpc_endpoint=127.0.0.1:{ports[grpc]}",
                      f"--http_endpoint=127.0.0.1:{ports[http]}"],
                stack_dir=self.stack_dir,
                stop_timeout=_TRILLIAN_STOP_TIMEOUT,
            )
            if name == "trillian_log_server":
                self._log_server = proc
            else:
                self._log_signer = proc
            progress(f"rekor: starting {name} on 127.0.0.1:{ports[grpc]}")
            proc.start()
            self._wait_healthz(proc, ports[http], name)

    def _start_rekor_server(self, tree_id: int, ports: dict[str, int], progress: Progress) -> str:
        """rekor-server on the tree, with its wildcard metrics port kept closed; its URL."""
        self._hold_metrics_port()
        argv = [
            str(self.binary("rekor-server")),
            "serve",
            "--log_type=prod",
            "--rekor_server.address=127.0.0.1",
            f"--port={ports['port']}",
            f"--rekor_server.hostname={CHECKPOINT_HOSTNAME}",
            f"--rekor_server.signer={self.signer_path}",
            "--trillian_log_server.address=127.0.0.1",
            f"--trillian_log_server.port={ports['trillian_grpc']}",
            f"--trillian_log_server.tlog_id={tree_id}",
            "--enable_retrieve_api=false",
            f"--enabled_api_endpoints={','.join(REKOR_API_ENDPOINTS)}",
            "--enable_attestation_storage=false",
        ]
        url = f"http://127.0.0.1:{ports['port']}"
        for attempt in (1, 2):
            self._rekor = ManagedProcess(
                name="rekor-server", argv=argv, stack_dir=self.stack_dir,
                cwd=self.service_dir,  # viper also looks for ./rekor-server.yaml
            )
            progress(f"rekor: starting rekor-server on 127.0.0.1:{ports['port']}")
            self._rekor.start()
            wait_until(
                lambda: _http_get(f"{url}/api/v1/log")[0] == 200,
                timeout=60, what="rekor-server GET /api/v1/log", proc=self._rekor,
            )
            if attempt == 1 and self._took_wildcard_metrics_port():
                # Another stack held the port when we tried and let it go before
                # rekor-server bound it: restart while we hold the port ourselves.
                progress("rekor: rekor-server took *:2112; restarting it guarded")
                self._rekor.stop()
                wait_until(self._try_hold_metrics_port, timeout=30,
                           what="holding 127.0.0.1:2112 for rekor-server")
                continue
            break
        if self._metrics_guard is None:
            self._watch_for_metrics_port()
        return url

    def stop(self) -> None:
        # rekor-server first (it exits at once), then both Trillian programs together: after
        # a graceful gRPC stop they sleep a hard-coded 5 s "to tidy up" (plus 5 s more in the
        # signer), so they get SIGTERM together and SIGKILL after a short grace period.
        if self._rekor is not None:
            self._rekor.stop()
            self._rekor = None
        trillian = [p for p in (self._log_signer, self._log_server) if p is not None]
        for proc in trillian:
            proc.signal(signal.SIGTERM)
        for proc in trillian:
            proc.stop()
        self._log_signer = self._log_server = None
        self._guard_stop.set()
        if self._metrics_guard is not None:
            self._metrics_guard.close()
            self._metrics_guard = None

    def endpoints(self) -> dict[str, str]:
        if self.load_state().get("ports", {}).get("port") is None:
            return {}  # never started in this stack
        key = str(self.public_key_path)
        return {"REKOR_SERVER_URL": self.url, "REKOR_PUBLIC_KEY": key,
                "LEDGER_REKOR_PUBLIC_KEY": key}

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self._log_server, self._log_signer, self._rekor) if p is not None]

    # --- steps ------------------------------------------------------------------------------

    def _wait_healthz(self, proc: ManagedProcess, http_port: int, what: str) -> None:
        wait_until(
            lambda: _http_get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200,
            timeout=60, what=f"{what} /healthz", proc=proc,
        )

    def _write_flag_file(self, dsn: str) -> Path:
        """Trillian's ``--config`` flag file holding the database URI (mode 600)."""
        path = self.service_dir / "trillian.flags"
        write_file(path, f"--postgresql_uri={shlex.quote(dsn)}\n")
        return path

    def _ensure_signer_key(self) -> None:
        ensure_signer_key(self.service_dir)

    def _ensure_tree(self, dsn: str, grpc_port: int, progress: Progress) -> int:
        recorded = self.tree_id
        if recorded is not None:
            if not run_coro(lambda: _tree_exists(dsn, recorded)):
                raise StackError(
                    f"Rekor: tree {recorded} recorded in {self.state_path} is not in the "
                    "Trillian database (was the Postgres data reset?). Refusing to start a "
                    f"new log silently; remove {self.service_dir} to begin a new one."
                )
            return recorded
        progress("rekor: creating the Trillian log tree (once)")
        result = subprocess.run(
            [
                str(self.binary("createtree")),
                f"--admin_server=127.0.0.1:{grpc_port}",
                "--tree_type=LOG",
                "--display_name=ledger-rekor",
                "--rpc_deadline=30s",
            ],
            capture_output=True, text=True, check=False, timeout=60,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines or not lines[-1].strip().isdigit():
            raise StackError(
                f"Rekor: createtree failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr[-2000:]}"
            )
        tree_id = int(lines[-1].strip())
        state = self.load_state()
        state["tree_id"] = tree_id
        self.save_state(state)
        return tree_id

    def _hold_metrics_port(self) -> None:
        """Hold 127.0.0.1:2112 so rekor-server's wildcard metrics listener cannot bind.

        If another process holds it (another local stack's guard), rekor-server's bind fails
        just the same, for as long as that process keeps it; see :meth:`start` for the
        moment it lets go.
        """
        self._try_hold_metrics_port()

    def _try_hold_metrics_port(self) -> bool:
        if self._metrics_guard is not None:
            return True
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", REKOR_METRICS_PORT))
            sock.listen(1)
        except OSError:
            sock.close()
            return False
        self._metrics_guard = sock
        return True

    def _took_wildcard_metrics_port(self, within_s: float = 3.0) -> bool:
        """Whether rekor-server bound its metrics port on all interfaces (checked for a
        short while after it answered: the listener starts in a goroutine of its own)."""
        if self._metrics_guard is not None or self._rekor is None:
            return False  # we hold the port: its bind failed
        rekor = self._rekor
        try:
            wait_until(lambda: bool(non_loopback_listeners(rekor.pid)), timeout=within_s,
                       what="rekor-server metrics listener", interval=0.1)
        except StackError:
            return False
        return True

    def _watch_for_metrics_port(self) -> None:
        """Take the port as soon as its current holder lets go (until :meth:`stop`)."""
        self._guard_stop.clear()

        def watch() -> None:
            while not self._guard_stop.wait(0.5):
                if self._try_hold_metrics_port():
                    if self._guard_stop.is_set() and self._metrics_guard is not None:
                        self._metrics_guard.close()  # stop() ran meanwhile
                        self._metrics_guard = None
                    return

        threading.Thread(target=watch, name="rekor-metrics-guard", daemon=True).start()

    def _check_public_key(self, url: str) -> None:
        status, body = _http_get(f"{url}/api/v1/log/publicKey")
        if status != 200:
            raise StackError(f"Rekor: GET /api/v1/log/publicKey answered {status}")
        served = serialization.load_pem_public_key(body)
        ours = serialization.load_pem_public_key(self.public_key_path.read_bytes())
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if served.public_bytes(*der) != ours.public_bytes(*der):
            raise StackError("Rekor: the served log key differs from " + str(self.public_key_path))

    def _check_loopback_only(self) -> None:
        for proc in self.processes():
            bad = non_loopback_listeners(proc.pid)
            if bad:
                raise StackError(
                    f"Rekor: {proc.name} listens on non-loopback address(es) {bad}; stopped"
                )

    def log_info(self) -> dict[str, Any]:
        """``GET /api/v1/log`` as JSON."""
        status, body = _http_get(f"{self.url}/api/v1/log")
        if status != 200:
            raise StackError(f"Rekor: GET /api/v1/log answered {status}")
        data: dict[str, Any] = json.loads(body)
        return data
