"""``ledger audit --online --events-topic TOPIC``: the batches Rekor holds that the database
has lost.

The list of the ledger's batches lives in ``ledger.batches``: a batch deleted with its rows,
or lost when an older backup is restored, leaves nothing there to check. Its record outside
the database is the retained ``ledger.anchored`` topic (one event per entry, each carrying
the batch and its Rekor receipt). This module reads the topic to its end, keeps the batches
``ledger.batches`` does not have, verifies their events (every leaf, root, receipt against
the pinned key: :func:`ledger.anchored_events.check_batch`) and asks Rekor for each
receipt's entry: a batch that passes is a batch the log holds and the database lost, named
with the command that writes it back.

Rekor's own index of entries by signing key (v1 ``POST /api/v1/index/retrieve``) is not
used: Rekor v1 serves it only with its search index (Redis or MySQL) enabled, which the
local stack's rekor-server v1.5.4 is not, and Rekor v2 has no search at all. Batches
anchored with a receipt this version does not read (Rekor v2) are counted as unreadable
events, and the summary says so (see ``docs/design.md``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from shared.settings import Settings
from shared.verify import LogKey

from ..anchored_events import check_batch, read_lost_batches, rekor_problems
from .report import Problem

__all__ = ["find_lost_batches"]


async def find_lost_batches(
    settings: Settings,
    topic: str,
    *,
    db: Any,
    rekor: Any,
    log_key: LogKey,
    emit: Callable[[Problem], None],
    timeout_s: float = 600.0,
) -> str:
    """Emit a ``lost_batch`` problem for each batch of ``topic`` missing from the database;
    return the summary line of the search."""

    async def present(batch_id: uuid.UUID) -> bool:
        return await db.batch_row(batch_id) is not None

    scan = await read_lost_batches(settings, topic, present=present, timeout_s=timeout_s)
    for batch in sorted(scan.lost.values(), key=lambda b: b.any.receipt.log_index):
        receipt, size = batch.any.receipt, batch.any.batch.size
        problems = check_batch(batch, log_key.der)
        if not problems:
            problems = await rekor_problems(rekor, batch, log_key)
        if problems:
            emit(Problem("lost_batch", f"not in ledger.batches; {topic} holds events for it "
                         "that cannot restore it: " + "; ".join(problems[:3]), batch.batch_id))
            continue
        emit(Problem("lost_batch", f"Rekor holds it (entry {receipt.uuid}, log index "
                     f"{receipt.log_index}) and {topic} holds all {size} of its entries, "
                     "verified, but ledger.batches does not: the database lost it; `ledger "
                     f"restore --from-topic {topic} --batch {batch.batch_id}` writes it back",
                     batch.batch_id))
    line = (f"lost batches: {len(scan.lost)} (searched the {scan.events} retained events of "
            f"{topic}: {scan.batches_seen} batches; not Rekor's index by anchor key, which "
            "Rekor v1 serves only with its search index enabled and Rekor v2 does not have)")
    if scan.unreadable:
        line += (f"; {scan.unreadable} events are not ledger.anchored v1 with a Rekor v1 "
                 "receipt (e.g. Rekor v2) and were not searched")
    return line
