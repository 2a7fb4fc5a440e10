"""The HTTPS listener's TLS context, from ``LEDGER_TLS_CERT_FILE`` and ``LEDGER_TLS_KEY_FILE``.

Both set: ingest serves HTTPS only, TLS 1.2 or later, with the certificate chain and key
read once at start (rotating them takes a restart). Neither set: plain HTTP, for a loopback
listener or a TLS-terminating proxy in front. One without the other, or a file that cannot
be read or does not hold a matching PEM certificate and key, is a start-up error naming
the variable.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.errors import ConfigError
from shared.settings import Settings

__all__ = ["server_tls_context"]


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context, or None for plain HTTP (raises :class:`ConfigError`)."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "LEDGER_TLS_KEY_FILE" if cert else "LEDGER_TLS_CERT_FILE"
        given = "LEDGER_TLS_CERT_FILE" if cert else "LEDGER_TLS_KEY_FILE"
        raise ConfigError(f"{given} is set but {missing} is not: HTTPS needs both (or neither)")
    for name, path in (("LEDGER_TLS_CERT_FILE", cert), ("LEDGER_TLS_KEY_FILE", key)):
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}={path!r}: cannot read ({exc.strerror})") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"LEDGER_TLS_CERT_FILE={cert!r}, LEDGER_TLS_KEY_FILE={key!r}: not a PEM "
            f"certificate chain and its private key ({exc})"
        ) from None
    return context
