"""btrfs: an extent-level map (single device; "single" and DUP profiles).

Learned from btrfs-progs (kernel-shared/ctree.h, volumes.c), partclone's btrfsclone.c
and the on-disk format documentation.  btrfs hands out space in chunks (1 GiB of data,
256 MiB of metadata...) and, inside them, extents.  Addresses in the trees are
*logical*; a chunk's stripes say where on the device each logical range lives (two
stripes for DUP: both copies are used).

The chunk tree is found through the superblock's system chunk array; the extent tree
through the root tree.  Every EXTENT_ITEM (data, or a tree block on a filesystem without
skinny metadata) and METADATA_ITEM (a tree block) is used, mapped through its chunk to
every stripe; so is every tree block this reader visits, the first MiB and the
superblock copies.  Everything else is free -- space outside all chunks and the unused
parts of chunks.  The extents must add up to the superblock's ``bytes_used`` exactly,
or the volume is copied whole.

Copied whole: a volume spanning several devices or using a RAID profile, one whose log
tree needs replaying, a feature this reader does not know (extent tree v2, zoned, the
RAID stripe tree...), or anything that does not parse as expected.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from .extents import Extents
from .fs import FsMap, Read, Unsupported

_SUPER = 0x10000
_MIRRORS = (0x10000, 0x4000000, 0x4000000000)  # 64 KiB, 64 MiB, 256 GiB
_ROOT_ITEM, _EXTENT_ITEM, _METADATA_ITEM, _CHUNK_ITEM = 132, 168, 169, 228
_EXTENT_TREE = 2
_ROOT_BYTENR = 176  # a ROOT_ITEM's bytenr: after its inode item, generation and dirid
_HEADER = 0x65  # a tree block's header: checksum, fsid, bytenr, ..., nritems, level
_CHUNK = struct.Struct("<QQQQIIIHH")  # length, owner, stripe_len, type, ..., stripes, sub
_STRIPE = struct.Struct("<QQ16s")  # devid, offset, dev uuid
_KEY = struct.Struct("<QBQ")
_ITEM = struct.Struct("<QBQII")  # key, data offset, data size
_MULTI = 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400  # raid0/1/10/5/6/1c3/1c4
#: incompat features whose layout this reader knows: mixed backrefs, default subvolume,
#: mixed groups, lzo, zstd, big metadata, extended irefs, raid56 (refused per chunk),
#: skinny metadata, no holes, metadata uuid, raid1c34 (refused per chunk), simple quota
_KNOWN_INCOMPAT = 0xFFF & ~(1 << 12) | 1 << 16


@dataclass(frozen=True)
class _Chunk:
    logical: int
    length: int
    type: int
    stripes: list[tuple[int, int, bytes]]  # (devid, offset, device uuid)


class _Super:
    def __init__(self, raw: bytes):
        if raw[0x40:0x48] != b"_BHRfS_M":
            raise Unsupported("no btrfs superblock")
        self.root, self.chunk_root, self.log_root = struct.unpack_from("<QQQ", raw, 0x50)
        self.total, self.bytes_used = struct.unpack_from("<QQ", raw, 0x70)
        self.devices = struct.unpack_from("<Q", raw, 0x88)[0]
        self.sector, self.nodesize = struct.unpack_from("<II", raw, 0x90)
        self.sys_size = struct.unpack_from("<I", raw, 0xA0)[0]
        self.incompat = struct.unpack_from("<Q", raw, 0xBC)[0]
        self.devid = struct.unpack_from("<Q", raw, 0xC9)[0]
        self.sys_array = raw[0x32B : 0x32B + min(self.sys_size, 2048)]
        #: the four backup roots' tree roots (older generations, kept for recovery)
        self.backups = [struct.unpack_from("<Q", raw, 0xB2B + k * 168)[0] for k in range(4)]


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the btrfs at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    sb = _Super(read(_SUPER, 4096))
    if sb.devices != 1:
        raise Unsupported(f"a volume on {sb.devices} devices")
    if sb.log_root:
        raise Unsupported("a log tree that needs replaying (mount it once)")
    if sb.incompat & ~_KNOWN_INCOMPAT:
        raise Unsupported(f"an unknown feature flag {sb.incompat & ~_KNOWN_INCOMPAT:#x}")
    if sb.total > size or not 4096 <= sb.nodesize <= 65536:
        raise Unsupported("a superblock that disagrees with its partition")
    used = _Volume(read, sb, size).used()
    keep = used.union(Extents.of([(0, 1 << 20)] + [(m, m + 4096) for m in _MIRRORS]))
    return FsMap("btrfs", keep.invert(0, min(size, sb.total)), fs_size=sb.total)


class _Volume:
    def __init__(self, read: Read, sb: _Super, size: int):
        self.read, self.sb, self.size = read, sb, size
        self.chunks: list[_Chunk] = []
        self.starts: list[int] = []
        self.visited: list[int] = []  # logical addresses of every tree block read

    def used(self) -> Extents:
        sb = self.sb
        self._index(_system_chunks(sb))
        chunks = [
            _chunk(data, 0, len(data), key[2])
            for key, data in self._items(sb.chunk_root)
            if key[1] == _CHUNK_ITEM
        ]
        self._index(chunks)
        extent_root = next(
            (
                struct.unpack_from("<Q", data, _ROOT_BYTENR)[0]
                for key, data in self._items(sb.root)
                if key[1] == _ROOT_ITEM and key[0] == _EXTENT_TREE
            ),
            None,
        )
        if extent_root is None:
            raise Unsupported("a root tree without an extent tree")
        logical: list[tuple[int, int]] = []
        counted = 0
        for (objectid, kind, offset), _data in self._items(extent_root):
            if kind in (_EXTENT_ITEM, _METADATA_ITEM):
                length = offset if kind == _EXTENT_ITEM else sb.nodesize
                logical.append((objectid, objectid + length))
                counted += length
        if counted != sb.bytes_used:
            raise Unsupported(
                f"an extent tree that adds up to {counted} bytes, not the superblock's "
                f"{sb.bytes_used}"
            )
        for backup in {b for b in sb.backups if b and b != sb.root}:
            self._backup(backup)
        logical += [(at, at + sb.nodesize) for at in self.visited]
        return Extents.of(p for start, end in logical for p in self._physical(start, end))

    def _backup(self, root: int) -> None:
        """Keep the tree blocks an older generation's root (a backup root) still reaches,
        as partclone does, so that ``mount -o usebackuproot`` works on the clone too.
        Blocks since reused (their header names another address) end the walk there."""
        roots = [root]
        for key, data in self._items(root, tolerant=True):
            if key[1] == _ROOT_ITEM and len(data) >= _ROOT_BYTENR + 8:
                roots.append(struct.unpack_from("<Q", data, _ROOT_BYTENR)[0])
        for tree in roots[1:]:
            for _item in self._items(tree, tolerant=True):
                pass

    def _index(self, chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            if chunk.type & _MULTI:
                raise Unsupported("a RAID profile")
            for devid, offset, _uuid in chunk.stripes:
                if devid != self.sb.devid or offset + chunk.length > self.size:
                    raise Unsupported("a chunk on another device or past the partition")
        merged = {c.logical: c for c in self.chunks + chunks}
        self.chunks = sorted(merged.values(), key=lambda c: c.logical)
        self.starts = [c.logical for c in self.chunks]

    def _physical(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Every copy on the device of logical ``[start, end)``."""
        k = bisect_right(self.starts, start) - 1
        chunk = self.chunks[k] if k >= 0 else None
        if chunk is None or end > chunk.logical + chunk.length:
            raise Unsupported("an extent outside every chunk")
        for _devid, offset, _uuid in chunk.stripes:
            yield offset + start - chunk.logical, offset + end - chunk.logical

    def _items(
        self, root: int, tolerant: bool = False
    ) -> Iterator[tuple[tuple[int, int, int], bytes]]:
        """Every leaf item (key, data) of the tree whose root node is at ``root``.
        ``tolerant``: a block that is not what it should be is skipped, not an error."""
        stack = [(root, 0)]
        while stack:
            logical, depth = stack.pop()
            try:
                node = self._node(logical, depth)
            except Unsupported:
                if tolerant:
                    continue
                raise
            self.visited.append(logical)
            count, level = struct.unpack_from("<IB", node, 0x60)
            if level:
                if _HEADER + count * 33 > len(node):
                    raise Unsupported("a tree node with more pointers than fit")
                children = [
                    struct.unpack_from("<Q", node, _HEADER + k * 33 + _KEY.size)[0]
                    for k in range(count)
                ]
                stack += [(child, depth + 1) for child in reversed(children)]
                continue
            if _HEADER + count * _ITEM.size > len(node):
                raise Unsupported("a tree leaf with more items than fit")
            for k in range(count):
                objectid, kind, offset, at, length = _ITEM.unpack_from(node, _HEADER + k * 25)
                if _HEADER + at + length > len(node):
                    raise Unsupported("a tree item past its leaf")
                yield (objectid, kind, offset), node[_HEADER + at : _HEADER + at + length]

    def _node(self, logical: int, depth: int) -> bytes:
        if depth > 8:
            raise Unsupported("a tree deeper than any real one")
        start, _end = next(self._physical(logical, logical + self.sb.nodesize))
        node = self.read(start, self.sb.nodesize)
        if len(node) < self.sb.nodesize or struct.unpack_from("<Q", node, 0x30)[0] != logical:
            raise Unsupported("a tree block that is not where it should be")
        return node


