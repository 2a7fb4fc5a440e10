"""The captured Rekor v2 / RFC 3161 fixtures (``tests/data/rekor_v2/``) as test objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.verify import ExpectedEntry, RekorV2Receipt
from shared.verify_v2 import V2Trust, load_v2_trust

__all__ = [
    "DATA",
    "ORIGIN",
    "anchor_public_key",
    "anchor_signature",
    "entry",
    "expected",
    "manifest",
    "receipt",
    "trust",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "rekor_v2"
ORIGIN = "ledger-rekor-v2.local"


def manifest() -> bytes:
    return (DATA / "manifest.json").read_bytes()


def anchor_signature() -> bytes:
    return (DATA / "anchor.sig").read_bytes()


def anchor_public_key() -> str:
    return (DATA / "anchor.pub.pem").read_text()


def entry(log: str = "log-ed25519") -> dict[str, Any]:
    """The log's 201 answer (a TransparencyLogEntry) for the anchor entry."""
    value: dict[str, Any] = json.loads((DATA / f"{log}.entry.json").read_bytes())
    return value


def receipt(log: str = "log-ed25519", tsa: str = "tsa") -> RekorV2Receipt:
    """The stored receipt: ``log``'s entry with ``tsa``'s token."""
    return RekorV2Receipt.from_entry(entry(log), (DATA / f"{tsa}.tsr").read_bytes())


def trust(log: str = "log-ed25519", chain: str = "tsa", origin: str = ORIGIN) -> V2Trust:
    return load_v2_trust((DATA / f"{log}.pub.pem").read_bytes(), origin,
                         (DATA / f"{chain}.chain.pem").read_bytes())


def expected() -> ExpectedEntry:
    """What was submitted: SHA-256 of the manifest, the anchor signature and key."""
    return ExpectedEntry.for_message(manifest(), anchor_signature(), anchor_public_key())
