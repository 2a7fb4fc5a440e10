"""The local stack: PostgreSQL, Kafka, OpenBao (Vault Transit), Rekor v1, Rekor v2 and an
RFC 3161 timestamp authority, as one unit.

:class:`Stack` composes the services, installs and starts them in dependency order
(postgres → kafka → openbao → rekor → rekor_v2 → tsa), stops them in reverse (safe twice;
also at interpreter exit and on SIGTERM/SIGINT through :meth:`Stack.signals_stop`), merges
their client environment variables and writes them to ``<stack_dir>/endpoints.env`` (a
sourceable shell file, mode 600: it holds passwords and the Vault token).

External mode: a service whose variables are already set in the environment is not started,
and the environment's values are used instead:

=========  ==========================================
postgres   ``CRDB_DSN``
kafka      ``KAFKA_BOOTSTRAP_SERVERS`` (and its ``KAFKA_SSL_*`` when set)
openbao    ``VAULT_ADDR`` and ``VAULT_TOKEN``
rekor      ``REKOR_SERVER_URL``
rekor_v2   ``LEDGER_REKOR_V2_SERVER_URL``
tsa        ``LEDGER_TSA_URL``
=========  ==========================================

(Rekor's Trillian still needs a PostgreSQL: with an external ``CRDB_DSN`` and a local Rekor,
a private local PostgreSQL is started for Trillian only.)

``LEDGER_STACK_SERVICES=postgres,kafka`` limits the stack to some services;
``LEDGER_USE_TESTCONTAINERS=1`` takes PostgreSQL, Kafka and Vault from Docker through
testcontainers instead (see :mod:`deploy.local.containers`).

``Stack(..., plain_links=True)`` exists only to measure what the secured links cost (the
``secured_links`` benchmark starts such a stack of its own next to the normal one): Kafka with
plaintext listeners and no authorizer, PostgreSQL accepting plaintext TCP from loopback, and
OpenBao without TLS (and, unless ``services`` says otherwise, neither Rekor v2 nor the
timestamp authority, which it does not compare). It is a constructor argument only (no
environment variable, no command option of ``ledger stack``), every service is then local,
and containers are refused.

A stack directory has one supervisor at a time (the process that called
:meth:`Stack.start_all`, pid in ``<stack_dir>/supervisor.pid``); :func:`stop_stale` stops a
stack whose supervisor is gone or is another process (``ledger stack down``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from deploy.local.base import LocalService, Progress, default_cache_dir, port_available
from deploy.local.process import ManagedProcess, StackError, reap_stale

__all__ = [
    "EXTERNAL_ENV",
    "SERVICE_ORDER",
    "ProcessStatus",
    "ServiceStatus",
    "Stack",
    "stack_status",
    "stop_stale",
]

SERVICE_ORDER: tuple[str, ...] = ("postgres", "kafka", "openbao", "rekor", "rekor_v2", "tsa")

#: The variables that, all set, make a service external (not started).
EXTERNAL_ENV: dict[str, tuple[str, ...]] = {
    "postgres": ("CRDB_DSN",),
    "kafka": ("KAFKA_BOOTSTRAP_SERVERS",),
    "openbao": ("VAULT_ADDR", "VAULT_TOKEN"),
    "rekor": ("REKOR_SERVER_URL",),
    "rekor_v2": ("LEDGER_REKOR_V2_SERVER_URL",),
    "tsa": ("LEDGER_TSA_URL",),
}
#: Further variables taken from the environment with an external service when present.
_EXTERNAL_EXTRA: dict[str, tuple[str, ...]] = {
    "postgres": ("LEDGER_REQUIRE_TLS",),
    "kafka": ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE",
              "KAFKA_SSL_KEYFILE", "LEDGER_INGEST_KAFKA_SSL_CERTFILE",
              "LEDGER_SIGNER_KAFKA_SSL_CERTFILE", "LEDGER_ANCHORER_KAFKA_SSL_CERTFILE"),
    "openbao": ("VAULT_TRANSIT_KEY", "LEDGER_VAULT_ANCHOR_KEY", "VAULT_CACERT",
                "LEDGER_SIGNER_VAULT_TOKEN_FILE", "LEDGER_ANCHORER_VAULT_TOKEN_FILE"),
    "rekor": ("REKOR_PUBLIC_KEY", "LEDGER_REKOR_PUBLIC_KEY"),
    "rekor_v2": ("LEDGER_REKOR_V2_TILES_URL", "LEDGER_REKOR_V2_PUBLIC_KEY",
                 "LEDGER_REKOR_V2_ORIGIN"),
    "tsa": ("LEDGER_TSA_CERT_CHAIN",),
}
_MODULES: dict[str, tuple[str, str]] = {
    "postgres": ("deploy.local.postgres", "Postgres"),
    "kafka": ("deploy.local.kafka", "Kafka"),
    "openbao": ("deploy.local.openbao", "OpenBao"),
    "rekor": ("deploy.local.rekor", "Rekor"),
    "rekor_v2": ("deploy.local.rekor_v2", "RekorV2"),
    "tsa": ("deploy.local.tsa", "Tsa"),
}
#: A plain-links stack's services by default: those with links it makes plain, and Rekor.
_PLAIN_LINK_SERVICES: tuple[str, ...] = ("postgres", "kafka", "openbao", "rekor")
SUPERVISOR_PID = "supervisor.pid"
ENDPOINTS_FILE = "endpoints.env"


def _load_class(service: str) -> type[LocalService]:
    module_name, class_name = _MODULES[service]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        env = " and ".join(EXTERNAL_ENV[service])
        raise StackError(
            f"the {service} service is not available: {module_name.replace('.', '/')}.py "
            f"does not exist (yet). Set {env} to use an external {service}, or limit the "
            f"stack with LEDGER_STACK_SERVICES (e.g. postgres,kafka)."
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, LocalService)):
        raise StackError(f"{module_name}.{class_name} is not a LocalService")
    return cls


def _selected(services: Sequence[str] | None, environ: Mapping[str, str]) -> list[str]:
    if services is None:
        raw = environ.get("LEDGER_STACK_SERVICES", "")
        services = [s.strip() for s in raw.split(",") if s.strip()] or list(SERVICE_ORDER)
    unknown = [s for s in services if s not in SERVICE_ORDER]
    if unknown:
        raise StackError(f"unknown service(s) {unknown}; choose from {list(SERVICE_ORDER)}")
    return [s for s in SERVICE_ORDER if s in services]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class Stack:
    """The services of one stack directory (see the module docstring)."""

    def __init__(
        self,
        stack_dir: Path,
        cache_dir: Path | None = None,
        services: Sequence[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        use_containers: bool | None = None,
        plain_links: bool = False,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        #: benchmark only (what TLS costs, see the module docstring): every link plaintext
        self.plain_links = plain_links
        if plain_links:
            env = {}  # every service local, whatever the environment says
        self.stack_dir = Path(stack_dir).resolve()
        self.cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
        if plain_links and services is None:
            services = _PLAIN_LINK_SERVICES  # the services whose links it compares
        self.selected = _selected(services, env)
        if use_containers is None:
            use_containers = env.get("LEDGER_USE_TESTCONTAINERS", "") in {"1", "true", "yes"}
        if plain_links and use_containers:
            raise StackError("plain_links is for the local processes only, not containers")
        #: service name → the environment's values, for services used from the environment
        self.external: dict[str, dict[str, str]] = {}
        #: service name → local service object (started by this stack), in start order
        self.services: dict[str, LocalService] = {}
        self._exported: set[str] = set()
        self._started: list[LocalService] = []
        self._atexit_registered = False
        self._lock = threading.RLock()

        wanted = list(self.selected)
        if "rekor" in wanted and "postgres" not in wanted:
            wanted.insert(0, "postgres")  # Trillian's database
        for name in wanted:
            names = EXTERNAL_ENV[name]
            if name in self.selected and all(env.get(k) for k in names):
                extra = {k: env[k] for k in _EXTERNAL_EXTRA.get(name, ()) if env.get(k)}
                self.external[name] = {**{k: env[k] for k in names}, **extra}
                if not (name == "postgres" and "rekor" in wanted and "rekor" not in self.external):
                    continue
            self.services[name] = self._make(name, use_containers=use_containers)
            if name in self.selected and name not in self.external:
                self._exported.add(name)
        # Rekor may be external after all: then a Postgres kept only for it is not needed.
        if "rekor" not in self.services and "postgres" in self.services and (
            "postgres" not in self._exported
        ):
            del self.services["postgres"]

    def _make(self, name: str, *, use_containers: bool) -> LocalService:
        if use_containers and name in {"postgres", "kafka", "openbao"}:
            from deploy.local.containers import container_service  # noqa: PLC0415

            return container_service(name, self.stack_dir, self.cache_dir)
        cls = _load_class(name)
        if name == "rekor":
            postgres = self.services.get("postgres")
            if postgres is None:
                raise StackError("rekor needs the postgres service for Trillian")
            factory: Callable[..., LocalService] = cls
            return factory(self.stack_dir, self.cache_dir, postgres=postgres)
        if self.plain_links:
            options = {"tls": False} if name == "openbao" else {"plain_links": True}
            plain: Callable[..., LocalService] = cls
            return plain(self.stack_dir, self.cache_dir, **options)
        return cls(self.stack_dir, self.cache_dir)

    # --- lifecycle --------------------------------------------------------------------------

    def install_all(self, progress: Progress = lambda _m: None) -> None:
        for name, service in self.services.items():
            service.install(_prefixed(name, progress))

    def start_all(self, progress: Progress = lambda _m: None) -> None:
        """Start every local service in order; on a failure, stop what was started."""
        with self._lock:
            self.stack_dir.mkdir(parents=True, exist_ok=True)
            self._claim_supervisor()
            if not self._atexit_registered:
                atexit.register(self.stop_all)
                self._atexit_registered = True
            for name in self.external:
                progress(f"{name}: external ({', '.join(sorted(self.external[name]))})")
            try:
                for name, service in self.services.items():
                    started = time.monotonic()
                    service.start(_prefixed(name, progress))
                    if service not in self._started:
                        self._started.append(service)
                    progress(f"{name}: up in {time.monotonic() - started:.1f}s")
            except BaseException:
                self.stop_all()
                raise
            self.write_env_file()

    def stop_all(self) -> None:
        """Stop local services in reverse order. Safe to call twice, from atexit or a signal."""
        with self._lock:
            errors: list[str] = []
            for service in reversed(list(self.services.values())):
                try:
                    service.stop()
                except Exception as exc:  # noqa: BLE001 - stop the others anyway
                    errors.append(f"{service.name}: {exc}")
            self._started.clear()
            pid_file = self.stack_dir / SUPERVISOR_PID
            if _read_pid(pid_file) == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    pid_file.unlink()
            if errors:
                raise StackError("errors while stopping: " + "; ".join(errors))

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    @contextlib.contextmanager
    def signals_stop(self) -> Iterator[None]:
        """While active, SIGTERM/SIGINT/SIGHUP raise KeyboardInterrupt (so cleanup runs).

        Only from the main thread; elsewhere it does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: FrameType | None) -> None:
            raise KeyboardInterrupt(signal.Signals(signum).name)

        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, handler) for s in sigs}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _claim_supervisor(self) -> None:
        path = self.stack_dir / SUPERVISOR_PID
        pid = _read_pid(path)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            raise StackError(
                f"the stack in {self.stack_dir} is already run by pid {pid}; "
                f"stop it first (`ledger stack down`) or use another LEDGER_STACK_DIR"
            )
        path.write_text(f"{os.getpid()}\n")

    # --- information --------------------------------------------------------------------

    def endpoints(self) -> dict[str, str]:
        """Every client variable: local services' endpoints and external values, merged."""
        merged: dict[str, str] = {}
        for name in SERVICE_ORDER:
            if name in self.external:
                merged.update(self.external[name])
            elif name in self._exported:
                with contextlib.suppress(StackError):  # not started yet: nothing to say
                    merged.update(self.services[name].endpoints())
        return merged

    def processes(self) -> dict[str, list[ManagedProcess]]:
        return {name: s.processes() for name, s in self.services.items()}

    def service(self, name: str) -> LocalService | None:
        """The local service ``name``; None when it is external or not part of the stack."""
        return self.services.get(name)

    def require(self, name: str) -> LocalService:
        """The local service ``name``, or :class:`StackError` when it is not local."""
        try:
            return self.services[name]
        except KeyError:
            raise StackError(f"{name} is not a local service of this stack") from None

    @property
    def env_file(self) -> Path:
        return self.stack_dir / ENDPOINTS_FILE

    def write_env_file(self) -> Path:
        lines = [
            "# written by `ledger stack` - source it: . " + shlex.quote(str(self.env_file)),
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(self.endpoints().items())),
        ]
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self.env_file


