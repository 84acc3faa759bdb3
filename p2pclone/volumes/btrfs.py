"""btrfs: what no chunk holds is free (a chunk-level map, single device).

Learned from btrfs-progs (kernel-shared/ctree.h, volumes.c) and the on-disk format
documentation.  btrfs hands out space in chunks (1 GiB of data, 256 MiB of
metadata...); a chunk's stripes say where on the device it lives.  The chunk tree is
found through the superblock's system chunk array, walked, and every stripe on this
device is used; everything outside them, the first MiB and the superblock copies, is
free.  Free space *inside* chunks is copied (an extent-level map would need the
extent tree; partclone's domain map shows the difference).  Copied whole: a volume
spanning several devices, one whose log tree needs replaying, or anything that does
not parse as expected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .extents import Extents
from .fs import FsMap, Read, Unsupported

_SUPER = 0x10000
_MIRRORS = (0x10000, 0x4000000, 0x4000000000)  # 64 KiB, 64 MiB, 256 GiB
_CHUNK_ITEM = 228
_HEADER = 0x65  # a tree block's header: checksum, fsid, bytenr, ..., nritems, level
_CHUNK = struct.Struct("<QQQQIIIHH")  # length, owner, stripe_len, type, ..., stripes, sub
_STRIPE = struct.Struct("<QQ16s")  # devid, offset, dev uuid
_KEY = struct.Struct("<QBQ")
_MULTI = 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400  # raid0/1/10/5/6/1c3/1c4


@dataclass(frozen=True)
class _Chunk:
    length: int
    type: int
    stripes: list[tuple[int, int, bytes]]  # (devid, offset, device uuid)


class _Super:
    def __init__(self, raw: bytes):
        if raw[0x40:0x48] != b"_BHRfS_M":
            raise Unsupported("no btrfs superblock")
        self.chunk_root, self.log_root = struct.unpack_from("<QQ", raw, 0x58)
        self.total = struct.unpack_from("<Q", raw, 0x70)[0]
        self.devices = struct.unpack_from("<Q", raw, 0x88)[0]
        self.sector, self.nodesize = struct.unpack_from("<II", raw, 0x90)
        self.sys_size = struct.unpack_from("<I", raw, 0xA0)[0]
        self.devid = struct.unpack_from("<Q", raw, 0xC9)[0]
        self.sys_array = raw[0x32B : 0x32B + min(self.sys_size, 2048)]


def read_map(read: Read, size: int) -> FsMap:
    try:
        sb = _Super(read(_SUPER, 4096))
        if sb.devices != 1:
            raise Unsupported(f"a volume on {sb.devices} devices")
        if sb.log_root:
            raise Unsupported("a log tree that needs replaying (mount it once)")
        if sb.total > size or not 4096 <= sb.nodesize <= 65536:
            raise Unsupported("a superblock that disagrees with its partition")
        used = _stripes(read, sb, size)
    except Unsupported as exc:
        return FsMap.copy_whole("btrfs", str(exc))
    keep = used.union(Extents.of([(0, 1 << 20)] + [(m, m + 4096) for m in _MIRRORS]))
    return FsMap("btrfs", keep.invert(0, min(size, sb.total)), fs_size=sb.total)


def _chunks_in(data: bytes, pos: int, end: int) -> tuple[_Chunk, int]:
    """Parse one CHUNK_ITEM at ``pos``: its stripes and the length it takes."""
    length, _o, _sl, kind, _a, _w, _s, nstripes, _sub = _CHUNK.unpack_from(data, pos)
    if not nstripes or pos + _CHUNK.size + nstripes * _STRIPE.size > end:
        raise Unsupported("a chunk item cut short")
    stripes = [
        _STRIPE.unpack_from(data, pos + _CHUNK.size + k * _STRIPE.size) for k in range(nstripes)
    ]
    return _Chunk(length, kind, stripes), _CHUNK.size + nstripes * _STRIPE.size


def _stripes(read: Read, sb: _Super, size: int) -> Extents:
    # The system chunk array: (key, chunk item) pairs, mapping the chunk tree itself.
    system: list[tuple[int, _Chunk]] = []
    pos = 0
    while pos + _KEY.size <= len(sb.sys_array):
        _obj, kind, logical = _KEY.unpack_from(sb.sys_array, pos)
        if kind != _CHUNK_ITEM:
            raise Unsupported("an unexpected item in the system chunk array")
        chunk, used = _chunks_in(sb.sys_array, pos + _KEY.size, len(sb.sys_array))
        system.append((logical, chunk))
        pos += _KEY.size + used
    chunks = list(system)
    chunks += _walk(read, sb, system, sb.chunk_root, size, depth=0)
    out = []
    for _logical, chunk in chunks:
        if chunk.type & _MULTI:
            raise Unsupported("a RAID profile")
        for devid, offset, _uuid in chunk.stripes:
            if devid != sb.devid or offset + chunk.length > size:
                raise Unsupported("a chunk on another device or past the partition")
            out.append((offset, offset + chunk.length))
    return Extents.of(out)


def _physical(chunks: list[tuple[int, _Chunk]], logical: int, sb: _Super) -> int:
    for start, chunk in chunks:
        if start <= logical < start + chunk.length:
            return int(chunk.stripes[0][1] + (logical - start))
    raise Unsupported("a tree block outside every system chunk")


def _walk(
    read: Read, sb: _Super, system: list[tuple[int, _Chunk]], logical: int, size: int, depth: int
) -> list[tuple[int, _Chunk]]:
    """Every CHUNK_ITEM of the chunk tree below the node at ``logical``."""
    if depth > 8:
        raise Unsupported("a chunk tree deeper than any real one")
    node = read(_physical(system, logical, sb), sb.nodesize)
    if len(node) < sb.nodesize or struct.unpack_from("<Q", node, 0x30)[0] != logical:
        raise Unsupported("a chunk tree block that is not where it should be")
    count, level = struct.unpack_from("<IB", node, 0x60)
    out: list[tuple[int, _Chunk]] = []
    for k in range(count):
        if level:
            at = _HEADER + k * 33
            child = struct.unpack_from("<Q", node, at + _KEY.size)[0]
            out += _walk(read, sb, system, child, size, depth + 1)
            continue
        at = _HEADER + k * 25
        _obj, kind, key_offset = _KEY.unpack_from(node, at)
        offset, length = struct.unpack_from("<II", node, at + _KEY.size)
        if kind == _CHUNK_ITEM:
            start = _HEADER + offset
            chunk, _ = _chunks_in(node, start, min(start + length, len(node)))
            out.append((key_offset, chunk))
    return out
