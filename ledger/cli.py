"""The ``ledger`` command line.

Stack commands (the local services the pipeline needs, run as real processes on 127.0.0.1):

* ``ledger stack install``  fetch/build everything into the cache (idempotent);
* ``ledger stack up``       start, print endpoints and credentials, run until Ctrl-C/SIGTERM;
* ``ledger stack down``     stop a stack left running (its supervisor or stale processes);
* ``ledger stack status``   what runs, on which ports;
* ``ledger stack env``      the endpoints as ``export K=V`` lines (``eval "$(ledger stack env)"``);
* ``ledger dev``            ``stack up`` plus the pipeline (``ledger.pipeline``).

The stack directory is ``$LEDGER_STACK_DIR`` or ``./.stack``; downloads and builds are cached
in ``$LEDGER_CACHE_DIR`` or ``~/.cache/ledger``. ``LEDGER_STACK_SERVICES=postgres,kafka``
limits the services; variables already set in the environment (``CRDB_DSN``,
``KAFKA_BOOTSTRAP_SERVERS``, ``VAULT_ADDR`` + ``VAULT_TOKEN``, ``REKOR_SERVER_URL``) make
that service external (not started).

Other commands register themselves with :func:`register_command`.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from deploy.local.base import default_cache_dir, default_stack_dir
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.stack import Stack, stack_status, stop_stale
from ledger import dlq, kafka_acls, pipeline, proof
from shared.errors import LedgerError

__all__ = [
    "DEV_PROCESSES",
    "DevProcess",
    "ProgressDisplay",
    "build_parser",
    "main",
    "register_command",
]

# --- the pipeline's own processes for `ledger dev` ------------------------------------------


@dataclass(frozen=True)
class DevProcess:
    """A process `ledger dev` runs next to the stack, with the stack's endpoints in its env.

    ``argv`` is what to run (e.g. ``[sys.executable, "-m", "services.ingest"]``); ``env``
    adds or overrides variables. Output goes to ``<stack_dir>/logs/<name>.log``. A
    ``oneshot`` process (e.g. migrations) must exit 0 before the next one starts.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    oneshot: bool = False
    ready_url: str | None = None  # answers (any HTTP status) once the process is up


#: Extra processes `ledger dev` starts after the pipeline's own (see ledger.pipeline).
DEV_PROCESSES: list[DevProcess] = []


# --- progress ----------------------------------------------------------------------------------


def _fmt_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:4.1f}s"


