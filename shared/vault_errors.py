"""Vault's answers as the project's errors, and the TLS settings of Vault clients.

hvac/requests/aiohttp failures become :class:`~shared.errors.VaultUnavailable` (connection
errors, timeouts, 429, 5xx, sealed: retryable) or :class:`~shared.errors.VaultError` (any other
refusal), naming the key and keeping Vault's own message, never the token.

Vault answers 403 both to a token it does not know (revoked, expired) and to a valid token
whose policy lacks the path. :class:`VaultForbidden` is the 403; :class:`VaultTokenRejected`
is the first case, told apart by ``auth/token/lookup-self``. Both are ``VaultError``, policy
*retry*: the stage pauses, backs off, and resumes by itself once Vault accepts a token again;
nothing is dead-lettered.
"""

from __future__ import annotations

import ssl
from typing import Final

import hvac
import hvac.exceptions
import requests

from shared import fastjson
from shared.errors import ConfigError, VaultError, VaultUnavailable
from shared.settings import Settings

__all__ = [
    "REJECTED_HINT",
    "VaultForbidden",
    "VaultTokenRejected",
    "cacert_context",
    "http_error",
    "tls_context",
    "translate",
]

#: what the operator reads when the token is refused
REJECTED_HINT: Final = (
    "vault token rejected: revoked or expired; the stage is paused and retries. Issue a new "
    "token with this stage's policy and write it to the token file (it is re-read at every "
    "retry), or restart the stage with a new VAULT_TOKEN"
)


class VaultForbidden(VaultError):
    """Vault answered 403: the token is unknown, or its policy does not allow the path."""


class VaultTokenRejected(VaultForbidden):
    """Vault does not know the token any more (revoked or expired): ``lookup-self`` is 403."""


_UNAVAILABLE_HVAC: Final = (
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.VaultDown,
    hvac.exceptions.VaultNotInitialized,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
)


def translate(exc: BaseException, *, key: str, action: str) -> VaultError | VaultUnavailable:
    """Map an hvac/requests exception to the project's errors (never includes the token)."""
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return VaultUnavailable(f"Vault timed out while trying to {action} (key {key!r})")
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return VaultUnavailable(
            f"Vault unreachable while trying to {action} (key {key!r}): {type(exc).__name__}"
        )
    if isinstance(exc, hvac.exceptions.VaultError):
        detail = ", ".join(str(e) for e in exc.errors) if exc.errors else ""
        if isinstance(exc, _UNAVAILABLE_HVAC):
            what = "sealed or down" if isinstance(exc, hvac.exceptions.VaultDown) else "failing"
            return VaultUnavailable(
                f"Vault is {what} ({type(exc).__name__}) while trying to {action} "
                f"(key {key!r}){': ' + detail if detail else ''}"
            )
        if isinstance(exc, hvac.exceptions.InvalidPath) and not detail:
            detail = "not found (is the key created and the transit engine mounted?)"
        if isinstance(exc, hvac.exceptions.Forbidden):
            return VaultForbidden(
                f"Vault refused to {action} with transit key {key!r}: "
                f"{detail or 'permission denied'}"
            )
        return VaultError(
            f"Vault refused to {action} with transit key {key!r}: {detail or type(exc).__name__}"
        )
    return VaultError(f"unexpected Vault client failure while trying to {action} (key {key!r})")


def http_error(
    status: int, body: bytes, *, key: str, action: str
) -> VaultError | VaultUnavailable:
    """Map a non-200 Vault answer to the project's errors, keeping Vault's own message."""
    detail = ""
    try:
        errors = fastjson.loads(body).get("errors") or []
        detail = ", ".join(str(e) for e in errors)
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    if status == 429 or status >= 500:
        what = "sealed or down" if status == 503 else "failing"
        return VaultUnavailable(
            f"Vault is {what} (HTTP {status}) while trying to {action} (key {key!r})"
            f"{': ' + detail if detail else ''}"
        )
    if status == 404 and not detail:
        detail = "not found (is the key created and the transit engine mounted?)"
    if status == 403:
        return VaultForbidden(
            f"Vault refused to {action} with transit key {key!r}: {detail or 'HTTP 403'}"
        )
    return VaultError(
        f"Vault refused to {action} with transit key {key!r}: {detail or f'HTTP {status}'}"
    )


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=``: verify against ``VAULT_CACERT`` when set, else the system's CAs."""
    return cacert_context(settings.vault_cacert)


def cacert_context(cacert: str) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=`` for a Vault client given the ``VAULT_CACERT`` value: a context that
    verifies against that CA file, or ``True`` (the system's CAs) when it is empty. Either
    way the server's certificate and name are verified."""
    if not cacert:
        return True
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"VAULT_CACERT: cannot load {cacert}: {type(exc).__name__}") from None
