"""``python -m services.anchorer``: run the anchorer with settings from the environment.

Test-only: ``LEDGER_TEST_CRASH_AFTER_REKOR=1`` makes the process ``os._exit(137)`` right after
Rekor accepted a new batch entry and before the receipt is stored, to prove that a restart
completes the batch through Rekor's 409 without a second Rekor entry. Never set it in
production.
"""

from __future__ import annotations

import os
import sys

from shared.errors import ConfigError
from shared.lifecycle import run_main
from shared.settings import Settings
from shared.telemetry import configure_logging

from .app import AnchorerHooks, run_anchorer

CRASH_AFTER_REKOR_ENV = "LEDGER_TEST_CRASH_AFTER_REKOR"


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ledger anchorer: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    hooks = AnchorerHooks(crash_after_rekor=os.environ.get(CRASH_AFTER_REKOR_ENV) == "1")
    run_main(run_anchorer(settings, hooks=hooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
