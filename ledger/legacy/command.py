"""The ``ledger import-legacy`` command: options, Vault's public keys, progress, exit status.

Exit status: 0 when every row of the runbook's service is imported (or already was), 1 when
some rows failed a check and were left out (or, with ``--anchor-failing``, imported anyway),
2 when the import could not run (configuration, database or Vault unreachable). Progress goes
to stderr (a bar on a terminal, a line per batch elsewhere); the report goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from shared.errors import ConfigError, LedgerError
from shared.settings import Settings
from shared.signatures import ed25519_key

from .importer import ImportProgress, ImportReport, import_legacy, index_payloads

__all__ = ["EXIT_CLEAN", "EXIT_ERROR", "EXIT_FAILED_CHECKS", "cmd_import_legacy", "configure"]

EXIT_CLEAN, EXIT_FAILED_CHECKS, EXIT_ERROR = 0, 1, 2


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", default=None, metavar="NAME",
                   help="the Vault Transit Ed25519 key the runbook signed with "
                        "(default: VAULT_TRANSIT_KEY)")
    p.add_argument("--payloads", type=Path, default=None, metavar="DIR",
                   help="a directory of original payloads (any file names): rows whose "
                        "payload hash is the SHA-256 of a file get their signature verified")
    p.add_argument("--batch-size", type=int, default=500, metavar="N",
                   help="rows checked and stored per transaction (default 500)")
    p.add_argument("--anchor-failing", action="store_true",
                   help="also anchor rows that fail a check, as they are now, except rows "
                        "whose signature is malformed (default: leave them out and report "
                        "them)")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")


class _LineProgress:
    def __init__(self, stream: TextIO) -> None:
        self._stream, self._done, self._total = stream, 0, 0

    def start(self, pending: int) -> None:
        self._total = pending
        print(f"import-legacy: {pending} row(s) to check", file=self._stream, flush=True)

    def advance(self, rows: int) -> None:
        self._done += rows
        print(f"import-legacy: {self._done}/{self._total} rows checked", file=self._stream,
              flush=True)


class _RichProgress:
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(TextColumn("importing the runbook's rows"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(file=stream), transient=True)
        self._task: Any = None

    def start(self, pending: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("import", total=pending)

    def advance(self, rows: int) -> None:
        self._progress.update(self._task, advance=rows)

    def stop(self) -> None:
        self._progress.stop()


async def vault_ed25519_keys(settings: Settings, key_name: str) -> dict[int, bytes]:
    """Version → raw public key of the Transit key ``key_name``, as Vault serves them."""
    from shared.vault import TransitSigner  # noqa: PLC0415

    signer = TransitSigner(settings)
    try:
        if await signer.key_type(key_name) != "ed25519":
            raise ConfigError(f"Vault transit key {key_name!r} is not an ed25519 key")
        keys = {}
        for version, public in (await signer.public_keys(key_name)).items():
            key = ed25519_key(public.der)
            if key is not None:
                keys[version] = key.public_bytes_raw()
        return keys
    finally:
        await signer.close()


async def _main(args: argparse.Namespace, progress: ImportProgress) -> tuple[ImportReport, str]:
    from shared.db import Database  # noqa: PLC0415

    settings = Settings.from_env()
    key_name = args.key or settings.vault_transit_key
    if args.payloads is not None and not args.payloads.is_dir():
        raise ConfigError(f"--payloads {args.payloads} is not a directory")
    payloads = await asyncio.to_thread(index_payloads, args.payloads)
    keys = await vault_ed25519_keys(settings, key_name)
    db = await Database.connect(settings, min_size=1, max_size=2)
    try:
        report = await import_legacy(db, vault_keys=keys, key_name=key_name, payloads=payloads,
                                     batch_size=args.batch_size,
                                     anchor_failing=args.anchor_failing, progress=progress)
    finally:
        await db.close()
    return report, key_name


def cmd_import_legacy(args: argparse.Namespace, *, out: TextIO | None = None,
                      err: TextIO | None = None) -> int:
    """``ledger import-legacy``: exit 0 all imported, 1 rows failed a check, 2 could not run."""
    err = err or sys.stderr
    if args.batch_size < 1:
        print("ledger import-legacy: error: --batch-size must be at least 1", file=err)
        return EXIT_ERROR
    rich = _RichProgress(err) if err.isatty() else None
    try:
        report, key_name = asyncio.run(_main(args, rich or _LineProgress(err)))
    except LedgerError as exc:
        print(f"ledger import-legacy: error: {exc}", file=err)
        return EXIT_ERROR
    finally:
        if rich is not None:
            rich.stop()
    out = out or sys.stdout
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        for line in report.summary_lines(key_name):
            print(line, file=out)
    return EXIT_FAILED_CHECKS if report.failed else EXIT_CLEAN
