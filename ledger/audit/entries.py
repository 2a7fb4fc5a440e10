"""The audit's checks of one ``ledger.entries`` row, and of key use across all rows.

The row's statement, signature and key are checked with :mod:`shared.checks`, the checks a
proof bundle's entry gets from ``ledger verify``; what only a database has is checked here:
the id is the UUIDv5 of the request id, the stored content hash is the row's, and all rows
claiming one key version carry the same public key. A row imported from the runbook's
service (``legacy_id`` set) has no statement to check: its id must be the one its integer id
gives and its signature must be readable; its legacy leaf (every column the runbook wrote) is
what the batch check compares with the anchored root, and a legacy leaf that is no longer
the one stored at import names the changed row. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.checks import (
    StatementFields,
    entry_signature_problems,
    read_entry_signature,
    statement_problems,
)
from shared.records import EntryRecord
from shared.signatures import load_public_key_der
from shared.statement import content_sha256, entry_id_for, legacy_entry_id

from .report import Problem, short

__all__ = ["EntryChecker"]


def _column(field: str) -> str:
    """The ``ledger.entries`` column that holds a statement field (for problem sentences)."""
    return f"column {'payload_hash' if field == 'payload_sha256' else field}"


@dataclass
class _KeyUse:
    count: int = 0
    sample: list[tuple[uuid.UUID, uuid.UUID | None]] = field(default_factory=list)


class EntryChecker:
    """The checks of one row against itself (no batch needed), plus key consistency.

    ``check(row)`` returns the row's problems: the checks of :mod:`shared.checks` that a
    proof bundle's entry gets too, worded for database columns. Across all rows it remembers
    which public keys each (key name, version) was used with; :meth:`finish` reports the
    rows whose key differs from the one most rows of that version carry (a row signed with
    some other key but claiming the ledger's key version).
    """

    _SAMPLE = 100

    def __init__(self) -> None:
        self._uses: dict[tuple[str, int], dict[str, _KeyUse]] = {}

    def check(
        self,
        row: EntryRecord,
        *,
        content_hash: str | None = None,
        batch_id: uuid.UUID | None = None,
    ) -> list[Problem]:
        batch = batch_id if batch_id is not None else row.batch_id
        problems: list[Problem] = []

        def bad(check: str, detail: str) -> None:
            problems.append(Problem(check, detail, batch, row.id, row.leaf_index))

        if row.legacy_id is not None:
            self._check_legacy(row, row.legacy_id, bad)
            return problems
        if row.id != entry_id_for(row.request_id):
            bad("entry_id", f"the id is not the UUIDv5 of request id {row.request_id!r} "
                f"({entry_id_for(row.request_id)})")
        self._check_statement(row, bad)
        if content_hash is not None:
            try:
                expected = content_sha256(
                    subject=row.subject, payload_sha256=row.payload_hash, meta=row.meta
                )
            except Exception:  # noqa: BLE001 - meta JSON cannot canonicalise: differs anyway
                expected = ""
            if content_hash != expected:
                bad("content_hash", "content_sha256 is not the hash of the row's subject, "
                    "payload hash and meta")
        self._check_signature(row, bad)
        return problems

    @staticmethod
    def _check_legacy(row: EntryRecord, legacy_id: int, bad: Callable[[str, str], None]) -> None:
        """A row of the runbook's service: the runbook signed a payload the ledger never held,
        so only what does not need it is checked here (``docs/upgrading.md``)."""
        if row.id != legacy_entry_id(legacy_id):
            bad("entry_id", f"the id is not the UUIDv3 of the runbook's id {legacy_id} "
                f"({legacy_entry_id(legacy_id)})")
        if row.request_id != f"runbook:{legacy_id}":
            bad("entry_id", f"the request id of the runbook's row {legacy_id} is not "
                f"'runbook:{legacy_id}'")
        _raw, problems = read_entry_signature(row.sig, row.key_version)
        for detail in problems:
            bad("signature", detail)
        # the batch root finds any change; this names the row (unless the leaf hash was
        # rewritten too, which the root still finds)
        if row.stored_leaf_hash is not None and row.stored_leaf_hash != row.content_leaf_hash():
            bad("legacy_leaf", "the row's legacy leaf (runbook id, subject, payload hash, meta, "
                "creation time, signature or key) is not the one stored when it was imported: "
                "the row was changed")

    def _check_statement(self, row: EntryRecord, bad: Callable[[str, str], None]) -> None:
        claimed = StatementFields(row.request_id, row.subject, row.payload_hash, row.meta,
                                  row.submitted_at)
        for check, detail in statement_problems(row.statement, claimed, label=_column,
                                                show=short):
            bad(check, detail)

    def _check_signature(self, row: EntryRecord, bad: Callable[[str, str], None]) -> None:
        raw, problems = read_entry_signature(row.sig, row.key_version)
        for detail in problems:
            bad("signature", detail)
        if raw is None:
            return
        problems = entry_signature_problems(row.pubkey, raw, row.statement)
        for detail in problems:
            bad("signature", detail)
        if problems:
            return
        # only keys that really signed their row count towards the key version's majority
        fingerprint = hashlib.sha256(load_public_key_der(row.pubkey)).hexdigest()
        use = self._uses.setdefault((row.key_name, row.key_version), {}).setdefault(
            fingerprint, _KeyUse()
        )
        use.count += 1
        if len(use.sample) < self._SAMPLE:
            use.sample.append((row.id, row.batch_id))

    def finish(self) -> list[Problem]:
        """Rows whose key version is claimed by more than one public key (the minority)."""
        problems = []
        for (name, version), uses in sorted(self._uses.items()):
            if len(uses) < 2:
                continue
            ranked = sorted(uses.items(), key=lambda kv: (-kv[1].count, kv[0]))
            main_fp, main = ranked[0]
            for fp, use in ranked[1:]:
                for entry_id, batch_id in use.sample:
                    problems.append(Problem(
                        "entry_key",
                        f"signed with public key {fp[:16]}\u2026 for {name} v{version}, but "
                        f"{main.count} other row(s) of that key version carry "
                        f"{main_fp[:16]}\u2026",
                        batch_id, entry_id,
                    ))
                if use.count > len(use.sample):
                    problems.append(Problem(
                        "entry_key",
                        f"and {use.count - len(use.sample)} more row(s) signed with "
                        f"{fp[:16]}\u2026 for {name} v{version}",
                    ))
        return problems
