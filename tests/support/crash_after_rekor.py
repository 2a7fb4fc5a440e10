"""``python -m tests.support.crash_after_rekor``: ``ledger anchorer`` with a crash injected (tests only).

The anchorer runs with its real wiring and settings from the environment, except that its
Rekor client exits the process (``os._exit(137)``, as a ``kill -9`` would leave things) right
after Rekor accepted a new entry (201) and before the anchorer stores the receipt: the moment
a crash hurts most. A restarted anchorer must then complete the batch through Rekor's 409,
without a second Rekor entry. The crash is injected by replacing how the ``rekor``
dependency opens, so the product code carries no test hook.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import NoReturn

from services.anchorer import AnchorerProcess
from shared.lifecycle import run_main
from shared.rekor import RekorClient, RekorEntry
from shared.rekor_v2 import RekorV2Client, RekorV2Entry
from shared.service import at_once
from shared.settings import Settings
from shared.telemetry import configure_logging

__all__ = ["CRASH_MESSAGE", "CrashAfterRekorAccepted", "CrashAfterRekorV2Accepted", "main"]

#: What the process logs (CRITICAL) just before it exits; tests look for it in its log.
CRASH_MESSAGE = "injected crash: exiting right after Rekor accepted the batch"
EXIT_CODE = 137

log = logging.getLogger("tests.crash_after_rekor")


class CrashAfterRekorAccepted(RekorClient):
    """A Rekor client that exits the process once Rekor created an entry (not on a 409)."""

    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> RekorEntry:
        entry = await super().create_hashedrekord(digest_hex, signature_der, public_key_pem)
        _crash(entry.uuid)


class CrashAfterRekorV2Accepted(RekorV2Client):
    """The same for Rekor v2: exits once the log created an entry (not on a 409)."""

    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> RekorV2Entry:
        entry = await super().create_hashedrekord(digest_hex, signature_der, public_key_pem)
        _crash(f"log index {entry.log_index}")


def _crash(ref: str) -> NoReturn:
    log.critical(CRASH_MESSAGE, extra={"rekor_entry": ref})
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_CODE)


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    anchorer = AnchorerProcess(settings)
    if settings.rekor_api == "v2":
        anchorer.rekor.open = at_once(
            lambda: CrashAfterRekorV2Accepted(settings.rekor_server_url,
                                              settings.rekor_read_url,
                                              timeout_s=settings.rekor_timeout_s)
        )
    else:
        anchorer.rekor.open = at_once(
            lambda: CrashAfterRekorAccepted(settings.rekor_server_url,
                                            timeout_s=settings.rekor_timeout_s)
        )
    run_main(anchorer.run())


if __name__ == "__main__":
    main()
