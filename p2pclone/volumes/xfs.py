"""XFS: free extents from each allocation group's by-block free-space B+tree (bnobt).

Learned from xfsprogs (libxfs/xfs_format.h, xfs_log_format.h, xfs_log_recover.c's
``xlog_find_tail``) and partclone's xfs reader.  All fields are big-endian.  Per AG,
the AGF gives the bnobt's root and height; its leaves are ``(start, count)`` records
of free blocks, and their sum must equal the AGF's free count.  The internal log must
be clean: its last record (just before the head, where the blocks' cycle number
drops) must be an unmount record; a filesystem whose log still holds changes, whose
log is external, that needs repair, or that uses a feature this module does not know,
is copied whole.  The free list (AGFL) and the log's blocks are never free.
"""

from __future__ import annotations

import struct

from .extents import Extents
from .fs import FsMap, Read, Unsupported

_BB = 512
_LOG_MAGIC = 0xFEEDBABE
_UNMOUNT_TRANS = 0x20
# features this module knows (xfs_format.h); NEEDSREPAIR (incompat 0x10) is not one
_RO_KNOWN = 0x1 | 0x2 | 0x4 | 0x8  # finobt, rmapbt, reflink, inobtcount
_INCOMPAT_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x20  # ftype, sparse inodes, meta uuid,
#                                                  bigtime, nrext64


class _Super:
    def __init__(self, raw: bytes):
        self.block = struct.unpack_from(">I", raw, 4)[0]
        self.dblocks = struct.unpack_from(">Q", raw, 8)[0]
        self.logstart = struct.unpack_from(">Q", raw, 48)[0]
        self.agblocks, self.agcount = struct.unpack_from(">II", raw, 84)
        self.logblocks = struct.unpack_from(">I", raw, 96)[0]
        self.version = struct.unpack_from(">H", raw, 100)[0] & 0xF
        self.sector = struct.unpack_from(">H", raw, 102)[0]
        self.agblklog = raw[124]
        self.inprogress = raw[126]
        self.compat, self.ro_compat, self.incompat, self.log_incompat = struct.unpack_from(
            ">IIII", raw, 208
        )

    def check(self, size: int) -> None:
        if self.block not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise Unsupported("an implausible superblock")
        if self.version not in (4, 5) or not self.agcount or not self.agblocks:
            raise Unsupported(f"an XFS of version {self.version}")
        if self.dblocks * self.block > size:
            raise Unsupported("a superblock larger than its partition")
        if self.inprogress:
            raise Unsupported("a filesystem whose mkfs did not finish")
        if self.version == 5:
            if self.incompat & 0x10:
                raise Unsupported("a filesystem marked as needing repair (run xfs_repair)")
            unknown = (self.ro_compat & ~_RO_KNOWN, self.incompat & ~_INCOMPAT_KNOWN)
            if any(unknown) or self.log_incompat:
                raise Unsupported(f"feature flags this version does not read {unknown}")
        if not self.logstart:
            raise Unsupported("an external log, whose state cannot be checked here")

    def byte(self, fsblock: int) -> int:
        """Where an AG-encoded filesystem block number lies."""
        ag, agb = fsblock >> self.agblklog, fsblock & ((1 << self.agblklog) - 1)
        return int((ag * self.agblocks + agb) * self.block)


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the XFS at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    sb = _Super(read(0, 512))
    sb.check(size)
    if not _log_clean(read, sb):
        raise Unsupported(
            "a log with changes not yet written back (mount it once, or run xfs_repair)"
        )
    free = Extents.of(r for ag in range(sb.agcount) for r in _ag_free(read, sb, ag))
    return FsMap("xfs", free, fs_size=sb.dblocks * sb.block)


def _ag_free(read: Read, sb: _Super, ag: int) -> list[tuple[int, int]]:
    base = ag * sb.agblocks * sb.block
    agf = read(base + sb.sector, sb.sector)
    if agf[:4] != b"XAGF":
        raise Unsupported(f"allocation group {ag}'s header is damaged")
    length, root = struct.unpack_from(">II", agf, 12)
    level = struct.unpack_from(">I", agf, 28)[0]
    freeblks, flcount = struct.unpack_from(">I", agf, 52)[0], struct.unpack_from(">I", agf, 48)[0]
    if not 0 < level <= 8 or not 0 < root < length:
        raise Unsupported(f"allocation group {ag}'s free-space tree is damaged")
    records = _leaves(read, sb, base, root, level, length)
    total = sum(count for _start, count in records)
    if total not in (freeblks, freeblks - flcount):
        raise Unsupported(
            f"allocation group {ag}'s free-space tree disagrees with its free count "
            f"({total} blocks found free, {freeblks} recorded)"
        )
    return [(base + s * sb.block, base + (s + n) * sb.block) for s, n in records]


def _leaves(
    read: Read, sb: _Super, base: int, block: int, level: int, length: int
) -> list[tuple[int, int]]:
    """Every record of the bnobt below ``block`` (``level`` 1 is a leaf)."""
    crc = sb.version == 5
    head = 56 if crc else 16
    raw = read(base + block * sb.block, sb.block)
    if raw[:4] != (b"AB3B" if crc else b"ABTB"):
        raise Unsupported("a free-space tree block is damaged")
    node_level, count = struct.unpack_from(">HH", raw, 4)
    if node_level != level - 1 or head + count * 8 > sb.block:
        raise Unsupported("a free-space tree block is inconsistent")
    if node_level == 0:
        records = [struct.unpack_from(">II", raw, head + 8 * k) for k in range(count)]
        if any(not n or s + n > length for s, n in records):
            raise Unsupported("a free extent outside its allocation group")
        return records
    maxrecs = (sb.block - head) // 12
    pointers = struct.unpack_from(f">{count}I", raw, head + maxrecs * 8)
    out: list[tuple[int, int]] = []
    for child in pointers:
        if not 0 < child < length:
            raise Unsupported("a free-space tree pointer outside its allocation group")
        out += _leaves(read, sb, base, child, level - 1, length)
    return out


def _log_clean(read: Read, sb: _Super) -> bool:
    """xlog_find_tail's test, for a log that was unmounted: the head is where the
    blocks' cycle number drops, and the last record before it is a single unmount op."""
    start, blocks = sb.byte(sb.logstart), sb.logblocks * sb.block // _BB
    if blocks < 2:
        return False

    def cycle(bb: int) -> int:
        word, h_cycle = struct.unpack(">II", read(start + bb * _BB, 8))
        return int(h_cycle if word == _LOG_MAGIC else word)

    first = cycle(0)
    lo, hi = 0, blocks  # blocks [0, lo] have the first cycle; find the first that does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cycle(mid) == first:
            lo = mid
        else:
            hi = mid
    for bb in range(lo, max(-1, lo - 2048), -1):  # an iclog is at most 256 KiB
        raw = read(start + bb * _BB, _BB)
        magic, h_cycle = struct.unpack_from(">II", raw, 0)
        if magic != _LOG_MAGIC:
            continue
        if h_cycle != first:
            return False
        version, nops, h_size = raw[11], struct.unpack_from(">I", raw, 40)[0], 0
        if version == 2:
            h_size = struct.unpack_from(">I", raw, 320)[0]
        hblks = -(-h_size // 32768) if h_size > 32768 else 1
        op = read(start + ((bb + hblks) % blocks) * _BB, 16)
        return nops == 1 and bool(op[9] & _UNMOUNT_TRANS)
    return False
