"""Progress of a running audit on stderr: a bar on a terminal, a line now and then elsewhere.

Only the command uses these; the audit itself reports to a :class:`Progress`, and
:class:`NoProgress` when nobody watches. Progress never goes to stdout: that is where the
problems and the report are printed, and scripts read them there.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TextIO

__all__ = ["LineProgress", "NoProgress", "Progress", "RichProgress", "StepProgress"]


class Progress(Protocol):
    """What the audit tells whoever watches it."""

    def start(self, total_batches: int) -> None: ...
    def batch_done(self, entries: int) -> None: ...
    def rows_scanned(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    """Progress for nobody (the default of :func:`ledger.audit.run_audit`)."""

    def start(self, total_batches: int) -> None:
        pass

    def batch_done(self, entries: int) -> None:
        pass

    def rows_scanned(self, rows: int) -> None:
        pass

    def stop(self) -> None:
        pass


class LineProgress:
    """A line on stderr every ``every`` batches (and at the end) when stderr is not a TTY."""

    def __init__(self, stream: TextIO, every: int = 100) -> None:
        self._stream, self._every = stream, every
        self._total = self._batches = self._entries = self._rows = 0
        self._started = time.monotonic()

    def start(self, total_batches: int) -> None:
        self._total = total_batches

    def batch_done(self, entries: int) -> None:
        self._batches += 1
        self._entries += entries
        if self._batches % self._every == 0:
            self._say()

    def rows_scanned(self, rows: int) -> None:
        self._rows += rows

    def _say(self) -> None:
        print(f"audit: {self._batches}/{self._total} batches, {self._entries} batched entries, "
              f"{self._rows} other rows, {time.monotonic() - self._started:.1f}s",
              file=self._stream, flush=True)

    def stop(self) -> None:
        self._say()


class RichProgress:
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress  # noqa: PLC0415

        self._progress = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
            console=Console(file=stream), transient=True,
        )
        self._entries = self._rows = 0
        self._task: Any = None

    def start(self, total_batches: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("auditing batches", total=total_batches,
                                             detail="")

    def batch_done(self, entries: int) -> None:
        self._entries += entries
        self._progress.update(self._task, advance=1, detail=f"{self._entries} entries")

    def rows_scanned(self, rows: int) -> None:
        self._rows += rows
        self._progress.update(self._task, detail=f"{self._entries} entries, {self._rows} "
                              "unbatched rows")

    def stop(self) -> None:
        self._progress.stop()


class StepProgress:
    """Progress of a command made of steps (``ledger restore``, the audit's event scan): a
    rich bar per step on a terminal, a line per step and at the end elsewhere."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream, self._name = stream, name
        self._bar: Any = None
        self._task: Any = None
        self._step, self._done = "", 0
        if stream.isatty():
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar  # noqa: PLC0415

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(file=stream), transient=True)
            self._bar.start()

    def begin(self, step: str, total: int | None) -> None:
        self._end_step()
        self._step, self._done = step, 0
        if self._bar is not None:
            self._task = self._bar.add_task(f"{self._name}: {step}", total=total)

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def _end_step(self) -> None:
        if self._step and self._bar is None:
            print(f"{self._name}: {self._step}: {self._done}", file=self._stream, flush=True)

    def stop(self) -> None:
        self._end_step()
        self._step = ""
        if self._bar is not None:
            self._bar.stop()
