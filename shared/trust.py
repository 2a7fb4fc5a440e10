"""The Rekor log key as configured: the pin every receipt is verified against, read offline.

``LEDGER_REKOR_PUBLIC_KEY`` (``settings.rekor_public_key``) holds the log's public key as PEM
text or as the path of a local PEM/DER file. :func:`load_configured_key` turns it into a
:class:`shared.verify.LogKey`; the anchorer (``services.anchorer.trust``, which falls back to
a pin in the database) and ``ledger audit`` both start from it.

It reads at most one local file and must never fetch a key from the network: a key the log
serves is the log's word, which is what the pin exists to check.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError, VerificationError
from shared.verify import LogKey, load_log_key

__all__ = ["load_configured_key", "read_configured"]


def read_configured(value: str, env_name: str) -> str:
    """A PEM setting's text: ``value`` itself when it is PEM, else the file it names.

    Empty when nothing is configured; ConfigError naming ``env_name`` when the file cannot
    be read.
    """
    text = value.strip()
    if not text or text.startswith("-----BEGIN"):
        return text
    path = Path(text).expanduser()
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{env_name}: cannot read {path}: {exc}") from None


def load_configured_key(value: str) -> LogKey | None:
    """The key named by ``settings.rekor_public_key`` (PEM text or a file path), or None.

    None when nothing is configured; ConfigError when the file cannot be read or does not
    hold a usable log key.
    """
    text = read_configured(value, "LEDGER_REKOR_PUBLIC_KEY")
    if not text:
        return None
    try:
        return load_log_key(text)
    except VerificationError as exc:
        raise ConfigError(f"LEDGER_REKOR_PUBLIC_KEY is not a usable public key: {exc}") from None
