"""The captured Rekor v2 / RFC 3161 fixtures (``tests/data/rekor_v2/``) as test objects.

The anchored batch is deterministic (keys from public seeds, RFC 6979 anchor signatures):
:func:`plan` and :func:`anchor_signature` give the same manifest and signature every time, so
the entry the real log holds and the token the real TSA signed fit the batch rebuilt here.
``tests/support/v2_capture.py`` submitted exactly these.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from services.anchorer.building import BatchPlan, plan_batch
from shared.anchored import anchored_events
from shared.records import BatchRecord, EntryRecord
from shared.verify import ExpectedEntry, RekorV2Receipt
from shared.verify_v2 import V2Trust, load_v2_trust
from tests.support.fake_rekor import pem
from tests.support.malformed_bundles import T0, _ed25519, _p256, _row

__all__ = [
    "DATA",
    "ORIGIN",
    "PICK",
    "anchor_public_key",
    "anchor_signature",
    "batch",
    "bundle",
    "entry",
    "entry_public_key",
    "expected",
    "manifest",
    "plan",
    "receipt",
    "trust",
]

DATA = Path(__file__).resolve().parents[1] / "data" / "rekor_v2"
ORIGIN = "ledger-rekor-v2.local"
SIZE = 3
#: the leaf whose proof bundle ``bundle.json`` is
PICK = 1
_ENTRY_KEY = _ed25519("rekor-v2 fixtures entry key")
_ANCHOR_KEY = _p256("rekor-v2 fixtures anchor key")
_BATCH_ID = uuid.UUID("3f1d9c1e-7a2b-4c5d-8e9f-a0b1c2d3e4f5")


def plan() -> BatchPlan[EntryRecord]:
    return plan_batch([_row(_ENTRY_KEY, i) for i in range(SIZE)], batch_id=_BATCH_ID,
                      created_at=T0)


def manifest() -> bytes:
    return plan().manifest


def anchor_signature() -> bytes:
    """The anchor key's deterministic ECDSA P-256 signature over SHA-256 of the manifest."""
    return _ANCHOR_KEY.sign(plan().manifest_sha256,
                            ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))


def anchor_public_key() -> str:
    return pem(_ANCHOR_KEY.public_key()).decode()


def entry_public_key() -> bytes:
    return pem(_ENTRY_KEY.public_key())


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


def batch(log: str = "log-ed25519", tsa: str = "tsa") -> tuple[BatchRecord, list[EntryRecord]]:
    """The anchored batch row with ``log``'s receipt and ``tsa``'s token, and its members."""
    p = plan()
    anchored_at = T0 + timedelta(seconds=3)
    record = BatchRecord(
        id=p.batch_id, created_at=T0, state="anchored", size=p.size, root_hash=p.root_hex,
        manifest=p.manifest, manifest_sha256=p.manifest_sha256.hex(),
        anchor_sig=anchor_signature(), anchor_key_version=1,
        anchor_pubkey=anchor_public_key(), receipt=receipt(log, tsa), anchored_at=anchored_at,
    )
    members = [replace(m, batch_id=p.batch_id, leaf_index=i, anchored_at=anchored_at)
               for i, m in enumerate(p.members)]
    return record, members


def bundle(log: str = "log-ed25519", tsa: str = "tsa") -> bytes:
    """The proof bundle (``ledger.anchored`` event) of leaf :data:`PICK`."""
    record, members = batch(log, tsa)
    (event,) = anchored_events(record, [members[PICK]],
                               leaves=[m.leaf_record() for m in members])
    return event.value
