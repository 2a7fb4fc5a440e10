"""``python -m services.anchorer``: run the anchorer with settings from the environment."""

from __future__ import annotations

import sys

from shared.errors import ConfigError
from shared.lifecycle import run_main
from shared.settings import Settings
from shared.telemetry import configure_logging

from .app import run_anchorer


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ledger anchorer: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    run_main(run_anchorer(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
