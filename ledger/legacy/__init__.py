"""``ledger import-legacy``: bring the rows of the runbook's service under anchoring.

After ``ledger migrate`` has upgraded the runbook's ``ledger.entries`` in place (the rows
keep their integer id in ``legacy_id``; ``docs/upgrading.md``), this command checks each
such row against the runbook's Vault Transit key and stores the hash of its **legacy leaf**
(:func:`shared.statement.legacy_leaf_bytes`, domain-separated from every ordinary leaf). The
anchorer then anchors those rows like any other, and ``ledger audit`` detects any later
change to them. Its modules:

``checks``    :func:`check_row`: what can be verified of one row without the database (pure)
``importer``  :func:`import_legacy`: the batched, resumable walk over the rows
``command``   :func:`configure` and :func:`cmd_import_legacy`: options, Vault keys, progress
"""

from __future__ import annotations

from .checks import RowCheck, check_row, raw_public_key
from .command import EXIT_CLEAN, EXIT_ERROR, EXIT_FAILED_CHECKS, cmd_import_legacy, configure
from .importer import ImportReport, import_legacy, index_payloads

__all__ = [
    "EXIT_CLEAN",
    "EXIT_ERROR",
    "EXIT_FAILED_CHECKS",
    "ImportReport",
    "RowCheck",
    "check_row",
    "cmd_import_legacy",
    "configure",
    "import_legacy",
    "index_payloads",
    "raw_public_key",
]
