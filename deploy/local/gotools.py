"""Programs built with ``go install <package>@<version>`` into ``<cache_dir>/go-bin``, once.

Used by the Rekor services (rekor-server, Trillian, rekor-tiles) and by the benchmarks
(vegeta). A built binary is reused as long as ``go version -m`` shows the wanted package and
version, so every checkout and every CI run on the same machine shares one build. Builds of
the same cache directory are serialised by a lock file, so two sessions never build at once.

A program of the project's own (a small Go module committed with its ``go.mod`` and
``go.sum``, e.g. the timestamp authority's loopback-only wrapper) is built with ``go build``
in module mode by :func:`ensure_go_module`, into the same directory, and rebuilt only when
the SHA-256 of its module files changes.

A module whose ``go.mod`` wants a newer Go than the installed one still builds: the go
command fetches that toolchain through the module proxy (``GOTOOLCHAIN=go<min>+auto``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.local.process import StackError

__all__ = [
    "GoModule",
    "GoTool",
    "binary_module_version",
    "ensure_go_module",
    "ensure_go_tool",
    "go_env",
    "go_executable",
    "go_install",
    "parse_go_version",
]

Progress = Callable[[str], None]


def parse_go_version(text: str) -> tuple[int, ...]:
    match = re.search(r"go(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return (0,)
    return tuple(int(part or 0) for part in match.groups())


def go_executable() -> str:
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise StackError("the Go toolchain (`go`) is needed to build the local stack's programs")


def go_env(min_go: tuple[int, int, int]) -> dict[str, str]:
    """Environment for the go command; picks a newer toolchain if the local one is too old."""
    env = dict(os.environ)
    result = subprocess.run(
        [go_executable(), "env", "GOVERSION"], capture_output=True, text=True, check=False,
        env=env,
    )
    if parse_go_version(result.stdout) < min_go:
        env["GOTOOLCHAIN"] = "go{}.{}.{}+auto".format(*min_go)
    return env


def binary_module_version(binary: Path, env: dict[str, str]) -> tuple[str, str, str] | None:
    """(package path, module, version) embedded in a Go binary, or None."""
    result = subprocess.run(
        [go_executable(), "version", "-m", str(binary)],
        capture_output=True, text=True, check=False, env=env,
    )
    if result.returncode != 0:
        return None
    path = mod = version = ""
    for line in result.stdout.splitlines():
        fields = line.strip().split("\t")
        if fields[0] == "path" and len(fields) >= 2:
            path = fields[1]
        elif fields[0] == "mod" and len(fields) >= 3:
            mod, version = fields[1], fields[2]
    return (path, mod, version) if path else None


def go_install(
    targets: Iterable[str], env: dict[str, str], progress: Progress, *, label: str,
    cwd: Path | None = None, argv: list[str] | None = None,
) -> None:
    """``go install -v <targets>`` with ``env`` (set ``GOBIN`` there); output as progress.

    ``argv`` replaces the command (``go build ...`` in the module directory ``cwd``)."""
    argv = argv or [go_executable(), "install", "-v", *targets]
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        stdin=subprocess.DEVNULL, cwd=cwd,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                progress(f"{label}: go: {line}")
        code = proc.wait()
    if code != 0:
        raise StackError(
            f"{label}: `{' '.join(argv)}` failed with exit code {code}:\n" + "\n".join(tail)
        )
    what = ", ".join(targets) or str(cwd)
    progress(f"{label}: built {what} in {time.monotonic() - started:.0f}s")


@dataclass(frozen=True)
class GoTool:
    """One command: its binary name, Go package and version, and the Go it needs."""

    name: str
    package: str
    version: str
    min_go: tuple[int, int, int] = (1, 21, 0)


def ensure_go_tool(tool: GoTool, cache_dir: Path, progress: Progress) -> Path:
    """The path of ``tool``'s binary in ``<cache_dir>/go-bin``, built first if needed."""
    bin_dir = cache_dir / "go-bin"
    binary = bin_dir / tool.name
    env = go_env(tool.min_go)
    if binary.is_file() and _is_version(binary, tool, env):
        return binary
    with _build_lock(bin_dir, tool.name, progress):
        if binary.is_file() and _is_version(binary, tool, env):
            return binary
        progress(f"{tool.name}: go install {tool.package}@{tool.version} (cached afterwards)")
        go_install([f"{tool.package}@{tool.version}"], {**env, "GOBIN": str(bin_dir)},
                   progress, label=tool.name)
    if not (binary.is_file() and _is_version(binary, tool, env)):
        raise StackError(f"{tool.name}: {binary} missing after go install")
    return binary


def _is_version(binary: Path, tool: GoTool, env: dict[str, str]) -> bool:
    found = binary_module_version(binary, env)
    return found is not None and found[0] == tool.package and found[2] == tool.version


@contextlib.contextmanager
def _build_lock(bin_dir: Path, name: str, progress: Progress) -> Iterator[None]:
    """One build at a time in ``bin_dir`` (the lock file is shared with the Rekor service)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    with (bin_dir / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{name}: another build is running in {bin_dir}; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class GoModule:
    """A main package of the project's own: a directory with ``go.mod``, ``go.sum`` and
    ``*.go`` files, built into a binary called ``name``."""

    name: str
    directory: Path
    min_go: tuple[int, int, int] = (1, 21, 0)

    def digest(self) -> str:
        """SHA-256 over the module's files (names and contents): the cache key."""
        files = [self.directory / "go.mod", self.directory / "go.sum",
                 *sorted(self.directory.glob("*.go"))]
        h = hashlib.sha256()
        for path in files:
            data = path.read_bytes()
            h.update(f"{path.name}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()


def ensure_go_module(module: GoModule, cache_dir: Path, progress: Progress) -> Path:
    """``<cache_dir>/go-bin/<name>``, built with ``go build`` first if its module changed.

    The build is in module mode with ``-mod=readonly``: the committed ``go.sum`` pins every
    dependency. ``<name>.sha256`` next to the binary records the module digest it was built
    from."""
    bin_dir = cache_dir / "go-bin"
    binary = bin_dir / module.name
    marker = bin_dir / f"{module.name}.sha256"
    want = module.digest()

    def current() -> bool:
        with contextlib.suppress(OSError):
            return binary.is_file() and marker.read_text().strip() == want
        return False

    if current():
        return binary
    with _build_lock(bin_dir, module.name, progress):
        if current():
            return binary
        progress(f"{module.name}: go build in {module.directory} (cached afterwards)")
        marker.unlink(missing_ok=True)
        tmp = bin_dir / f".{module.name}.tmp"
        argv = [go_executable(), "build", "-v", "-mod=readonly",
                "-buildvcs=false", "-o", str(tmp), "."]
        go_install([], go_env(module.min_go), progress, label=module.name,
                   cwd=module.directory, argv=argv)
        tmp.replace(binary)
        marker.write_text(want + "\n")
    return binary
