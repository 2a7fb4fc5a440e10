"""RFC 6962 (RFC 9162 §2.1) Merkle trees: roots, inclusion proofs and consistency proofs.

The anchorer builds one tree per batch of ledger entries; Rekor's log is the same kind of
tree, so the verifier checks Rekor's inclusion proofs and consistency proofs with the same
code, and ``ledger audit`` recomputes each batch's root with :class:`RootAccumulator`: this
is the project's only implementation of the tree. Hashes are SHA-256; leaves are
``SHA256(0x00 ‖ data)`` and inner nodes ``SHA256(0x01 ‖ left ‖ right)``; the empty tree's
root is ``SHA256("")``.

A tree is built bottom-up once, keeping every level, so the root and every audit path come
from the stored levels without re-hashing. Building a level pairs nodes left to right and
carries a lone last node up unchanged, which gives exactly the RFC 6962 tree (split at the
largest power of two smaller than ``n``). :class:`RootAccumulator` gives the same root from
leaves fed one at a time, keeping only O(log n) hashes, for trees too large to hold.

This module is pure: no I/O, no network, no clock. Verification failures raise
:class:`shared.errors.VerificationError`; misuse (index out of range) raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from shared.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "RootAccumulator",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
#: RFC 6962 §2.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """``SHA256(0x00 ‖ data)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(h)}")


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An immutable RFC 6962 tree over a fixed list of leaves, with every level kept.

    ``levels[0]`` holds the leaf hashes, ``levels[-1]`` the root alone. Memory is about
    ``2 n`` hashes.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        level = list(leaf_hashes)
        for h in level:
            _check_hash(h)
        levels = [level]
        while len(level) > 1:
            nxt = [node_hash(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(nxt)
            level = nxt
        self._levels: tuple[tuple[bytes, ...], ...] = tuple(tuple(lv) for lv in levels)

    @classmethod
    def from_data(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """Build the tree over raw leaf data (each leaf is hashed with :func:`leaf_hash`)."""
        return cls(leaf_hash(d) for d in leaves)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_index(index)
        return self._levels[0][index]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index``, from the leaf's sibling up to the root's child."""
        self._check_index(index)
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            # A missing sibling means this node was carried up unchanged: no hash on the path.
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path

    def inclusion_proofs(self) -> list[list[bytes]]:
        """The audit path of every leaf, in leaf order."""
        return [self.inclusion_proof(i) for i in range(self.size)]

    def subtree_root(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a range that RFC 6962's recursion produces.

        Works for any ``0 <= start < end <= size`` where ``start`` is a multiple of the largest
        power of two not exceeding ``end - start`` (always true inside this tree's recursion).
        """
        if not 0 <= start < end <= self.size:
            raise ValueError(f"bad subtree range [{start}, {end}) for size {self.size}")
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            # A complete, aligned subtree is a stored node.
            return self._levels[n.bit_length() - 1][start // n]
        k = _largest_power_of_two_below(n)
        return node_hash(self.subtree_root(start, start + k), self.subtree_root(start + k, end))

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """RFC 6962 §2.1.2 ``PROOF(m, D[n])`` from the first ``old_size`` leaves to this tree."""
        if not 0 <= old_size <= self.size:
            raise ValueError(f"old size {old_size} out of range for size {self.size}")
        if old_size in (0, self.size):
            return []
        return self._subproof(old_size, 0, self.size, complete=True)

    def _subproof(self, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [self.subtree_root(start, end)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return [
                *self._subproof(m, start, start + k, complete=complete),
                self.subtree_root(start + k, end),
            ]
        return [
            *self._subproof(m - k, start + k, end, complete=False),
            self.subtree_root(start, start + k),
        ]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} out of range for tree size {self.size}")


class RootAccumulator:
    """The RFC 6962 root of leaf hashes added one at a time, in O(log n) memory.

    Keeps the roots of the complete subtrees so far (largest first); the root of the whole
    list folds them from the right, which is exactly RFC 6962's split at the largest power
    of two. ``RootAccumulator`` fed the leaves of a :class:`MerkleTree` gives its ``root``.
    """

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, leaf: bytes) -> None:
        """Add one leaf *hash* (:func:`leaf_hash` of the leaf data)."""
        _check_hash(leaf)
        node, height = leaf, 0
        while self._stack and self._stack[-1][0] == height:
            node = node_hash(self._stack.pop()[1], node)
            height += 1
        self._stack.append((height, node))
        self.size += 1

    def root(self) -> bytes:
        """The root of the leaves added so far (:data:`EMPTY_ROOT` before the first)."""
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that an audit path leads to (RFC 9162 §2.1.3.2), or VerificationError.

    Fails when the path has the wrong length for ``index`` in a tree of ``size``.
    """
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not inside a tree of size {size}")
    if len(leaf) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        raise VerificationError("inclusion proof hashes must be 32 bytes")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is at ``index`` of the tree of ``size`` whose root is ``root``."""
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise VerificationError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots; an empty old tree is
    consistent with every tree (and needs an empty proof).
    """
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"consistency: sizes {old_size} → {new_size} go backwards")
    if any(len(p) != HASH_SIZE for p in proof):
        raise VerificationError("consistency proof hashes must be 32 bytes")
    if old_size == new_size:
        if proof:
            raise VerificationError("consistency proof must be empty for equal sizes")
        if old_root != new_root:
            raise VerificationError("consistency: same size but different roots")
        return
    if old_size == 0:
        if proof:
            raise VerificationError("consistency proof must be empty from the empty tree")
        return
    if not proof:
        raise VerificationError("consistency proof is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree of the new one: its root starts the path.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is too short")
    if fr != old_root:
        raise VerificationError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise VerificationError("consistency proof does not lead to the new root")
