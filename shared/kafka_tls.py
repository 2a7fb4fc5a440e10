"""How every Kafka client of the pipeline connects: plaintext, or TLS with a client certificate.

With ``KAFKA_SECURITY_PROTOCOL=SSL`` each client verifies the broker's certificate against
``KAFKA_SSL_CAFILE`` (the system's CAs when empty), host name included, and presents
``KAFKA_SSL_CERTFILE`` (mutual TLS): the broker maps the certificate's subject to the principal
its ACLs name (docs/security.md). :func:`client_options` is the one place that turns settings
into the keyword arguments of aiokafka's producers, consumers, admin and low-level clients.
"""

from __future__ import annotations

import ssl
from typing import Any

from shared.errors import ConfigError
from shared.settings import Settings

__all__ = ["client_options", "connection_environment", "ssl_context"]


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client context: TLS 1.2+, the broker's certificate and host name verified, and the
    client certificate loaded when one is configured. :class:`ConfigError` names the setting
    whose file cannot be used."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"KAFKA_SSL_CAFILE: cannot load {settings.kafka_ssl_cafile}: {_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile,
                                    settings.kafka_ssl_keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"KAFKA_SSL_CERTFILE: cannot load the client certificate and key from "
                f"{settings.kafka_ssl_certfile}"
                f"{' and ' + settings.kafka_ssl_keyfile if settings.kafka_ssl_keyfile else ''}"
                f": {_reason(exc)}"
            ) from None
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` plus the security keywords of every aiokafka client."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers}
    if settings.kafka_security_protocol == "SSL":
        options["security_protocol"] = "SSL"
        options["ssl_context"] = ssl_context(settings)
    return options


def connection_environment(settings: Settings) -> dict[str, str]:
    """The ``KAFKA_*`` variables that give another process this Kafka connection (secrets
    are file paths, never key material)."""
    return {k: v for k, v in settings.environment().items() if k.startswith("KAFKA_")}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
