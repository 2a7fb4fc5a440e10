"""``ledger audit``: recompute every leaf and root from the database and compare with Rekor.

The ledger is tamper-evident against its own database administrators only if somebody
checks. This command reads ``ledger.entries`` and ``ledger.batches`` and finds any row that
was changed, removed or inserted after it was anchored:

* every entry: the stored statement is the canonical JSON whose fields are the row's request
  id, subject, payload hash, meta and submission time; the id is the UUIDv5 of the request
  id; the content hash is the row's; the ``vault:vN:`` Ed25519 signature verifies over the
  statement with the row's public key; all rows signed with one key version carry the same
  public key;
* every batch (``--batch ID``: one): its members, in leaf order, have leaf indexes exactly
  ``0..size-1`` (a gap is a removed row, a duplicate or an index beyond the size an inserted
  one); the RFC 6962 root recomputed from their leaves is the stored root, which is the root
  the stored manifest names; SHA-256 of the manifest is the stored digest; the ECDSA P-256
  anchor signature verifies; the stored Rekor receipt verifies against the **pinned** Rekor
  key and its body holds exactly this digest, signature and anchor key; every member names
  the batch's Rekor entry; with ``--online`` the entry is also fetched from Rekor by its uuid,
  verified again and compared with the stored receipt;
* rows that claim a batch that does not exist, or are marked anchored without an anchored
  batch.

Entries not anchored yet (no batch, or a pending batch) get the entry checks and are counted
separately: until their batch is in Rekor, an administrator could rewrite them unnoticed.

Rows are read in keyset-paginated chunks (never the whole table at once) and each batch's
root is computed with O(log n) memory. The checks a proof bundle also gets (statement,
entry signature, manifest, digest, anchor signature, receipt) are :mod:`shared.checks`, the
same functions ``ledger verify`` runs; this package adds what only a database can have
wrong. Its modules:

``entries``   :class:`EntryChecker`: one row against itself, and key use across rows (pure)
``batches``   :class:`BatchChecker`, :func:`check_batch_record`, :func:`check_online_entry`:
              one batch and its members (pure)
``report``    :class:`Problem` and :class:`AuditReport`: what was found, and its printed form
``scan``      :func:`run_audit`: reads the database in chunks and feeds the checkers
``lost``      :func:`find_lost_batches`: with ``--online --events-topic``, the batches the
              retained ``ledger.anchored`` events and Rekor hold but the database lost
``progress``  progress on stderr
``command``   :func:`configure` and :func:`cmd_audit`: the options, the pinned Rekor key
              (:func:`resolve_log_key`), the exit status

Exit status: 0 clean, 1 when any problem was found, 2 when the audit could not run (usage,
configuration, no pinned Rekor key, database or Rekor unreachable).

Nothing here imports a service (``services.*``): the auditor is an offline program that
shares only ``shared`` with the pipeline it audits.
"""

from __future__ import annotations

from .batches import BatchChecker, BatchColumns, check_batch_record, check_online_entry
from .command import EXIT_CLEAN, EXIT_ERROR, EXIT_PROBLEMS, cmd_audit, configure, resolve_log_key
from .entries import EntryChecker
from .report import AuditReport, Problem
from .scan import run_audit

__all__ = [
    "EXIT_CLEAN",
    "EXIT_ERROR",
    "EXIT_PROBLEMS",
    "AuditReport",
    "BatchChecker",
    "BatchColumns",
    "EntryChecker",
    "Problem",
    "check_batch_record",
    "check_online_entry",
    "cmd_audit",
    "configure",
    "resolve_log_key",
    "run_audit",
]
