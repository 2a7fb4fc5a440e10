"""The ``ledger`` command: runs stages, the dev stack, verify, audit and bench."""
