"""shared.tiles: hashes and proofs computed from tlog-tiles files agree with shared.merkle."""

from __future__ import annotations

import base64
import hashlib

import pytest

from shared.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from shared.tiles import (
    TILE_WIDTH,
    TileReader,
    entries_path,
    parse_checkpoint,
    parse_entry_bundle,
    tile_path,
)

pytestmark = pytest.mark.unit


def _entries(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest()[: 1 + i % 40] for i in range(n)]


def _publish(entries: list[bytes], files: dict[str, bytes]) -> None:
    """Write the tiles and entry bundles of the log of ``entries`` the way a tiled log does:
    full tiles, and partial tiles at the right edge (older partial tiles stay)."""
    tree = MerkleTree.from_data(entries)
    size, level = len(entries), 0
    while size >> (8 * level):
        count = size >> (8 * level)
        span = 1 << (8 * level)
        for index in range(0, (count + TILE_WIDTH - 1) // TILE_WIDTH):
            first = index * TILE_WIDTH
            width = min(TILE_WIDTH, count - first)
            hashes = [tree.subtree_root((first + i) * span, (first + i + 1) * span)
                      for i in range(width)]
            files[tile_path(level, index, width)] = b"".join(hashes)
        level += 1
    for bundle in range(0, (size + TILE_WIDTH - 1) // TILE_WIDTH):
        part = entries[bundle * TILE_WIDTH:(bundle + 1) * TILE_WIDTH]
        files[entries_path(bundle, len(part))] = b"".join(
            len(e).to_bytes(2, "big") + e for e in part)


def _reader(files: dict[str, bytes], size: int, fetched: list[str] | None = None) -> TileReader:
    async def fetch(path: str) -> bytes:
        if fetched is not None:
            fetched.append(path)
        try:
            return files[path]
        except KeyError:
            raise FileNotFoundError(path) from None
    return TileReader(fetch, size)


def test_paths_follow_the_tlog_tiles_layout() -> None:
    assert tile_path(0, 0) == "tile/0/000"
    assert tile_path(0, 0, 5) == "tile/0/000.p/5"
    assert tile_path(2, 1234067, 255) == "tile/2/x001/x234/067.p/255"
    assert tile_path(1, 1000) == "tile/1/x001/000"
    assert entries_path(7, 1) == "tile/entries/007.p/1"
    with pytest.raises(ValueError):
        tile_path(0, 0, 0)
    with pytest.raises(ValueError):
        entries_path(0, 257)


def test_entry_bundles_parse_and_refuse_truncation() -> None:
    data = b"\x00\x03abc\x00\x00\x00\x01z"
    assert parse_entry_bundle(data) == [b"abc", b"", b"z"]
    with pytest.raises(ValueError):
        parse_entry_bundle(data[:-1])
    with pytest.raises(ValueError):
        parse_entry_bundle(b"\x00")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 255, 256, 257, 511, 513, 1000])
async def test_root_inclusion_and_consistency_match_merkle(size: int) -> None:
    entries = _entries(size)
    files: dict[str, bytes] = {}
    _publish(entries, files)
    tree = MerkleTree.from_data(entries)
    reader = _reader(files, size)
    root = await reader.root()
    assert root == tree.root
    for index in {0, size // 2, size - 1, min(size - 1, 300)}:
        proof = await reader.inclusion_proof(index)
        assert proof == tree.inclusion_proof(index)
        verify_inclusion(index, size, leaf_hash(entries[index]), proof, root)
        assert await reader.entry(index) == entries[index]
        assert await reader.leaf_hash(index) == leaf_hash(entries[index])
    for old in {1, 2, size // 3, size - 1, size}:
        if not 1 <= old <= size:
            continue
        proof = await reader.consistency_proof(old)
        assert proof == tree.consistency_proof(old)
        old_root = MerkleTree.from_data(entries[:old]).root
        assert await reader.root(old) == old_root
        verify_consistency(old, size, old_root, root, proof)


async def test_a_tree_with_a_second_tile_level() -> None:
    size = TILE_WIDTH * TILE_WIDTH + 300  # level-1 tiles are full and partial; level 2 exists
    entries = _entries(size)
    files: dict[str, bytes] = {}
    _publish(entries, files)
    tree = MerkleTree.from_data(entries)
    assert "tile/2/000.p/1" in files
    fetched: list[str] = []
    reader = _reader(files, size, fetched)
    assert await reader.root() == tree.root
    index = size - 5
    assert await reader.inclusion_proof(index) == tree.inclusion_proof(index)
    assert await reader.consistency_proof(size - 3000) == tree.consistency_proof(size - 3000)
    assert await reader.inclusion_proof(12345, 40000) == MerkleTree(
        [tree.leaf(i) for i in range(40000)]).inclusion_proof(12345)
    assert len(fetched) == len(set(fetched)), "each tile is fetched once"
    assert len(fetched) < 20, "the big subtrees come from the upper tiles, not the leaves"


async def test_older_sizes_read_from_newer_tiles_and_filled_partials() -> None:
    """A reader for an older size reads partial paths; a log that links them to the filled
    tile (as Tessera's POSIX storage does) still gives the older tree's hashes."""
    entries = _entries(300)
    files: dict[str, bytes] = {}
    _publish(entries[:100], files)
    _publish(entries, files)
    files["tile/0/000.p/100"] = files["tile/0/000"]  # the partial tile, now a link to the full
    tree = MerkleTree.from_data(entries[:100])
    reader = _reader(files, 100)
    assert await reader.root() == tree.root
    assert await reader.inclusion_proof(99) == tree.inclusion_proof(99)


async def test_out_of_range_and_short_tiles_are_errors() -> None:
    entries = _entries(10)
    files: dict[str, bytes] = {}
    _publish(entries, files)
    reader = _reader(files, 10)
    with pytest.raises(ValueError):
        await reader.inclusion_proof(10)
    with pytest.raises(ValueError):
        await reader.consistency_proof(11)
    with pytest.raises(ValueError):
        await reader.root(11)
    with pytest.raises(ValueError):
        await reader.node(4, 0)  # 16 leaves: not complete in a tree of 10
    assert await TileReader(_reader(files, 0)._fetch, 0).root() == EMPTY_ROOT
    files["tile/0/000.p/10"] = files["tile/0/000.p/10"][:-1]
    with pytest.raises(ValueError, match="bytes for 10 hashes"):
        await _reader(files, 10).root()


def test_checkpoint_body() -> None:
    root = hashlib.sha256(b"r").digest()
    text = f"log.example\n42\n{base64.b64encode(root).decode()}\n\n— log.example AAAA\n"
    cp = parse_checkpoint(text)
    assert (cp.origin, cp.size, cp.root_hash, cp.text) == ("log.example", 42, root, text)
    for bad in ("log.example\n42\n", "log.example\nxx\nAAAA\n\n", "o\n1\n!!\n\n",
                f"o\n1\n{base64.b64encode(b'short').decode()}\n\n"):
        with pytest.raises(ValueError):
            parse_checkpoint(bad)