def _prefixed(name: str, progress: Progress) -> Progress:
    prefix = f"{name}: "
    return lambda message: progress(message if message.startswith(prefix) else prefix + message)


# --- a stack left running by another process -----------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """A service's persisted ports and whether something listens on them."""

    name: str
    ports: dict[str, int]
    listening: dict[str, bool]


@dataclass(frozen=True)
class ProcessStatus:
    """One supervised process, from its pid file."""

    name: str
    pid: int | None
    alive: bool


def stack_status(
    stack_dir: Path,
) -> tuple[int | None, list[ServiceStatus], list[ProcessStatus]]:
    """The supervisor pid (if alive), the services' ports and the processes' pid files."""
    stack_dir = Path(stack_dir).resolve()
    supervisor = _read_pid(stack_dir / SUPERVISOR_PID)
    if supervisor is not None and not _pid_alive(supervisor):
        supervisor = None
    services: list[ServiceStatus] = []
    for name in SERVICE_ORDER:
        state = _load_json(stack_dir / name / "state.json")
        ports = {k: int(v) for k, v in dict(state.get("ports", {})).items()}
        if ports:
            services.append(ServiceStatus(
                name=name, ports=ports,
                listening={k: not port_available(v) for k, v in ports.items()},
            ))
    processes: list[ProcessStatus] = []
    for pid_file in sorted((stack_dir / "pids").glob("*.pid")):
        pid = _read_pid(pid_file)
        processes.append(ProcessStatus(
            name=pid_file.stem, pid=pid, alive=pid is not None and _pid_alive(pid),
        ))
    return supervisor, services, processes


