"""Supervised child processes for the local stack.

Every service of the stack is a real program run as a child process bound to 127.0.0.1.
This module owns the mechanics that all of them share:

* ports: :func:`free_port` asks the kernel for a free loopback port;
* start: :class:`ManagedProcess` starts the program in its own process group, with its output
  in a log file under the stack directory, and asks the kernel to SIGTERM it if the parent
  dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the test runner leaves no orphan;
* pid files: the group id is written to ``<stack dir>/pids/<name>.pid`` so that the next run
  can reap anything a crashed run left behind (:func:`reap_stale`);
* stop: SIGTERM to the whole group, SIGKILL after a grace period.

It must never start anything listening on an address other than loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ManagedProcess", "StackError", "free_port", "reap_stale", "wait_until"]

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A local-stack service could not be installed, started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it returns True; raise :class:`StackError` naming ``what`` on timeout.

    If ``proc`` exits while we wait, fail at once with the tail of its log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.running():
            raise StackError(
                f"{what}: process exited with code {proc.returncode()} during startup; "
                f"last log lines:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - probes fail in many ways until ready
            pass
        if time.monotonic() > deadline:
            tail = proc.log_tail() if proc is not None else ""
            raise StackError(f"{what}: not ready after {timeout:.0f}s\n{tail}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """One child program of the stack."""

    name: str
    argv: Sequence[str]
    stack_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None  # run as this OS user (used for PostgreSQL when we are root)
    stop_timeout: float = 30.0
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.stack_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.stack_dir / "pids" / f"{self.name}.pid"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        reap_stale(self.pid_path)
        env = {**os.environ, **self.env}
        # The user's own group and no others: with root's group kept, a root-owned parent
        # directory's group bits (0 in a mktemp -d directory) would deny what its
        # "other" bits allow.
        who = pwd.getpwnam(self.user) if self.user is not None else None
        log = self.log_path.open("ab")
        try:
            self._popen = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
                user=who.pw_uid if who else None,
                group=who.pw_gid if who else None,
                extra_groups=[] if who else None,
            )
        finally:
            log.close()
        self.pid_path.write_text(f"{self._popen.pid}\n")

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise StackError(f"{self.name} is not started")
        return self._popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (used by tests for kill -9 / SIGSTOP)."""
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)

    def kill(self, timeout: float = 30.0) -> None:
        """``kill -9`` the whole group and wait for the leader to be gone (a crash, for tests
        and the chaos run); :meth:`stop` afterwards tidies up."""
        if self._popen is None:
            return
        self.signal(signal.SIGKILL)
        self._popen.wait(timeout)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL after ``stop_timeout``. Safe to call twice."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self._popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self._popen.wait(10)
        # children of the group that outlived the leader
        self.signal(signal.SIGKILL)
        self._popen = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()


def reap_stale(pid_path: Path) -> None:
    """Kill the process group recorded in ``pid_path`` by an earlier run that did not stop."""
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pid_path.unlink()