def _system_chunks(sb: _Super) -> list[_Chunk]:
    """The system chunk array: (key, chunk item) pairs mapping the chunk tree itself."""
    out = []
    pos = 0
    while pos + _KEY.size <= len(sb.sys_array):
        _obj, kind, logical = _KEY.unpack_from(sb.sys_array, pos)
        if kind != _CHUNK_ITEM:
            raise Unsupported("an unexpected item in the system chunk array")
        chunk = _chunk(sb.sys_array, pos + _KEY.size, len(sb.sys_array), logical)
        out.append(chunk)
        pos += _KEY.size + _CHUNK.size + len(chunk.stripes) * _STRIPE.size
    return out


def _chunk(data: bytes, pos: int, end: int, logical: int) -> _Chunk:
    """One CHUNK_ITEM at ``pos`` of ``data``."""
    length, _o, _sl, kind, _a, _w, _s, nstripes, _sub = _CHUNK.unpack_from(data, pos)
    if not nstripes or pos + _CHUNK.size + nstripes * _STRIPE.size > end:
        raise Unsupported("a chunk item cut short")
    stripes = [
        _STRIPE.unpack_from(data, pos + _CHUNK.size + k * _STRIPE.size) for k in range(nstripes)
    ]
    return _Chunk(logical, length, kind, stripes)
