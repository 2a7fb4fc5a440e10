"""Shared test fixtures: the local stack for integration tests, and marker hooks.

* Tests under ``tests/unit`` get the ``unit`` marker, tests under ``tests/integration`` the
  ``integration`` marker (``pytest -m unit`` / ``pytest -m integration``).
* When the session selects integration tests, the stack is installed and started once, right
  after collection (outside any per-test timeout), in a fresh ``.stack-test/<run-id>``
  directory; caches (``$LEDGER_CACHE_DIR``) are reused. A service whose variables are in the
  environment (``CRDB_DSN``, ``KAFKA_BOOTSTRAP_SERVERS``, ``VAULT_ADDR`` + ``VAULT_TOKEN``,
  ``REKOR_SERVER_URL``) is used from there instead of started. ``LEDGER_STACK_SERVICES``
  limits the services.
* ``stack`` (session) yields the :class:`deploy.local.stack.Stack`: ``endpoints()``,
  ``service(name)`` / ``require(name)`` for the service objects and their ``processes()``
  (to kill -9, SIGSTOP or restart them). ``settings`` is a :class:`Settings` built from
  the endpoints.
* Nothing is left behind: the stack stops at session end (also on SIGTERM, which becomes a
  KeyboardInterrupt, and at interpreter exit); each child asks the kernel to kill it if the
  test runner dies (PDEATHSIG); and a later session reaps run directories whose session died.
  The run directory is removed; if the session failed, its logs are kept in
  ``.stack-test/logs-<run-id>``. ``LEDGER_KEEP_STACK=1`` keeps the whole directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from deploy.local.base import default_cache_dir
from deploy.local.process import StackError
from deploy.local.stack import Stack, stop_stale
from ledger.pipeline import rekor_v2_env
from shared.errors import ConfigError
from shared.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TEST_STACKS = REPO / ".stack-test"
_OWNER_FILE = "pytest.pid"


class _StackState:
    stack: Stack | None = None
    error: str | None = None
    run_dir: Path | None = None
    previous_sigterm: object = None


_STATE = _StackState()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unit_dir = REPO / "tests" / "unit"
    integration_dir = REPO / "tests" / "integration"
    for item in items:
        path = Path(str(item.path))
        if unit_dir in path.parents:
            item.add_marker(pytest.mark.unit)
        elif integration_dir in path.parents:
            item.add_marker(pytest.mark.integration)


def _say(config: pytest.Config, message: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[stack] {message}")
    else:
        print(f"[stack] {message}", flush=True)


_KEEP_LOGS = 5


def _reap_dead_runs() -> None:
    """Stop and remove run directories whose pytest session is gone (killed, crashed).

    Of the logs kept from failed sessions, only the newest few stay.
    """
    if not TEST_STACKS.is_dir():
        return
    kept_logs = sorted(p for p in TEST_STACKS.glob("logs-*") if p.is_dir())
    for old in kept_logs[:-_KEEP_LOGS]:
        shutil.rmtree(old, ignore_errors=True)
    for run_dir in TEST_STACKS.iterdir():
        if not run_dir.is_dir() or run_dir.name.startswith("logs-"):
            continue
        try:
            owner = int((run_dir / _OWNER_FILE).read_text().strip())
            os.kill(owner, 0)
            continue  # a live session owns it
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            if time.time() - run_dir.stat().st_mtime < 600:
                continue  # being created right now, maybe
        with contextlib.suppress(Exception):
            stop_stale(run_dir, timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt("SIGTERM")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the stack once, if any selected test is an integration test."""
    config = session.config
    if config.option.collectonly or not any(
        item.get_closest_marker("integration") for item in session.items
    ):
        return
    _reap_dead_runs()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = TEST_STACKS / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    _STATE.run_dir = run_dir
    # SIGTERM (CI cancelling the job) becomes an interrupt, so the session finish hook runs.
    _STATE.previous_sigterm = signal.signal(signal.SIGTERM, _sigterm)
    started = time.monotonic()
    try:
        stack = Stack(run_dir, default_cache_dir())
        _STATE.stack = stack
        stack.install_all(lambda m: _say(config, m))
        stack.start_all(lambda m: _say(config, m))
    except StackError as exc:
        _STATE.error = f"the local stack did not start: {exc}"
        _say(config, _STATE.error)
        return
    _say(config, f"stack up in {time.monotonic() - started:.1f}s ({run_dir})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stack, run_dir = _STATE.stack, _STATE.run_dir
    _STATE.stack = None
    if stack is not None:
        try:
            stack.stop_all()
        except StackError as exc:
            _say(session.config, f"stopping the stack: {exc}")
    if run_dir is not None and run_dir.exists():
        stop_stale(run_dir, timeout=10)  # anything a test started in the run dir
        if os.environ.get("LEDGER_KEEP_STACK") == "1":
            _say(session.config, f"kept {run_dir}")
        else:
            if exitstatus != 0 and (run_dir / "logs").is_dir():
                keep = TEST_STACKS / f"logs-{run_dir.name}"
                shutil.copytree(run_dir / "logs", keep, dirs_exist_ok=True)
                _say(session.config, f"session failed: stack logs kept in {keep}")
            shutil.rmtree(run_dir, ignore_errors=True)
    if isinstance(_STATE.previous_sigterm, int) or callable(_STATE.previous_sigterm):
        signal.signal(signal.SIGTERM, _STATE.previous_sigterm)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's local stack (started after collection; see the module docstring)."""
    if _STATE.error is not None:
        pytest.fail(_STATE.error, pytrace=False)
    if _STATE.stack is None:
        pytest.fail("the stack fixture is for tests marked `integration` (tests/integration)",
                    pytrace=False)
    yield _STATE.stack


@pytest.fixture(scope="session")
def stack_run_dir(stack: Stack) -> Path:
    """This session's stack directory (tests may create private stacks under it)."""
    return stack.stack_dir


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return Settings.from_env(environ=stack.endpoints())



@pytest.fixture(scope="session")
def settings_v2(stack: Stack, settings: Settings) -> Settings:
    """``settings`` anchoring in the stack's Rekor v2, timestamped by its TSA."""
    try:
        v2 = rekor_v2_env(stack.endpoints())
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    return Settings.from_env(environ={**settings.environment(), **v2})
