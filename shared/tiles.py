"""Merkle tree arithmetic over a tlog-tiles log (C2SP tlog-tiles, as Rekor v2 publishes it).

A tiled log publishes, at its read URL, a signed ``checkpoint`` (origin, tree size, root
hash) and the tree's hashes in *tiles*: ``tile/<L>/<N>`` holds up to 256 consecutive hashes
of tree level ``8·L`` (level 0: the leaf hashes), ``tile/<L>/<N>.p/<W>`` the first ``W`` of
them while the tile is still filling; ``tile/entries/<N>[.p/<W>]`` holds the entries
themselves (each a big-endian uint16 length and that many bytes). ``N`` is written in groups
of three digits, ``x001/x234/067`` for 1234067.

:class:`TileReader` computes, from nothing but those files and a tree size no larger than the
checkpoint's, the hash of any subtree, the tree's root, the audit path of a leaf and the
consistency proof between two sizes (RFC 6962 / RFC 9162 §2.1), fetching each tile once. It
trusts what it fetches no more than the caller does: compare what it computes with a
checkpoint that was verified (``shared.merkle.verify_inclusion`` / ``verify_consistency``).

:func:`parse_checkpoint` reads a checkpoint's body; it does not check the signatures.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shared.merkle import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = [
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Checkpoint",
    "TileFetcher",
    "TileReader",
    "entries_path",
    "parse_checkpoint",
    "parse_entry_bundle",
    "tile_path",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT

#: Fetches one file of the log (a path relative to the read URL, e.g. ``tile/0/000.p/5``).
TileFetcher = Callable[[str], Awaitable[bytes]]


def _n_path(index: int) -> str:
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index > 0:
        groups.insert(0, f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(groups)


def _suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is not in 1..{TILE_WIDTH}")
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The path of hash tile ``(level, index)`` holding ``width`` hashes."""
    if level < 0 or index < 0:
        raise ValueError("tile level and index must be >= 0")
    return f"tile/{level}/{_n_path(index)}{_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """The path of entry bundle ``index`` holding ``width`` entries."""
    if index < 0:
        raise ValueError("bundle index must be >= 0")
    return f"tile/entries/{_n_path(index)}{_suffix(width)}"


def parse_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle: each a big-endian uint16 length, then that many bytes."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError("entry bundle ends inside a length prefix")
        size = int.from_bytes(data[at:at + 2], "big")
        at += 2
        if at + size > len(data):
            raise ValueError("entry bundle ends inside an entry")
        entries.append(data[at:at + size])
        at += size
    return entries


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The body of a checkpoint (a signed note): origin, tree size and root hash."""

    origin: str
    size: int
    root_hash: bytes
    text: str