class ProgressDisplay:
    """Shows what is going on during long steps (Maven, the Go build of Rekor, starts).

    On a terminal: a live line with a spinner, the current step, and its elapsed time and
    the total, above which finished steps scroll. Otherwise (CI, a pipe): plain timestamped
    lines, plus a "still running" line every 30 s so a long step never looks hung.
    """

    HEARTBEAT_S = 30.0

    def __init__(self, title: str, *, stream: TextIO | None = None,
                 force_plain: bool | None = None) -> None:
        self.title = title
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream)
        self.plain = (not self.console.is_terminal) if force_plain is None else force_plain
        self._t0 = time.monotonic()
        self._step = "starting"
        self._step_t0 = self._t0
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            previous, previous_t0 = self._step, self._step_t0
            self._step, self._step_t0 = message, now
        if self.plain:
            print(f"[{_fmt_elapsed(now - self._t0):>7}] {message}", file=self.stream, flush=True)
        elif self._live is not None:
            if previous != "starting":
                self.console.print(Text.assemble(
                    ("  ✓ ", "green"), previous, (f"  ({_fmt_elapsed(now - previous_t0)})", "dim")
                ))
        else:
            self.console.print(message)

    def _render(self) -> RenderableType:
        now = time.monotonic()
        with self._lock:
            step, step_t0 = self._step, self._step_t0
        line = Text.assemble(
            (f"{self.title}: ", "bold"), step,
            (f"  {_fmt_elapsed(now - step_t0)}", "cyan"),
            (f"  (total {_fmt_elapsed(now - self._t0)})", "dim"),
        )
        return Group(Spinner("dots", text=line))

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            with self._lock:
                step, step_t0 = self._step, self._step_t0
            print(f"[{_fmt_elapsed(time.monotonic() - self._t0):>7}] ... still: {step} "
                  f"({_fmt_elapsed(time.monotonic() - step_t0)})", file=self.stream, flush=True)

    def __enter__(self) -> ProgressDisplay:
        self._t0 = self._step_t0 = time.monotonic()
        if self.plain:
            print(f"{self.title} ...", file=self.stream, flush=True)
            self._heartbeat = threading.Thread(target=self._beat, daemon=True)
            self._heartbeat.start()
        else:
            self._live = Live(get_renderable=self._render, console=self.console,
                              refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        total = _fmt_elapsed(time.monotonic() - self._t0)
        if self._live is not None:
            self(f"{self.title}: done" if exc is None else f"{self.title}: failed")
            self._live.stop()
            self._live = None
        outcome = "done" if exc is None else "FAILED"
        if self.plain:
            print(f"{self.title} {outcome} in {total}", file=self.stream, flush=True)
        else:
            self.console.print(f"[bold]{self.title}[/bold] {outcome} in {total}")


# --- commands ------------------------------------------------------------------------------


def _stack(args: argparse.Namespace) -> Stack:
    services = args.services.split(",") if getattr(args, "services", None) else None
    return Stack(args.stack_dir, args.cache_dir, services)


def _print_endpoints(stack: Stack, console: Console) -> None:
    console.print(f"[bold]ledger stack[/bold] in {stack.stack_dir}")
    for key, value in sorted(stack.endpoints().items()):
        # plain, unwrapped lines so that DSNs and tokens can be copied as they are
        console.print(f"  {key}={value}", soft_wrap=True, markup=False, highlight=False)
    for name in stack.external:
        console.print(f"  ({name}: external, from the environment)")
    console.print(f"  source the environment:  . {shlex.quote(str(stack.env_file))}")
    console.print(f"  logs:                    {stack.stack_dir / 'logs'}")


def cmd_stack_install(args: argparse.Namespace) -> int:
    stack = _stack(args)
    with ProgressDisplay("ledger stack install") as progress:
        stack.install_all(progress)
    return 0


DevPlan = Callable[[Path, Mapping[str, str]], tuple[list[DevProcess], list[str]]]


def _pipeline_plan(stack_dir: Path, endpoints: Mapping[str, str]) -> tuple[
    list[DevProcess], list[str]
]:
    procs, lines, ready = pipeline.dev_processes(stack_dir, endpoints)
    plan = [DevProcess(name, argv, env, oneshot=(name == "migrate"), ready_url=ready.get(name))
            for name, argv, env in procs]
    return plan + DEV_PROCESSES, lines


def _answers(url: str) -> bool:
    """True once something answers HTTP at ``url`` (whatever the status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own loopback URL
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _run_oneshot(proc: ManagedProcess, timeout_s: float = 120.0) -> None:
    proc.start()
    deadline = time.monotonic() + timeout_s
    while proc.running():
        if time.monotonic() > deadline:
            proc.stop()
            raise StackError(f"{proc.name}: did not finish within {timeout_s:.0f}s")
        time.sleep(0.1)
    if proc.returncode() != 0:
        raise StackError(f"{proc.name} failed (exit {proc.returncode()}):\n{proc.log_tail()}")


def _run_foreground(args: argparse.Namespace, plan: DevPlan | None) -> int:
    stack = _stack(args)
    lines: list[str] = []
    console = Console()
    procs: list[ManagedProcess] = []
    with stack.signals_stop():
        try:
            with ProgressDisplay("ledger stack up") as progress:
                if args.install:
                    stack.install_all(progress)
                stack.start_all(progress)
                env = stack.endpoints()
                extra: list[DevProcess] = []
                if plan is not None:
                    extra, lines = plan(stack.stack_dir, env)
                for dev in extra:
                    progress(f"starting {dev.name}")
                    proc = ManagedProcess(name=dev.name, argv=list(dev.argv),
                                          stack_dir=stack.stack_dir, cwd=Path.cwd(),
                                          env={**env, **dev.env})
                    if dev.oneshot:
                        _run_oneshot(proc)
                        continue
                    proc.start()
                    procs.append(proc)
                for dev, proc in zip([d for d in extra if not d.oneshot], procs, strict=True):
                    if dev.ready_url is not None:
                        url: str = dev.ready_url
                        progress(f"waiting for {dev.name} to answer at {url}")
                        wait_until(functools.partial(_answers, url), timeout=120,
                                   what=dev.name, proc=proc)
            _print_endpoints(stack, console)
            for proc in procs:
                console.print(f"  {proc.name}: pid {proc.pid}, log {proc.log_path}")
            for line in lines:
                console.print(line, soft_wrap=True, markup=False, highlight=False)
            console.print("[bold green]ready[/bold green] - Ctrl-C (or SIGTERM) stops everything")
            _watch(stack, procs, console)
        except KeyboardInterrupt as exc:
            console.print(f"\nstopping ({exc or 'interrupt'}) ...")
        finally:
            for proc in reversed(procs):
                proc.stop()
            stack.stop_all()
            console.print("stopped")
    return 0


def _watch(stack: Stack, procs: Sequence[ManagedProcess], console: Console) -> None:
    """Sleep until interrupted; say once when a supervised process dies."""
    reported: set[int] = set()
    while True:
        time.sleep(1.0)
        watched = [p for ps in stack.processes().values() for p in ps] + list(procs)
        for proc in watched:
            if not proc.running() and id(proc) not in reported and proc.returncode() is not None:
                reported.add(id(proc))
                console.print(f"[bold red]{proc.name} exited with code {proc.returncode()}[/]"
                              f"; log: {proc.log_path}")


def cmd_stack_up(args: argparse.Namespace) -> int:
    return _run_foreground(args, None)


def cmd_dev(args: argparse.Namespace) -> int:
    return _run_foreground(args, _pipeline_plan)


def cmd_stack_down(args: argparse.Namespace) -> int:
    stopped = stop_stale(args.stack_dir, say=print)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    supervisor, services, processes = stack_status(args.stack_dir)
    console = Console()
    console.print(f"stack {Path(args.stack_dir).resolve()}: "
                  + (f"supervised by pid {supervisor}" if supervisor else "no supervisor running"))
    table = Table("service", "ports")
    for s in services:
        table.add_row(s.name, ", ".join(
            f"{k}={v} ({'listening' if s.listening[k] else 'closed'})"
            for k, v in sorted(s.ports.items())
        ))
    console.print(table)
    table = Table("process", "pid", "state")
    for p in processes:
        table.add_row(p.name, str(p.pid or "-"), "running" if p.alive else "stopped")
    if processes:
        console.print(table)
    return 0 if supervisor or any(p.alive for p in processes) else 3


def cmd_stack_env(args: argparse.Namespace) -> int:
    env_file = Path(args.stack_dir).resolve() / "endpoints.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            if line.startswith("export "):
                print(line)
        return 0
    for key, value in sorted(_stack(args).endpoints().items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


# --- parser --------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], int]
_EXTRA_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def register_command(name: str, help_text: str,
                     configure: Callable[[argparse.ArgumentParser], None],
                     handler: Handler) -> None:
    """Add a top-level subcommand (``configure`` adds its arguments)."""
    _EXTRA_COMMANDS.append((name, help_text, configure, handler))


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--services", default=None,
                   help="comma-separated subset of postgres,kafka,openbao,rekor,rekor_v2,tsa "
                        "(default: $LEDGER_STACK_SERVICES or all)")


def _add_up_options(p: argparse.ArgumentParser) -> None:
    _add_stack_options(p)
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not run the (idempotent) install step first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack-dir", type=Path, default=None,
                        help="stack directory (default: $LEDGER_STACK_DIR or ./.stack)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="download/build cache (default: $LEDGER_CACHE_DIR or "
                             "~/.cache/ledger)")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local services (PostgreSQL, Kafka, OpenBao, "
                                         "Rekor v1 and v2, a timestamp authority)")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    p = stack_sub.add_parser("install", help="fetch and build everything (idempotent)")
    _add_stack_options(p)
    p.set_defaults(func=cmd_stack_install)
    p = stack_sub.add_parser("up", help="start and run in the foreground until Ctrl-C")
    _add_up_options(p)
    p.set_defaults(func=cmd_stack_up)
    p = stack_sub.add_parser("down", help="stop a stack left running")
    p.set_defaults(func=cmd_stack_down)
    p = stack_sub.add_parser("status", help="show what runs")
    p.set_defaults(func=cmd_stack_status)
    p = stack_sub.add_parser("env", help="print the endpoints as export lines")
    _add_stack_options(p)
    p.set_defaults(func=cmd_stack_env)

    p = sub.add_parser("dev", help="the stack plus the pipeline's processes, in the foreground")
    _add_up_options(p)
    p.set_defaults(func=cmd_dev)

    def add(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None],
            handler: Handler) -> None:
        p = sub.add_parser(name, help=help_text)
        configure(p)
        p.set_defaults(func=handler)

    pipeline.register(add)
    dlq.register(add)
    kafka_acls.register(add)
    proof.register(add)
    for entry in _EXTRA_COMMANDS:
        add(*entry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.stack_dir = (args.stack_dir or default_stack_dir()).resolve()
    args.cache_dir = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    os.environ.setdefault("LEDGER_CACHE_DIR", str(args.cache_dir))
    try:
        code: int = args.func(args)
    except (StackError, LedgerError) as exc:
        print(f"ledger: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
