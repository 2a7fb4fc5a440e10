"""An in-memory Rekor v1 log for unit tests, built from the definitions (RFC 6962 trees,
signed checkpoints, SETs): used where a real log cannot make the case (a validly signed
checkpoint with the wrong root, other key types, a log that forks).

``tests/integration/test_rekor_contract.py`` holds its answers to the real Rekor's shape.
Besides building v1 answers (:meth:`FakeLog.add`), it answers the calls the anchorer makes
of :class:`shared.rekor.RekorClient` for the log itself: ``get_log_info``,
``get_consistency_proof`` and ``get_public_key``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

from shared.errors import RekorConflict, RekorError, RekorUnavailable
from shared.merkle import MerkleTree, leaf_hash
from shared.rekor import ConsistencyProof, LogInfo, RekorEntry
from shared.verify import LogKey

__all__ = ["FakeLog", "FakeRekor", "der", "hashedrekord", "pem", "sign"]


def der(pub: Any) -> bytes:
    return pub.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem(pub: Any) -> bytes:
    return pub.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(priv: Any, data: bytes) -> bytes:
    if isinstance(priv, ec.EllipticCurvePrivateKey):
        h = {"secp256r1": hashes.SHA256(), "secp384r1": hashes.SHA384()}[priv.curve.name]
        # RFC 6979: the same key and data always give the same signature (reproducible data)
        return priv.sign(data, ec.ECDSA(h, deterministic_signing=True))
    if isinstance(priv, ed25519.Ed25519PrivateKey):
        return priv.sign(data)
    return priv.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[no-any-return]


def hashedrekord(digest_hex: str, sig: bytes, pem: bytes) -> dict[str, Any]:
    """The body Rekor v1 stores for a hashedrekord submission."""
    return {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": digest_hex}},
            "signature": {
                "content": base64.b64encode(sig).decode(),
                "publicKey": {"content": base64.b64encode(pem).decode()},
            },
        },
    }


class FakeLog:
    """A tiny Rekor v1 log made from the definitions: used where a real log cannot make the
    case (a validly signed checkpoint with the wrong root, other key types)."""

    def __init__(self, priv: Any, origin: str = "fake.rekor - 42") -> None:
        self.priv = priv
        self.der = der(priv.public_key())
        self.log_id = hashlib.sha256(self.der).hexdigest()
        self.origin = origin
        self.bodies: list[bytes] = []

    def note(self, size: int, root: bytes, *, hint: bytes | None = None, signer: Any = None) -> str:
        text = f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n"
        sig = sign(signer or self.priv, text.encode())
        hint = bytes.fromhex(self.log_id)[:4] if hint is None else hint
        name = self.origin.split(" ")[0]
        return f"{text}\n\u2014 {name} {base64.b64encode(hint + sig).decode()}\n"

    def add(self, body: dict[str, Any], *, filler: int = 6) -> dict[str, Any]:
        """Append ``filler`` other entries then ``body``; return the v1 answer for ``body``."""
        for i in range(filler):
            self.bodies.append(f"filler-{len(self.bodies)}-{i}".encode())
        raw = json.dumps(body, separators=(",", ":")).encode()
        self.bodies.append(raw)
        index = len(self.bodies) - 1
        tree = MerkleTree.from_data(self.bodies)
        b64 = base64.b64encode(raw).decode()
        integrated = 1_700_000_000 + index
        global_index = 1000 + index
        set_payload = rfc8785.dumps(
            {
                "body": b64,
                "integratedTime": integrated,
                "logID": self.log_id,
                "logIndex": global_index,
            }
        )
        return {
            "24296fb24b8ad77a" + leaf_hash(raw).hex(): {
                "body": b64,
                "integratedTime": integrated,
                "logID": self.log_id,
                "logIndex": global_index,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": self.note(tree.size, tree.root),
                        "hashes": [h.hex() for h in tree.inclusion_proof(index)],
                        "logIndex": index,
                        "rootHash": tree.root.hex(),
                        "treeSize": tree.size,
                    },
                    "signedEntryTimestamp": base64.b64encode(
                        sign(self.priv, set_payload)
                    ).decode(),
                },
            }
        }

    # --- what the anchorer asks of the log -------------------------------------------------

    @property
    def tree_id(self) -> str:
        """The tree id the origin line names (``<host> - <tree id>``)."""
        return self.origin.rsplit(" - ", 1)[-1]

    #: set to make every call fail as an unreachable Rekor does
    down = False

    def _up(self) -> None:
        if self.down:
            raise RekorUnavailable("rekor unreachable (fake)")

    def tree(self) -> MerkleTree:
        return MerkleTree.from_data(self.bodies)

    def append(self, count: int) -> None:
        """Grow the log by ``count`` entries."""
        for _ in range(count):
            self.bodies.append(f"entry-{len(self.bodies)}".encode())

    async def get_log_info(self) -> LogInfo:
        self._up()
        tree = self.tree()
        return LogInfo(tree_size=tree.size, root_hash=tree.root.hex(),
                       signed_tree_head=self.note(tree.size, tree.root), tree_id=self.tree_id,
                       raw={})

    async def get_consistency_proof(
        self, first_size: int, last_size: int, tree_id: str | None = None
    ) -> ConsistencyProof:
        self._up()
        tree = MerkleTree.from_data(self.bodies[:last_size])
        return ConsistencyProof(first_size=first_size, last_size=last_size,
                                root_hash=tree.root.hex(),
                                hashes=tuple(h.hex() for h in tree.consistency_proof(first_size)))

    async def get_public_key(self, tree_id: str | None = None) -> str:
        self._up()
        return pem(self.priv.public_key()).decode()


class FakeRekor:
    """The Rekor calls the anchorer makes (:class:`shared.rekor.RekorClient`'s), on a
    :class:`FakeLog`: a hashedrekord is logged once, the same one again answers 409 naming
    it (as the real log does), and entries are read back by uuid.

    ``down`` fails every call as an unreachable Rekor; ``refuse`` is raised by the next
    submission (a 4xx the real log answers for a bad entry).
    """

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.entries: dict[str, RekorEntry] = {}
        self._by_body: dict[str, str] = {}
        self.down = False
        self.refuse: RekorError | None = None
        self.created = 0

    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> RekorEntry:
        if self.down:
            raise RekorUnavailable("rekor unreachable (fake)")
        if self.refuse is not None:
            refusal, self.refuse = self.refuse, None
            raise refusal
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        body = hashedrekord(digest_hex, signature_der, pem)
        key = json.dumps(body, sort_keys=True)
        if key in self._by_body:
            uuid = self._by_body[key]
            raise RekorConflict(f"an equivalent entry already exists in the log: {uuid}",
                                uuid=uuid)
        ((uuid, entry),) = self.log.add(body, filler=1).items()
        self._by_body[key] = uuid
        self.entries[uuid] = RekorEntry(uuid=uuid, entry=entry)
        self.created += 1
        return self.entries[uuid]

    async def get_entry_by_uuid(self, uuid: str) -> RekorEntry:
        if self.down:
            raise RekorUnavailable("rekor unreachable (fake)")
        if uuid not in self.entries:
            raise RekorError(f"no entry {uuid}", status=404)
        return self.entries[uuid]

    async def get_log_info(self) -> LogInfo:
        return await self.log.get_log_info()

    async def get_consistency_proof(
        self, first_size: int, last_size: int, tree_id: str | None = None
    ) -> ConsistencyProof:
        return await self.log.get_consistency_proof(first_size, last_size, tree_id)


class PinnedKey:
    """A log-key source that always answers the same key (LogKeySource without Rekor)."""

    def __init__(self, key: LogKey) -> None:
        self.key = key

    async def get(self) -> LogKey:
        return self.key
