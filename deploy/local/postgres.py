"""PostgreSQL 15 as a local service, from the Debian binaries in ``/usr/lib/postgresql/15/bin``.

Layout under ``<stack_dir>/postgres/``: ``data/`` (the cluster, made by ``initdb`` once),
``run/`` (the unix socket directory) and ``state.json`` (port, passwords).

Security model (a developer stack on one machine):

* the server listens on 127.0.0.1 only, plus a unix socket in a 0700 directory;
* TCP logins need a password (``scram-sha-256``); the ``ledger`` role gets a random
  password generated at the first start and stored in ``state.json`` (mode 600), and the
  DSN handed to clients carries it (``postgresql://ledger:<pw>@127.0.0.1:<port>/ledger``);
* TCP connections must use TLS (``hostssl`` only; ``ssl_min_protocol_version=TLSv1.2``):
  at the first start the stack's CA (``<stack_dir>/tls/``, :mod:`deploy.local.tls`) issues
  a server certificate for ``127.0.0.1`` and ``localhost``, reused at later starts; the DSN
  says ``sslmode=verify-full`` with ``sslrootcert`` naming the CA, and the stack exports
  ``LEDGER_REQUIRE_TLS=true`` with it, so a stage given a plaintext DSN refuses to start;
* the ``postgres`` superuser has no password: it can only log in over the unix socket
  (``trust``), which only the server's OS user and root can reach. The stack uses it for
  administration (roles, databases) through ``psql``.

``plain_links=True`` (a constructor argument, never read from the environment) exists only
for the benchmark that measures what TLS costs (``python -m benchmarks --only
secured_links``): plaintext TCP logins from 127.0.0.1 are accepted, the DSN says
``sslmode=disable`` and no ``LEDGER_REQUIRE_TLS`` is exported. Nothing else may use it.

When we run as root the server runs as a dedicated OS user: ``postgres`` if it exists
(Debian's package creates it), else a system user ``ledger-pg`` that we create.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from deploy.local.base import LocalService, Progress, run_coro
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.tls import LocalCA, ServerCert, install_key

__all__ = ["PG_BIN", "Postgres"]

PG_VERSION = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
APP_DB = "ledger"
APP_ROLE = "ledger"
SUPERUSER = "postgres"
FALLBACK_OS_USER = "ledger-pg"
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes including ".s.PGSQL.<port>" and a NUL
#: the names the server certificate is issued for (the DSN uses the first)
HOST = "127.0.0.1"
CERT_DNS = ("localhost",)


class Postgres(LocalService):
    """A private PostgreSQL cluster for one stack."""

    name = "postgres"

    def __init__(self, stack_dir: Path, cache_dir: Path, *, plain_links: bool = False) -> None:
        super().__init__(stack_dir, cache_dir)
        #: benchmark only (what TLS costs): plaintext TCP from loopback, ``sslmode=disable``
        self.plain_links = plain_links
        self._proc: ManagedProcess | None = None

    # --- paths and identity -----------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.service_dir / "data"

    @property
    def socket_dir(self) -> Path:
        path = self.service_dir / "run"
        if len(str(path)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
            # A deep stack directory would overflow sun_path: use a short private dir instead.
            digest = hashlib.sha256(str(self.stack_dir).encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"ledger-pg-{digest}"
        return path

    def os_user(self) -> str | None:
        """The OS user the server runs as (None: the current user, when not root)."""
        if os.geteuid() != 0:
            return None
        for candidate in (SUPERUSER, FALLBACK_OS_USER):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(candidate)
                return candidate
        return FALLBACK_OS_USER  # created by install()/start()

    def _ensure_os_user(self, progress: Progress) -> str | None:
        user = self.os_user()
        if user is None:
            return None
        try:
            pwd.getpwnam(user)
        except KeyError:
            progress(f"creating system user {user}")
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 "--home-dir", "/nonexistent", user],
                check=True, capture_output=True,
            )
        return user

    def _run_as(self, user: str | None, argv: list[str], *, check: bool = True,
                input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        uid = gid = None
        groups: list[int] | None = None
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid, groups = entry.pw_uid, entry.pw_gid, []
        result = subprocess.run(
            argv, capture_output=True, text=True, input=input_text,
            cwd=self.service_dir, check=False, env={**os.environ, "LC_ALL": "C.UTF-8"},
            user=uid, group=gid, extra_groups=groups,
        )
        if check and result.returncode != 0:
            raise StackError(
                f"postgres: {' '.join(argv[:2])} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    # --- LocalService -----------------------------------------------------------------------

    def install(self, progress: Progress) -> None:
        if (PG_BIN / "postgres").is_file() and (PG_BIN / "initdb").is_file():
            progress(f"PostgreSQL {PG_VERSION} found in {PG_BIN}")
        elif os.geteuid() == 0 and shutil.which("apt-get"):
            progress(f"apt-get install postgresql-{PG_VERSION}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            result = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends",
                 f"postgresql-{PG_VERSION}"],
                capture_output=True, text=True, env=env, check=False,
            )
            if result.returncode != 0:
                raise StackError(
                    f"apt-get install postgresql-{PG_VERSION} failed:\n{result.stderr[-2000:]}"
                )
        else:
            raise StackError(
                f"PostgreSQL {PG_VERSION} is not installed ({PG_BIN} missing). Install the "
                f"Debian package postgresql-{PG_VERSION} (scripts/install.sh does it as root)."
            )
        self._ensure_os_user(progress)

    def start(self, progress: Progress) -> None:
        if self._proc is not None and self._proc.running():
            return
        if not (PG_BIN / "postgres").is_file():
            raise StackError(f"postgres: {PG_BIN}/postgres missing; run `ledger stack install`")
        user = self._ensure_os_user(progress)
        state = self.load_state()
        if "password" not in state:
            state["password"] = secrets.token_hex(16)
            self.save_state(state)
        os.chmod(self.state_path, 0o600)
        port = self.port()

        self._prepare_dirs(user)
        if not (self.data_dir / "PG_VERSION").is_file():
            progress("initdb")
            self._initdb(user)
        self._write_hba()
        tls = self._server_tls(user)

        progress(f"starting PostgreSQL on 127.0.0.1:{port} (TLS)")
        self._proc = ManagedProcess(
            name=self.name,
            argv=[
                str(PG_BIN / "postgres"),
                "-D", str(self.data_dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"port={port}",
                "-c", f"unix_socket_directories={self.socket_dir}",
                "-c", "unix_socket_permissions=0700",
                "-c", "max_connections=200",
                "-c", "logging_collector=off",
                "-c", "log_line_prefix=%m [%p] %q%u@%d ",
                "-c", "password_encryption=scram-sha-256",
                "-c", "ssl=on",
                "-c", f"ssl_cert_file={tls.cert}",
                "-c", f"ssl_key_file={tls.key}",
                "-c", "ssl_min_protocol_version=TLSv1.2",
            ],
            stack_dir=self.stack_dir,
            cwd=self.service_dir,
            user=user,
            env={"LC_ALL": "C.UTF-8"},
        )
        self._proc.start()
        wait_until(lambda: self._psql("SELECT 1", check=False).returncode == 0,
                   timeout=60, what="postgres (unix socket)", proc=self._proc)
        progress("creating role and database ledger")
        self._ensure_role_and_db(APP_ROLE, APP_DB, str(state["password"]))
        dsn = self.endpoints()["CRDB_DSN"]
        wait_until(lambda: run_coro(lambda: _probe(dsn), timeout=15),
                   timeout=30, what="postgres (TCP login as ledger)", proc=self._proc)
        progress(f"PostgreSQL ready on 127.0.0.1:{port}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.running():
            proc.signal(signal.SIGCONT)  # a test may have SIGSTOPped it
            # SIGINT to the postmaster = "fast" shutdown (SIGTERM would wait for clients).
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            deadline = time.monotonic() + proc.stop_timeout
            while proc.running() and time.monotonic() < deadline:
                time.sleep(0.1)
        proc.stop()  # SIGTERM/SIGKILL whatever is left, remove the pid file

    def endpoints(self) -> dict[str, str]:
        state = self.load_state()
        port = state.get("ports", {}).get("port")
        if port is None:
            return {}
        dsn = self._dsn(APP_ROLE, str(state.get("password", "")), APP_DB, port)
        if self.plain_links:
            return {"CRDB_DSN": dsn}
        return {"CRDB_DSN": dsn, "LEDGER_REQUIRE_TLS": "true"}

    def processes(self) -> list[ManagedProcess]:
        return [self._proc] if self._proc is not None else []

    # --- for other services (Rekor's Trillian) ----------------------------------------------

    def create_database(self, name: str) -> str:
        """Create (idempotently) database ``name`` owned by a new role ``name``; return its DSN.

        The role's password is generated once and kept in ``state.json``. The server must be
        running.
        """
        if not _NAME_RE.match(name) or name in {SUPERUSER, "template0", "template1"}:
            raise StackError(f"postgres: invalid database name {name!r}")
        if self._proc is None or not self._proc.running():
            raise StackError("postgres: create_database() needs the server running")
        state = self.load_state()
        passwords: dict[str, str] = dict(state.get("databases", {}))
        if name == APP_DB:
            password = str(state["password"])
        else:
            password = passwords.setdefault(name, secrets.token_hex(16))
            state["databases"] = passwords
            self.save_state(state)
        self._ensure_role_and_db(name, name, password)
        return self._dsn(name, password, name, state["ports"]["port"])

    def psql(self, sql: str, database: str = APP_DB) -> str:
        """Run SQL as the superuser over the unix socket; return psql's unaligned output."""
        return self._psql(sql, database=database).stdout

    # --- internals --------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify the server with (``sslrootcert``)."""
        return LocalCA(self.stack_dir / "tls").cert_path

    def _dsn(self, role: str, password: str, db: str, port: int) -> str:
        auth = f"{role}:{password}" if password else role
        tls = ({"sslmode": "disable"} if self.plain_links
               else {"sslmode": "verify-full", "sslrootcert": str(self.ca_file)})
        query = urllib.parse.urlencode(tls, quote_via=urllib.parse.quote, safe="/")
        return f"postgresql://{auth}@{HOST}:{port}/{db}?{query}"

    def _server_tls(self, user: str | None) -> ServerCert:
        """The server's certificate (issued once by the stack's CA), copied into the data
        directory where the server's OS user alone can read the key."""
        issued = LocalCA(self.stack_dir / "tls").server_cert(
            "postgres", dns=CERT_DNS, ips=(HOST,))
        entry = pwd.getpwnam(user) if user is not None else None
        return install_key(issued, self.data_dir / "tls",
                           uid=entry.pw_uid if entry else None,
                           gid=entry.pw_gid if entry else None)

    def _prepare_dirs(self, user: str | None) -> None:
        for path in (self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for path in (self.data_dir, self.socket_dir):
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid)
                for root, dirs, files in os.walk(path):
                    for child in dirs + files:
                        os.lchown(os.path.join(root, child), entry.pw_uid, entry.pw_gid)
        # The server user must be able to traverse every parent of its directories.
        for path in (self.data_dir, self.socket_dir):
            for parent in path.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH and parent.stat().st_uid != entry.pw_uid:
                    parent.chmod(mode | stat.S_IXOTH)  # search only, no listing

    def _initdb(self, user: str | None) -> None:
        self._run_as(user, [
            str(PG_BIN / "initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "-E", "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])

    def _write_hba(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        tcp = (
            # benchmark only (what TLS costs): plaintext TCP from loopback too
            "host       all  all  127.0.0.1/32   scram-sha-256\n" if self.plain_links else
            "hostssl    all  all  127.0.0.1/32   scram-sha-256\n"
            "hostnossl  all  all  all            reject\n"
        )
        text = (
            "# written by deploy/local/postgres.py at each start\n"
            "local      all  all                 trust\n" + tcp
        )
        st = hba.stat()
        hba.write_text(text)
        os.chown(hba, st.st_uid, st.st_gid)

    def _psql(self, sql: str, *, database: str = "postgres",
              check: bool = True) -> subprocess.CompletedProcess[str]:
        port = self.load_state()["ports"]["port"]
        return self._run_as(self.os_user(), [
            str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(port), "-U", SUPERUSER, "-d", database,
            "-c", sql,
        ], check=check)

    def _ensure_role_and_db(self, role: str, db: str, password: str) -> None:
        # Names match _NAME_RE and passwords are hex: nothing here needs quoting.
        if not (_NAME_RE.match(role) and _NAME_RE.match(db) and password.isalnum()):
            raise StackError(f"postgres: refusing unsafe role/database {role!r}/{db!r}")
        role_sql = f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"  # noqa: S608
        verb = "ALTER" if self._psql(role_sql).stdout.strip() else "CREATE"
        self._psql(f"{verb} ROLE {role} WITH LOGIN PASSWORD '{password}'")
        db_sql = f"SELECT 1 FROM pg_database WHERE datname = '{db}'"  # noqa: S608
        if not self._psql(db_sql).stdout.strip():
            self._psql(f"CREATE DATABASE {db} OWNER {role}")
        # PostgreSQL 15 no longer lets every role create objects in "public".
        self._psql(f"ALTER SCHEMA public OWNER TO {role}", database=db)


async def _probe(dsn: str) -> bool:
    import asyncpg  # noqa: PLC0415 - optional at import time

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()
