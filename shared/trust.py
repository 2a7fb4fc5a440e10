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

__all__ = ["load_configured_key"]


def load_configured_key(value: str) -> LogKey | None:
    """The key named by ``settings.rekor_public_key`` (PEM text or a file path), or None.

    None when nothing is configured; ConfigError when the file cannot be read or does not
    hold a usable log key.
    """
    text = value.strip()
    if not text:
        return None
    if not text.startswith("-----BEGIN"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"LEDGER_REKOR_PUBLIC_KEY: cannot read the Rekor public key file {path}: {exc}"
            ) from None
    try:
        return load_log_key(text)
    except VerificationError as exc:
        raise ConfigError(f"LEDGER_REKOR_PUBLIC_KEY is not a usable public key: {exc}") from None
