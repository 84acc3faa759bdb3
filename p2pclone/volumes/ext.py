"""ext2/3/4: free blocks from the block bitmaps, checked against the group descriptors.

Learned from e2fsprogs (lib/ext2fs/alloc_sb.c, closefs.c, csum.c) and partclone's
extfs reader.  A group whose bitmap was never initialised (BLOCK_UNINIT, with group
checksums on) holds only metadata: its superblock and descriptor copies, reserved GDT
blocks, and any group's bitmaps and inode table placed inside it (flex_bg).  Every
group's free count is compared with its descriptor's; one disagreement and the
volume is copied whole.  So are: a journal that needs recovery, a filesystem not
cleanly unmounted or with errors, an external journal device, snapshots, and any
feature flag this module does not know.
"""

from __future__ import annotations

import struct

from .extents import Extents, bitmap_runs
from .fs import FsMap, Read, Unsupported

_SB = 1024
# incompat
_RECOVER, _JOURNAL_DEV, _META_BG, _64BIT = 0x4, 0x8, 0x10, 0x80
_INCOMPAT_KNOWN = 0x2 | _RECOVER | _META_BG | 0x40 | _64BIT | 0x100 | 0x200 | 0x400 | 0x2000
_INCOMPAT_KNOWN |= 0x4000 | 0x8000 | 0x10000 | 0x20000 | _JOURNAL_DEV
# ro_compat
_SPARSE_SUPER, _GDT_CSUM, _BIGALLOC, _METADATA_CSUM = 0x1, 0x10, 0x200, 0x400
_HAS_SNAPSHOT, _ORPHAN_PRESENT = 0x80, 0x10000
_RO_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000
_RO_KNOWN |= 0x2000 | 0x8000
# compat
_SPARSE_SUPER2 = 0x200
_BLOCK_UNINIT = 0x2


