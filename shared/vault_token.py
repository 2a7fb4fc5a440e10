"""The Vault token a process presents: where it comes from, renewal, and rejection.

* **Source.** ``VAULT_TOKEN``, or a file (``VAULT_TOKEN_FILE``; for one stage,
  ``LEDGER_SIGNER_VAULT_TOKEN_FILE`` / ``LEDGER_ANCHORER_VAULT_TOKEN_FILE``, which win).
  A file is re-read whenever Vault rejects the token: rotating a token is writing the new
  one into the file; the stage picks it up at its next retry, without a restart.
* **Renewal.** :func:`keep_renewed` looks the token up, sleeps half its remaining TTL and
  renews it (``auth/token/renew-self``), for as long as the process runs. A token that never
  expires (TTL 0: a root or dev token) is only looked up again now and then.
* **Rejection** (:mod:`shared.vault_errors`): a revoked or expired token pauses the stage
  with :data:`~shared.vault_errors.REJECTED_HINT` in the log until a valid token is read.

The token itself is never logged nor put into an error message (``repr`` hides it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from shared.errors import ConfigError, VaultError, VaultUnavailable
from shared.settings import Settings
from shared.vault_errors import REJECTED_HINT, VaultForbidden

__all__ = ["VaultToken", "keep_renewed"]

log = logging.getLogger("ledger.vault")
_STAGES: Final = ("signer", "anchorer")

class VaultToken:
    """The token in use, and the file a replacement is read from (if any)."""

    def __init__(self, token: str, file: str = "") -> None:
        self._token = token
        self._file = file

    def __repr__(self) -> str:
        return f"VaultToken(file={self._file!r})"

    @classmethod
    def for_stage(cls, settings: Settings, stage: str | None = None) -> VaultToken:
        """The token of ``stage`` (``signer``/``anchorer``), else of the process.

        A configured file must be readable and non-empty (else :class:`ConfigError`).
        """
        file = ""
        if stage in _STAGES:
            file = str(getattr(settings, f"{stage}_vault_token_file"))
        file = file or settings.vault_token_file
        if not file:
            return cls(settings.vault_token.get_secret_value())
        token = _read(file)
        if not token:
            raise ConfigError(f"Vault token file {file} is empty or unreadable")
        return cls(token, file)

    @property
    def value(self) -> str:
        return self._token

    @property
    def file(self) -> str:
        return self._file

    def reload(self) -> bool:
        """Re-read the token file; True when it now holds another (non-empty) token."""
        if not self._file:
            return False
        token = _read(self._file)
        if not token or token == self._token:
            return False
        self._token = token
        log.info("vault token re-read from its file", extra={"file": self._file})
        return True


def _read(file: str) -> str:
    try:
        return Path(file).read_text().strip()
    except OSError as exc:
        log.warning("vault token file unreadable", extra={"file": file,
                                                         "error": type(exc).__name__})
        return ""


#: ``auth/token/<op>`` with the token, ``op`` ``lookup-self`` or ``renew-self``: the answer
TokenCall = Callable[[str], Awaitable[Mapping[str, Any]]]


async def keep_renewed(
    token: VaultToken, call: TokenCall, *, retry_s: float = 5.0, idle_s: float = 300.0,
    min_sleep_s: float = 0.5,
) -> None:
    """Renew ``token`` at half its TTL until cancelled (``call``: an ``auth/token`` call).

    Failures never end the loop: a rejected token is logged (:data:`REJECTED_HINT`), its
    file re-read, and the loop tries again after ``retry_s``, as after Vault being down.
    """
    rejected = False
    while True:
        try:
            data = await call("lookup-self")
            rejected = False
            ttl = int(data.get("ttl") or 0)
            if ttl <= 0:  # never expires
                await asyncio.sleep(idle_s)
                continue
            await asyncio.sleep(max(ttl / 2, min_sleep_s))
            if not data.get("renewable"):
                continue  # it will expire; the rejection path then reads the file
            auth = await call("renew-self")
            log.info("vault token renewed", extra={"ttl_s": auth.get("lease_duration")})
        except VaultForbidden:
            if not token.reload():
                if not rejected:  # once per rejection, not at every retry
                    log.error(REJECTED_HINT, extra={"file": token.file or None})  # noqa: TRY400
                rejected = True
                await asyncio.sleep(retry_s)
        except (VaultError, VaultUnavailable) as exc:
            log.warning("vault token renewal failed; retrying", extra={"error": str(exc)})
            await asyncio.sleep(retry_s)