def _load_json(path: Path) -> dict[str, Any]:
    import json  # noqa: PLC0415

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stop_stale(stack_dir: Path, *, timeout: float = 30.0,
               say: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Stop a stack left running: ask its supervisor, then stop leftover process groups.

    Returns the names of what was stopped.
    """
    stack_dir = Path(stack_dir).resolve()
    stopped: list[str] = []
    sup_path = stack_dir / SUPERVISOR_PID
    supervisor = _read_pid(sup_path)
    if supervisor is not None and supervisor != os.getpid() and _pid_alive(supervisor):
        say(f"asking the stack's supervisor (pid {supervisor}) to stop")
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        if _wait_gone(functools.partial(_pid_alive, supervisor), timeout * 3):
            stopped.append("supervisor")
        else:
            say(f"supervisor pid {supervisor} did not exit; stopping its services directly")
    with contextlib.suppress(FileNotFoundError):
        if supervisor is None or not _pid_alive(supervisor):
            sup_path.unlink()
    for pid_file in sorted((stack_dir / "pids").glob("*.pid")):
        pid = _read_pid(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        if not _pid_alive(pid):
            reap_stale(pid_file)  # the leader is gone; SIGKILL any member left in its group
            continue
        if _pgid(pid) != pid:
            pid_file.unlink(missing_ok=True)  # the pid was reused by an unrelated process
            continue
        say(f"stopping {pid_file.stem} (process group {pid})")
        # PostgreSQL: SIGINT to the postmaster is its fast shutdown; others take SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            if pid_file.stem == "postgres":
                os.kill(pid, signal.SIGINT)
            else:
                os.killpg(pid, signal.SIGTERM)
        _wait_gone(functools.partial(_pid_alive, pid), timeout)
        reap_stale(pid_file)  # SIGKILL whatever is left of the group
        stopped.append(pid_file.stem)
    return stopped


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _wait_gone(alive: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