class _Super:
    def __init__(self, raw: bytes):
        def u32(off: int) -> int:
            return int.from_bytes(raw[off : off + 4], "little")

        def u16(off: int) -> int:
            return int.from_bytes(raw[off : off + 2], "little")

        if len(raw) < 1024:
            raise Unsupported("a superblock cut short")
        self.incompat, self.ro_compat, self.compat = u32(0x60), u32(0x64), u32(0x5C)
        self.wide = bool(self.incompat & _64BIT)
        self.blocks = u32(0x04) | ((u32(0x150) << 32) if self.wide else 0)
        self.first_data_block = u32(0x14)
        self.block_size = 1024 << u32(0x18)
        self.cluster_bits = u32(0x1C) - u32(0x18) if self.ro_compat & _BIGALLOC else 0
        self.blocks_per_group = u32(0x20)
        self.clusters_per_group = u32(0x24) if self.cluster_bits else self.blocks_per_group
        self.inodes_per_group = u32(0x28)
        self.state = u16(0x3A)
        self.inode_size = u16(0x58) if u32(0x4C) >= 1 else 128
        self.reserved_gdt = u16(0xCE)
        self.desc_size = (u16(0xFE) or 32) if self.wide else 32
        self.first_meta_bg = u32(0x104)
        self.backup_bgs = (u32(0x24C), u32(0x250))
        self.groups = -(-(self.blocks - self.first_data_block) // max(1, self.blocks_per_group))

    def check(self, size: int) -> None:
        if self.block_size > 65536 or not self.blocks_per_group or self.blocks_per_group % 8:
            raise Unsupported("an implausible superblock")
        if self.blocks * self.block_size > size:
            raise Unsupported("a superblock larger than its partition")
        if self.incompat & _JOURNAL_DEV:
            raise Unsupported("an external journal device")
        if self.incompat & _RECOVER:
            raise Unsupported("a journal that needs recovery (mount it once, or run e2fsck)")
        if (
            not self.state & 1
            or self.state & 2
            or self.state & 4
            or self.ro_compat & _ORPHAN_PRESENT
        ):
            raise Unsupported("a filesystem not cleanly unmounted or with errors (run e2fsck)")
        if self.ro_compat & _HAS_SNAPSHOT:
            raise Unsupported("ext4 snapshots")
        unknown_i = self.incompat & ~_INCOMPAT_KNOWN
        unknown_r = self.ro_compat & ~_RO_KNOWN
        if unknown_i or unknown_r:
            raise Unsupported(f"unknown feature flags (0x{unknown_i:x}, 0x{unknown_r:x})")
        if self.desc_size < 32 or self.desc_size > 1024 or self.desc_size & (self.desc_size - 1):
            raise Unsupported("an implausible group descriptor size")

    @property
    def name(self) -> str:
        if self.incompat & (0x40 | _64BIT | 0x200) or self.ro_compat & (_METADATA_CSUM | _BIGALLOC):
            return "ext4"
        return "ext3" if self.compat & 0x4 else "ext2"

    def group_start(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def has_super(self, g: int) -> bool:
        if g == 0:
            return True
        if self.compat & _SPARSE_SUPER2:
            return g in self.backup_bgs
        if g == 1 or not self.ro_compat & _SPARSE_SUPER:
            return True
        if g % 2 == 0:
            return False
        return any(_power_of(g, p) for p in (3, 5, 7))

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    def desc_blocks(self) -> int:
        return -(-self.groups // self.descs_per_block)

    def super_block(self, g: int) -> int:
        """The block of group ``g``'s superblock copy (or where it would be).  With
        1 KiB blocks and bigalloc, block 0 is group 0's first block but the superblock
        still lies at byte 1024: block 1 (e2fsprogs' "group_zero_adjust")."""
        start = self.group_start(g)
        return start + 1 if g == 0 and start == 0 and self.block_size == 1024 else start

    def desc_block_loc(self, i: int) -> int:
        """Where descriptor block ``i`` (the primary copy) lies."""
        if not self.incompat & _META_BG or i < self.first_meta_bg:
            return self.super_block(0) + 1 + i
        g = i * self.descs_per_block
        return self.super_block(g) + (1 if self.has_super(g) else 0)

    def metadata_of_group(self, g: int) -> list[tuple[int, int]]:
        """Block ranges of the superblock copy and descriptor blocks in group ``g``."""
        start = self.super_block(g)
        out = []
        sb = self.has_super(g)
        if sb:
            out.append((start, start + 1))
        if self.incompat & _META_BG:
            if sb:
                old = min(self.first_meta_bg, self.desc_blocks())
                out.append((start + 1, start + 1 + old + self.reserved_gdt))
            per = self.descs_per_block
            meta = g // per
            if meta >= self.first_meta_bg and g % per in (0, 1, per - 1):
                loc = start + (1 if sb else 0)
                out.append((loc, loc + 1))
        elif sb:
            out.append((start + 1, start + 1 + self.desc_blocks() + self.reserved_gdt))
        return out


def _power_of(n: int, p: int) -> bool:
    while n % p == 0:
        n //= p
    return n == 1


def _descriptors(read: Read, sb: _Super) -> list[tuple[int, int, int, int, int]]:
    """``(block bitmap, inode bitmap, inode table, free clusters, flags)`` per group."""
    out = []
    bs = sb.block_size
    for i in range(sb.desc_blocks()):
        raw = read(sb.desc_block_loc(i) * bs, bs)
        for k in range(min(sb.descs_per_block, sb.groups - i * sb.descs_per_block)):
            d = raw[k * sb.desc_size : (k + 1) * sb.desc_size]
            bb, ib, it, free, _fi, _dirs, flags = struct.unpack_from("<IIIHHHH", d)
            if sb.wide:
                bbh, ibh, ith, freeh = struct.unpack_from("<IIIH", d, 0x20)
                bb, ib, it, free = (
                    bb | bbh << 32,
                    ib | ibh << 32,
                    it | ith << 32,
                    free | freeh << 16,
                )
            out.append((bb, ib, it, free, flags))
    return out


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the ext2/3/4 filesystem at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    raw = read(_SB, 1024)
    sb = _Super(raw)
    sb.check(size)
    free = _free_clusters(read, sb)
    return FsMap(sb.name, free, fs_size=sb.blocks * sb.block_size)


def name_of(read: Read) -> str:
    """ext2, ext3 or ext4, as its superblock's features say ("ext" if it cannot)."""
    try:
        return _Super(read(_SB, 1024)).name
    except (Unsupported, struct.error, ValueError):
        return "ext"


def _free_clusters(read: Read, sb: _Super) -> Extents:
    descs = _descriptors(read, sb)
    bs, cluster = sb.block_size, sb.block_size << sb.cluster_bits
    uninit_ok = bool(sb.ro_compat & (_GDT_CSUM | _METADATA_CSUM))
    itable_blocks = -(-sb.inodes_per_group * sb.inode_size // bs)
    group_meta = [
        r
        for bb, ib, it, _f, _fl in descs
        for r in ((bb, bb + 1), (ib, ib + 1), (it, it + itable_blocks))
    ]
    ranges: list[tuple[int, int]] = []
    for g, (bb, _ib, _it, free_count, flags) in enumerate(descs):
        start = sb.group_start(g)
        nblocks = min(sb.blocks_per_group, sb.blocks - start)
        nbits = -(-nblocks // (1 << sb.cluster_bits))
        if uninit_ok and flags & _BLOCK_UNINIT:
            if sb.cluster_bits:
                continue  # bigalloc without a bitmap: keep the group (rare; safe)
            used = Extents.of(
                sb.metadata_of_group(g)
                + [(max(a, start), min(b, start + nblocks)) for a, b in group_meta]
            )
            group_free = used.invert(start, start + nblocks)
            if group_free.total != free_count:
                raise Unsupported(
                    f"group {g}'s free count disagrees with its layout ({group_free.total} "
                    f"blocks found free, {free_count} recorded)"
                )
            ranges += [(a * bs, b * bs) for a, b in group_free]
            continue
        if not bb or bb >= sb.blocks:
            raise Unsupported(f"group {g}'s block bitmap lies outside the filesystem")
        bitmap = read(bb * bs, bs)
        runs = list(bitmap_runs(bitmap, nbits, value=0))
        if sum(b - a for a, b in runs) != free_count:
            raise Unsupported(
                f"group {g}'s block bitmap disagrees with its free count "
                f"({sum(b - a for a, b in runs)} free, {free_count} recorded)"
            )
        base = start * bs
        ranges += [(base + a * cluster, min(base + b * cluster, sb.blocks * bs)) for a, b in runs]
    return Extents.of(ranges)