def parse_checkpoint(text: str) -> Checkpoint:
    """Read a checkpoint note's body (``origin\\nsize\\nbase64 root\\n...\\n\\n— sig...``)."""
    body, sep, _ = text.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3 or not lines[1].isdigit():
        raise ValueError("not a checkpoint: expected origin, size and root hash lines")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except binascii.Error:
        raise ValueError("checkpoint root hash is not base64") from None
    if len(root) != HASH_SIZE:
        raise ValueError("checkpoint root hash is not 32 bytes")
    return Checkpoint(origin=lines[0], size=int(lines[1]), root_hash=root, text=text)


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class TileReader:
    """Hashes and proofs of a tiled log of ``tree_size`` leaves, from its tiles.

    ``tree_size`` is the size the tiles are read for (a verified checkpoint's); every
    computation is for that size or smaller. Tiles are fetched once per reader.
    """

    def __init__(self, fetch: TileFetcher, tree_size: int) -> None:
        if tree_size < 0:
            raise ValueError("tree_size must be >= 0")
        self._fetch = fetch
        self.tree_size = tree_size
        self._tiles: dict[tuple[int, int], list[bytes]] = {}

    # --- tiles -------------------------------------------------------------------------------

    def _width(self, level: int, index: int) -> int:
        """How many hashes tile ``(level, index)`` holds at :attr:`tree_size`."""
        count = self.tree_size >> (TILE_HEIGHT * level)
        width = min(TILE_WIDTH, count - index * TILE_WIDTH)
        if width <= 0:
            raise ValueError(f"tile {level}/{index} is beyond a tree of {self.tree_size}")
        return width

    async def tile(self, level: int, index: int) -> list[bytes]:
        """The hashes of tile ``(level, index)`` at :attr:`tree_size`."""
        key = (level, index)
        if key not in self._tiles:
            width = self._width(level, index)
            data = await self._fetch(tile_path(level, index, width))
            # A log may serve a filled tile where a partial one was (Tessera links the
            # partial paths to the full tile): its first ``width`` hashes are the same.
            if len(data) % HASH_SIZE or len(data) < width * HASH_SIZE:
                raise ValueError(f"tile {level}/{index}: {len(data)} bytes for {width} hashes")
            self._tiles[key] = [data[i:i + HASH_SIZE]
                                for i in range(0, width * HASH_SIZE, HASH_SIZE)]
        return self._tiles[key]

    async def entry(self, index: int) -> bytes:
        """Entry ``index`` (its bytes, as the log hashed them into its leaf)."""
        self._check_index(index)
        bundle = index // TILE_WIDTH
        width = min(TILE_WIDTH, self.tree_size - bundle * TILE_WIDTH)
        entries = parse_entry_bundle(await self._fetch(entries_path(bundle, width)))
        if len(entries) < width:
            raise ValueError(f"entry bundle {bundle}: {len(entries)} entries for {width}")
        return entries[index % TILE_WIDTH]

    # --- hashes ------------------------------------------------------------------------------

    async def node(self, height: int, index: int) -> bytes:
        """The hash of the complete subtree of ``2**height`` leaves starting at leaf
        ``index * 2**height``."""
        if height < 0 or index < 0 or (index + 1) << height > self.tree_size:
            raise ValueError(f"no complete subtree {height}/{index} in a tree of "
                             f"{self.tree_size}")
        level, rest = divmod(height, TILE_HEIGHT)
        first = index << rest  # the subtree's first hash at tree level 8·level
        hashes = await self.tile(level, first // TILE_WIDTH)
        layer = hashes[first % TILE_WIDTH:first % TILE_WIDTH + (1 << rest)]
        while len(layer) > 1:
            layer = [node_hash(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
        return layer[0]

    async def leaf_hash(self, index: int) -> bytes:
        self._check_index(index)
        return await self.node(0, index)

    async def range_hash(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a range RFC 6962's recursion produces: ``start`` a
        multiple of the largest power of two not above ``end - start``."""
        n = end - start
        if n <= 0 or end > self.tree_size:
            raise ValueError(f"range {start}..{end} is not in a tree of {self.tree_size}")
        if n & (n - 1) == 0 and start % n == 0:
            return await self.node(n.bit_length() - 1, start // n)
        k = _largest_power_of_two_below(n)
        if start % k:
            raise ValueError(f"range {start}..{end} is not a subtree of the tree")
        return node_hash(await self.range_hash(start, start + k),
                         await self.range_hash(start + k, end))

    async def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` leaves (default: :attr:`tree_size`)."""
        size = self.tree_size if size is None else self._check_size(size)
        return await self.range_hash(0, size) if size else EMPTY_ROOT

    # --- proofs ------------------------------------------------------------------------------

    async def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 6962
        ``PATH(m, D[n])``), from the leaf's sibling up."""
        size = self.tree_size if size is None else self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        return await self._path(index, 0, size)

    async def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        if m < k:
            return [*await self._path(m, start, start + k), await self.range_hash(start + k, end)]
        return [*await self._path(m - k, start + k, end), await self.range_hash(start, start + k)]

    async def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 ``PROOF(m, D[n])`` from ``old_size`` to ``new_size`` leaves (default:
        :attr:`tree_size`); empty when the sizes are equal or ``old_size`` is 0."""
        new_size = self.tree_size if new_size is None else self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"need 0 <= old_size ({old_size}) <= new_size ({new_size})")
        if old_size in (0, new_size):
            return []
        return await self._subproof(old_size, 0, new_size, complete=True)

    async def _subproof(self, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [await self.range_hash(start, end)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return [*await self._subproof(m, start, start + k, complete=complete),
                    await self.range_hash(start + k, end)]
        return [*await self._subproof(m - k, start + k, end, complete=False),
                await self.range_hash(start, start + k)]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.tree_size:
            raise ValueError(f"leaf {index} is not in a tree of {self.tree_size}")

    def _check_size(self, size: int) -> int:
        if not 0 <= size <= self.tree_size:
            raise ValueError(f"size {size} is beyond the tiles' tree of {self.tree_size}")
        return size
