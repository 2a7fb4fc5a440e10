"""What ``ledger import-legacy`` can check of one row of the runbook's service. Pure: no I/O.

The runbook signed the raw payload with its Vault Transit Ed25519 key and stored the
signature (``vault:vN:<base64>``), the signing key (Vault's base64 of the raw key, or a PEM)
and the payload's SHA-256, never the payload. So, for each row:

* the signature must be a well-formed ``vault:vN:`` Ed25519 signature, and version N must be
  a version of the Transit key the operator names (``--key``, default ``VAULT_TRANSIT_KEY``);
* the row's public key must be that key version's public key, as Vault serves it now;
* the signature verifies over the raw payload with that key, but only when the operator
  hands the payload over (``--payloads DIR``): a row whose payload is not there keeps its
  signature unverified, and the report says so.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.errors import VerificationError
from shared.records import EntryRecord
from shared.signatures import (
    MalformedSignature,
    ed25519_key,
    load_public_key_der,
    parse_vault_signature,
)

__all__ = ["Outcome", "RowCheck", "check_row", "raw_public_key"]

#: ``verified``: the signature verifies over the supplied payload with the Vault key;
#: ``key_only``: the row's key is the Vault key version, the payload was not supplied;
#: ``failed``: something does not check (``detail`` says what).
Outcome = Literal["verified", "key_only", "failed"]
_ED25519_KEY_SIZE = 32


@dataclass(frozen=True, slots=True)
class RowCheck:
    outcome: Outcome
    key_version: int | None
    detail: str


def raw_public_key(text: str) -> bytes | None:
    """The 32 raw bytes of an Ed25519 key given as Vault's base64 or as a PEM; else None."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = ed25519_key(load_public_key_der(stripped))
        except (VerificationError, ValueError):
            return None
        return None if key is None else key.public_bytes_raw()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _ED25519_KEY_SIZE else None


def check_row(
    row: EntryRecord, vault_keys: Mapping[int, bytes], key_name: str, payload: bytes | None
) -> RowCheck:
    """Check ``row`` against ``vault_keys`` (version → raw Ed25519 public key of the Transit
    key ``key_name``) and, when given, its raw ``payload``."""
    try:
        version, signature = parse_vault_signature(row.sig)
    except MalformedSignature as exc:
        return RowCheck("failed", None, f"malformed signature: {exc.reason}")
    vault_key = vault_keys.get(version)
    if vault_key is None:
        return RowCheck("failed", version, f"Vault key {key_name} has no version {version}")
    if raw_public_key(row.pubkey) != vault_key:
        return RowCheck("failed", version,
                        f"the row's public key is not Vault's {key_name} v{version}")
    if payload is None:
        return RowCheck("key_only", version, f"key is {key_name} v{version}; signature not "
                        "checked: the payload was not supplied")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(vault_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return RowCheck("failed", version, f"the signature does not verify over the payload "
                        f"with {key_name} v{version}")
    return RowCheck("verified", version, f"signature verified over the payload with "
                    f"{key_name} v{version}")
