"""The pinned Rekor log key: every receipt is verified against it, never against Rekor's word.

Where the key comes from, in order:

1. ``settings.rekor_public_key`` (``LEDGER_REKOR_PUBLIC_KEY``): a PEM file path or the PEM,
   read by :func:`shared.trust.load_configured_key` (the offline auditor reads it the same way);
2. a key pinned earlier for this Rekor URL in ``ledger.rekor_pins`` (shared by every
   anchorer process);
3. trust on first use: fetched once from ``GET /api/v1/log/publicKey`` and pinned in the
   database, with a loud warning — from then on a Rekor that changes its key is refused.

The key is loaded once per process and cached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from shared.trust import load_configured_key
from shared.verify import LogKey, load_log_key

__all__ = ["LogKeySource", "PinStore", "PublicKeyFetcher"]

log = logging.getLogger("ledger.anchorer.trust")


class PinStore(Protocol):
    async def pinned_log_key(self, rekor_url: str) -> str | None: ...
    async def pin_log_key(self, *, rekor_url: str, pem: str, log_id: str) -> str: ...


class PublicKeyFetcher(Protocol):
    async def get_public_key(self, tree_id: str | None = None) -> str: ...


class LogKeySource:
    def __init__(
        self,
        *,
        configured: str,
        rekor_url: str,
        pins: PinStore,
        fetcher: PublicKeyFetcher,
    ) -> None:
        self._configured = configured
        self._rekor_url = rekor_url
        self._pins = pins
        self._fetcher = fetcher
        self._key: LogKey | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> LogKey:
        if self._key is not None:
            return self._key
        async with self._lock:
            if self._key is None:
                self._key = await self._resolve()
            return self._key

    async def _resolve(self) -> LogKey:
        configured = load_configured_key(self._configured)
        if configured is not None:
            log.info(
                "Rekor log key pinned from configuration",
                extra={"log_id": configured.log_id, "rekor_url": self._rekor_url},
            )
            return configured
        pinned = await self._pins.pinned_log_key(self._rekor_url)
        if pinned is not None:
            key = load_log_key(pinned)
            log.info(
                "Rekor log key pinned in the database",
                extra={"log_id": key.log_id, "rekor_url": self._rekor_url},
            )
            return key
        fetched = await self._fetcher.get_public_key()
        fresh = load_log_key(fetched)
        stored = await self._pins.pin_log_key(
            rekor_url=self._rekor_url, pem=fetched, log_id=fresh.log_id
        )
        key = load_log_key(stored)
        log.warning(
            "NO REKOR PUBLIC KEY CONFIGURED: trusting the key Rekor served on first use and "
            "pinning it in ledger.rekor_pins. Set LEDGER_REKOR_PUBLIC_KEY to the log's key "
            "obtained out of band.",
            extra={"log_id": key.log_id, "rekor_url": self._rekor_url, "tofu": True},
        )
        return key
