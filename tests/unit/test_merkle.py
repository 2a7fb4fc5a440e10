"""shared.merkle against an independent, naive transcription of RFC 6962 §2.1."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from shared.errors import VerificationError
from shared.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    RootAccumulator,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent.parent / "data" / "rekor"


# --- the RFC's definitions, written as literally as possible ------------------------------


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = _k(n)
    return _h(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


def _leaves(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


# --- construction -------------------------------------------------------------------------


def test_hash_definitions() -> None:
    assert leaf_hash(b"x") == _h(b"\x00x")
    assert node_hash(b"a" * 32, b"b" * 32) == _h(b"\x01" + b"a" * 32 + b"b" * 32)
    assert _h(b"") == EMPTY_ROOT
    assert MerkleTree([]).root == EMPTY_ROOT
    assert MerkleTree([]).size == 0


def test_known_vector_rfc6962_empty_and_single() -> None:
    # Well-known values (e.g. Certificate Transparency test data).
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (
        leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


def test_roots_and_paths_match_naive_for_sizes_1_to_64() -> None:
    for n in range(1, 65):
        d = _leaves(n)
        tree = MerkleTree.from_data(d)
        root = naive_mth(d)
        assert tree.root == root, n
        for i in range(n):
            proof = tree.inclusion_proof(i)
            assert proof == naive_path(i, d), (n, i)
            verify_inclusion(i, n, leaf_hash(d[i]), proof, root)


def test_consistency_matches_naive_and_verifies() -> None:
    for n in range(1, 65):
        d = _leaves(n)
        tree = MerkleTree.from_data(d)
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m)
            expected = naive_proof(m, d) if m < n else []
            assert proof == expected, (m, n)
            verify_consistency(m, n, naive_mth(d[:m]), tree.root, proof)


def test_consistency_edge_cases() -> None:
    tree = MerkleTree.from_data(_leaves(7))
    verify_consistency(0, 7, EMPTY_ROOT, tree.root, [])
    verify_consistency(7, 7, tree.root, tree.root, [])
    with pytest.raises(VerificationError):
        verify_consistency(7, 7, tree.root, EMPTY_ROOT, [])
    with pytest.raises(VerificationError):
        verify_consistency(5, 3, tree.root, tree.root, [])
    with pytest.raises(VerificationError):
        verify_consistency(3, 7, naive_mth(_leaves(3)), tree.root, [])


# --- the streaming root ------------------------------------------------------------------


def _streamed(leaf_hashes: list[bytes]) -> RootAccumulator:
    acc = RootAccumulator()
    for h in leaf_hashes:
        acc.add(h)
    return acc


def test_streaming_root_is_the_tree_root_for_every_size_to_70() -> None:
    for n in range(71):
        hashes = [leaf_hash(d) for d in _leaves(n)]
        acc = _streamed(hashes)
        assert acc.size == n
        assert acc.root() == MerkleTree(hashes).root == naive_mth(_leaves(n)), n


def test_streaming_root_is_the_tree_root_for_random_sizes() -> None:
    rng = random.Random(6962)
    for n in [rng.randrange(71, 5000) for _ in range(12)] + [1023, 1024, 1025, 4096]:
        hashes = [rng.randbytes(32) for _ in range(n)]
        assert _streamed(hashes).root() == MerkleTree(hashes).root, n


def test_streaming_root_of_a_prefix_is_the_prefix_root() -> None:
    # root() does not consume the accumulator: it can be read while leaves keep coming
    hashes = [leaf_hash(d) for d in _leaves(40)]
    acc = RootAccumulator()
    for i, h in enumerate(hashes):
        assert acc.root() == MerkleTree(hashes[:i]).root
        acc.add(h)
    assert acc.root() == MerkleTree(hashes).root


def test_streaming_root_refuses_what_is_not_a_leaf_hash() -> None:
    assert RootAccumulator().root() == EMPTY_ROOT
    with pytest.raises(ValueError, match="32 bytes"):
        RootAccumulator().add(b"leaf data, not its hash")


# --- tampering ----------------------------------------------------------------------------


def _flip(b: bytes, at: int = 0) -> bytes:
    return b[:at] + bytes([b[at] ^ 1]) + b[at + 1 :]


def test_inclusion_tampering_is_detected() -> None:
    for n in (1, 2, 3, 5, 8, 13, 33):
        d = _leaves(n)
        tree = MerkleTree.from_data(d)
        for i in range(n):
            lh = leaf_hash(d[i])
            proof = tree.inclusion_proof(i)
            with pytest.raises(VerificationError):
                verify_inclusion(i, n, _flip(lh), proof, tree.root)
            with pytest.raises(VerificationError):
                verify_inclusion(i, n, lh, proof, _flip(tree.root, 31))
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = _flip(bad[j], 5)
                with pytest.raises(VerificationError):
                    verify_inclusion(i, n, lh, bad, tree.root)
            with pytest.raises(VerificationError):
                verify_inclusion(i, n, lh, [*proof, b"\x00" * 32], tree.root)
            if proof:
                with pytest.raises(VerificationError):
                    verify_inclusion(i, n, lh, proof[:-1], tree.root)
            # The same path for another index must not verify. (Another size may: the
            # size is authenticated by the signed checkpoint, not by the path.)
            if n > 1:
                with pytest.raises(VerificationError):
                    verify_inclusion((i + 1) % n, n, lh, proof, tree.root)
            with pytest.raises(VerificationError):
                verify_inclusion(i, 2 * n, lh, proof, tree.root)


def test_inclusion_bad_arguments() -> None:
    with pytest.raises(VerificationError):
        root_from_inclusion_proof(3, 3, b"\x00" * 32, [])
    with pytest.raises(VerificationError):
        root_from_inclusion_proof(0, 1, b"\x00" * 31, [])
    with pytest.raises(ValueError, match="out of range"):
        MerkleTree.from_data(_leaves(3)).inclusion_proof(3)
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree([b"short"])


def test_consistency_tampering_is_detected() -> None:
    d = _leaves(37)
    tree = MerkleTree.from_data(d)
    for m in (1, 4, 6, 16, 21, 36):
        old_root = naive_mth(d[:m])
        proof = tree.consistency_proof(m)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = _flip(bad[j], 7)
            with pytest.raises(VerificationError):
                verify_consistency(m, 37, old_root, tree.root, bad)
        with pytest.raises(VerificationError):
            verify_consistency(m, 37, _flip(old_root), tree.root, proof)
        with pytest.raises(VerificationError):
            verify_consistency(m, 37, old_root, _flip(tree.root), proof)
        with pytest.raises(VerificationError):
            verify_consistency(m, 37, old_root, tree.root, [*proof, proof[0]])
        with pytest.raises(VerificationError):
            verify_consistency(m, 37, old_root, tree.root, proof[:-1])


# --- real Rekor proofs --------------------------------------------------------------------


def _rekor_cases() -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    cases = []
    raw = json.loads((DATA / "raw-v1-response.staging.json").read_text())
    ((_, entry),) = raw.items()
    ip = entry["verification"]["inclusionProof"]
    cases.append(
        (
            "raw-v1-response.staging",
            ip["logIndex"],
            ip["treeSize"],
            base64.b64decode(entry["body"]),
            [bytes.fromhex(h) for h in ip["hashes"]],
            bytes.fromhex(ip["rootHash"]),
        )
    )
    for name in ("managed-key-happy-path", "managed-key-and-trusted-root"):
        bundle = json.loads((DATA / "conformance" / name / "bundle.sigstore.json").read_text())
        t = bundle["verificationMaterial"]["tlogEntries"][0]
        ip = t["inclusionProof"]
        cases.append(
            (
                name,
                int(ip["logIndex"]),
                int(ip["treeSize"]),
                base64.b64decode(t["canonicalizedBody"]),
                [base64.b64decode(h) for h in ip["hashes"]],
                base64.b64decode(ip["rootHash"]),
            )
        )
    return cases


@pytest.mark.parametrize("case", _rekor_cases(), ids=lambda c: c[0])
def test_real_rekor_inclusion_proofs(case: tuple[str, int, int, bytes, list[bytes], bytes]) -> None:
    _, index, size, body, hashes, root = case
    verify_inclusion(index, size, leaf_hash(body), hashes, root)
    with pytest.raises(VerificationError):
        verify_inclusion(index, size, leaf_hash(body + b" "), hashes, root)
    with pytest.raises(VerificationError):
        verify_inclusion(index + 1, size, leaf_hash(body), hashes, root)


# --- speed --------------------------------------------------------------------------------


def test_ten_thousand_leaves_is_fast() -> None:
    d = [i.to_bytes(8, "big") for i in range(10_000)]
    t0 = time.perf_counter()
    tree = MerkleTree.from_data(d)
    proofs = tree.inclusion_proofs()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed
    assert len(proofs) == 10_000
    for i in (0, 1, 4095, 8191, 8192, 9999):
        verify_inclusion(i, 10_000, tree.leaf(i), proofs[i], tree.root)
