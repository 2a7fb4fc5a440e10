"""``ledger restore --from-topic ledger.anchored``: write back batches the database lost, from
the retained ``ledger.anchored`` events, after verifying them.

The topic is read to its end (:func:`ledger.anchored_events.read_lost_batches`) and every
batch it holds that ``ledger.batches`` does not (``--batch ID``: only those) is restored if,
and only if:

* every event of the batch verifies completely (:func:`shared.bundle.verify_bundle`) against
  the **pinned** Rekor key (``--rekor-key``, ``LEDGER_REKOR_PUBLIC_KEY`` or the pin in
  ``ledger.rekor_pins``, as for ``ledger audit``);
* the batch is complete: one event for each leaf ``0..size-1``, one batch, one receipt, and
  the root recomputed from the leaves is the batch's;
* Rekor serves the receipt's entry, and it is the stored one
  (:func:`ledger.audit.check_online_entry`).

Then the batch row and all its members are written in one transaction
(:meth:`shared.repository.Repository.restore_batch`): a member row that survived unbatched
is attached, any other conflicting row makes the batch be refused. Running it again restores
nothing more (idempotent). Exit status: 0 when every lost batch found was restored (or none
was lost), 1 when one was refused, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from shared.errors import ClaimRaced, LedgerError
from shared.verify import LogKey

from .anchored_events import (
    EventBatch,
    batch_record,
    check_batch,
    entry_records,
    read_lost_batches,
    rekor_problems,
)

__all__ = ["cmd_restore", "configure", "register"]


@dataclass
class RestoreReport:
    topic: str
    events: int = 0
    lost: int = 0
    restored: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    present: list[uuid.UUID] = field(default_factory=list)
    refused: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would restore" if self.dry_run else "restored"
        out = [f"\u2713 {verb} batch {b}: {n} entries" for b, n in self.restored]
        out += [f"\u2713 batch {b}: already in the database" for b in self.present]
        out += [f"\u2717 batch {b} NOT restored: {why}" for b, why in self.refused]
        out.append(f"events read from {self.topic}: {self.events}; batches the database "
                   f"lacks: {self.lost}; {verb}: {len(self.restored)} batches, "
                   f"{sum(n for _, n in self.restored)} entries; refused: {len(self.refused)}")
        out.append("RESTORE FAILED" if self.refused else "RESTORE DONE")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "events": self.events, "lost": self.lost,
            "dry_run": self.dry_run,
            "restored": [{"batch_id": str(b), "entries": n} for b, n in self.restored],
            "present": [str(b) for b in self.present],
            "refused": [{"batch_id": str(b), "reason": why} for b, why in self.refused],
        }


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-topic", required=True, metavar="TOPIC",
                   help="the retained ledger.anchored topic to restore from")
    p.add_argument("--batch", type=uuid.UUID, action="append", default=None, metavar="ID",
                   help="restore only this batch (repeatable; default: every lost batch)")
    p.add_argument("--rekor-key", default=None, metavar="PEM",
                   help="the Rekor log public key you pin (default: LEDGER_REKOR_PUBLIC_KEY, "
                        "else the pin in ledger.rekor_pins)")
    p.add_argument("--dry-run", action="store_true", help="verify, but write nothing")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="how long reading the topic to its end may take (default 600)")


async def _restore_one(repo: Any, rekor: Any, batch: EventBatch, log_key: LogKey,
                       report: RestoreReport) -> None:
    problems = check_batch(batch, log_key.der)
    if not problems:
        problems = await rekor_problems(rekor, batch, log_key)
    if problems:
        report.refused.append((batch.batch_id, "; ".join(problems[:5])))
        return
    members = entry_records(batch)
    if report.dry_run:
        report.restored.append((batch.batch_id, len(members)))
        return
    try:
        outcome = await repo.restore_batch(batch_record(batch), members)
    except ClaimRaced as exc:
        report.refused.append((batch.batch_id, f"conflicts with the database: {exc}"))
        return
    if outcome == "present":
        report.present.append(batch.batch_id)
    else:
        report.restored.append((batch.batch_id, len(members)))


async def _main(args: argparse.Namespace, err: TextIO) -> RestoreReport:
    from shared.db import Database  # noqa: PLC0415
    from shared.rekor import RekorClient  # noqa: PLC0415
    from shared.repository import Repository  # noqa: PLC0415
    from shared.settings import Settings  # noqa: PLC0415

    from .audit.command import resolve_log_key  # noqa: PLC0415
    from .audit.progress import StepProgress  # noqa: PLC0415

    settings = Settings.from_env()
    db = await Database.connect(settings, min_size=1, max_size=2)
    repo = Repository(db)
    report = RestoreReport(topic=args.from_topic, dry_run=args.dry_run)
    try:
        log_key, _ = await resolve_log_key(
            repo, rekor_key_file=args.rekor_key, configured=settings.rekor_public_key,
            rekor_url=settings.rekor_server_url)

        async def present(batch_id: uuid.UUID) -> bool:
            return await repo.batch_row(batch_id) is not None

        progress = StepProgress(err, "restore")
        try:
            progress.begin("reading events", None)
            scan = await read_lost_batches(settings, args.from_topic, present=present,
                                           only=args.batch, timeout_s=args.timeout,
                                           on_events=progress.advance)
            report.events, report.lost = scan.events, len(scan.lost)
            progress.begin("restoring batches", len(scan.lost))
            async with RekorClient.from_settings(settings) as rekor:
                for batch in sorted(scan.lost.values(), key=lambda b: b.any.receipt.log_index):
                    await _restore_one(repo, rekor, batch, log_key, report)
                    progress.advance(1)
        finally:
            progress.stop()
        return report
    finally:
        await db.close()


def cmd_restore(args: argparse.Namespace, *, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """``ledger restore``: exit 0 all lost batches restored, 1 one was refused, 2 error."""
    err = err or sys.stderr
    try:
        report = asyncio.run(_main(args, err))
    except LedgerError as exc:
        print(f"ledger restore: error: {exc}", file=err)
        return 2
    out = out or sys.stdout
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        for line in report.lines():
            print(line, file=out)
    return 1 if report.refused else 0


def register(register_command: Any) -> None:
    register_command("restore", "write back batches the database lost, from the retained "
                     "ledger.anchored events, verified first", configure, cmd_restore)
