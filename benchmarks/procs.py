"""CPU time and memory of processes, read from ``/proc``, as deployed: one process per stage.

A :class:`CpuMeter` is given named process *trees* (a stage, Kafka's JVM, the PostgreSQL
postmaster with every backend, OpenBao, rekor-server, each Trillian program). It samples
``utime + stime`` of every live process in each tree plus ``cutime + cstime`` (the time of
children that already exited and were reaped: PostgreSQL backends come and go), so the
figure of a tree only ever grows. Two samples give CPU-seconds per tree over the interval.

Also here: the machine-wide busy time from ``/proc/stat`` (cores busy) and a process's peak
resident set size (``VmHWM``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "CpuSample", "machine_busy_seconds", "peak_rss_mb", "tree_pids"]

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its end
    return text[text.rindex(")") + 2 :].split()


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                out[int(entry.name)] = int(fields[1])
    return out


def tree_pids(root: int, ppids: Mapping[int, int] | None = None) -> list[int]:
    """``root`` and every live descendant."""
    parents = _ppids() if ppids is None else ppids
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime (fields 14-17 of ``/proc/<pid>/stat``)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # after "pid (comm) ": state is index 0, utime is field 14 → index 11
    return sum(int(x) for x in fields[11:15])


@dataclass(frozen=True)
class CpuSample:
    """CPU-seconds per named tree at one moment, and the machine's busy seconds."""

    seconds: dict[str, float]
    machine_busy: float

    def minus(self, earlier: CpuSample) -> dict[str, float]:
        return {
            name: max(0.0, value - earlier.seconds.get(name, 0.0))
            for name, value in self.seconds.items()
        }


def _other_threads_ticks(pid: int) -> int:
    """utime + stime of every thread of ``pid`` but its main thread."""
    total = 0
    try:
        tids = [t for t in (_PROC / str(pid) / "task").iterdir() if t.name != str(pid)]
    except OSError:
        return 0
    for tid in tids:
        try:
            text = (tid / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


class CpuMeter:
    """CPU of named process trees; ``add`` roots at any time (a tree seen late counts from 0).

    A tree added with ``threads=True`` also reports ``<name>.threads``: the CPU of its
    processes' threads other than the main one (a stage's event loop runs in the main
    thread; the signer verifies signatures in worker threads).
    """

    def __init__(self, roots: Mapping[str, Iterable[int]] | None = None) -> None:
        self._roots: dict[str, list[int]] = {}
        self._split: set[str] = set()
        for name, pids in (roots or {}).items():
            self.add(name, pids)

    def add(self, name: str, pids: Iterable[int], *, threads: bool = False) -> None:
        self._roots.setdefault(name, []).extend(pids)
        if threads:
            self._split.add(name)

    def names(self) -> list[str]:
        return list(self._roots)

    def sample(self) -> CpuSample:
        ppids = _ppids()
        seconds: dict[str, float] = {}
        for name, roots in self._roots.items():
            pids: set[int] = set()
            for root in roots:
                pids.update(tree_pids(root, ppids))
            seconds[name] = sum(_cpu_ticks(p) for p in pids) / _TICK
            if name in self._split:
                seconds[f"{name}.threads"] = sum(_other_threads_ticks(p) for p in pids) / _TICK
        return CpuSample(seconds=seconds, machine_busy=machine_busy_seconds())


def machine_busy_seconds() -> float:
    """All cores' non-idle time since boot, from the ``cpu`` line of ``/proc/stat``."""
    line = (_PROC / "stat").read_text().splitlines()[0].split()
    values = [int(x) for x in line[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    total = sum(values[:8])
    return (total - idle) / _TICK


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM``: the most resident memory the process ever had, in MiB (None if gone)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
