"""exFAT: free clusters from the allocation bitmap (the root directory's 0x81 entry).

Learned from the exFAT specification (Microsoft, 2019) and exfatprogs' fsck.  The
bitmap's clusters are followed through the FAT; one bit per cluster of the cluster
heap, set when in use.  The volume is copied whole when its VolumeDirty flag is set,
when it keeps two FATs and bitmaps (TexFAT), or when the bitmap or the root directory
does not read as the boot sector describes.
"""

from __future__ import annotations

import struct

from .extents import Extents, bitmap_runs
from .fs import FsMap, Read, Unsupported

_END = 0xFFFFFFFF
_BAD = 0xFFFFFFF7
_BITMAP_ENTRY, _END_OF_DIRECTORY = 0x81, 0x00
_MAX_CHAIN = 1 << 24


class _Boot:
    def __init__(self, raw: bytes):
        (self.volume_length, self.fat_offset, self.fat_length, self.heap_offset,
         self.clusters, self.root) = struct.unpack_from("<QIIIII", raw, 72)  # fmt: skip
        self.flags = struct.unpack_from("<H", raw, 106)[0]
        self.sector = 1 << raw[108]
        self.cluster = self.sector << raw[109]
        self.fats = raw[110]
        self.percent_in_use = raw[112]  # 0xFF: not known

    def check(self, size: int) -> None:
        if not 9 <= self.sector.bit_length() - 1 <= 12 or self.cluster > 1 << 25:
            raise Unsupported("an implausible boot sector")
        if self.volume_length * self.sector > size:
            raise Unsupported("a boot sector larger than its partition")
        if self.heap_offset * self.sector + self.clusters * self.cluster > size:
            raise Unsupported("a cluster heap beyond its partition")
        if self.flags & 0x0002:
            raise Unsupported(
                "a volume not cleanly unmounted (its dirty flag is set; run fsck.exfat)"
            )
        if self.fats != 1:
            raise Unsupported("two FATs and bitmaps (TexFAT)")


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the exFAT at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    boot = _Boot(read(0, 512))
    boot.check(size)
    free = _free(read, boot)
    return FsMap("exfat", free, fs_size=boot.volume_length * boot.sector)


def _free(read: Read, boot: _Boot) -> Extents:
    fat = read(boot.fat_offset * boot.sector, (boot.clusters + 2) * 4)
    if len(fat) < (boot.clusters + 2) * 4:
        raise Unsupported("a FAT cut short")
    root = b"".join(_read_chain(read, boot, fat, boot.root, 0))
    first = length = 0
    for pos in range(0, len(root), 32):
        kind = root[pos]
        if kind == _END_OF_DIRECTORY:
            break
        if kind == _BITMAP_ENTRY:
            first, length = struct.unpack_from("<IQ", root, pos + 20)
            break
    if not first or length * 8 < boot.clusters:
        raise Unsupported("no allocation bitmap covering the cluster heap")
    bitmap = b"".join(_read_chain(read, boot, fat, first, length))[:length]
    heap, c = boot.heap_offset * boot.sector, boot.cluster
    runs = Extents.of(bitmap_runs(bitmap, boot.clusters, value=0))
    percent = (boot.clusters - runs.total) * 100 / max(boot.clusters, 1)
    if boot.percent_in_use <= 100 and abs(percent - boot.percent_in_use) > 1:
        raise Unsupported(
            f"an allocation bitmap {percent:.0f}% in use where the boot sector says "
            f"{boot.percent_in_use}% (run fsck.exfat)"
        )
    return Extents.of((heap + a * c, heap + b * c) for a, b in runs)


def _read_chain(read: Read, boot: _Boot, fat: bytes, first: int, length: int) -> list[bytes]:
    """The clusters of a chain from ``first`` (``length`` bytes: the chain may be
    contiguous with no FAT entries, as exFAT allows; 0: follow the FAT to its end)."""
    out: list[bytes] = []
    cluster, seen = first, set()
    need = -(-length // boot.cluster) if length else _MAX_CHAIN
    while len(out) < need:
        if not 2 <= cluster < boot.clusters + 2 or cluster in seen:
            raise Unsupported("a cluster chain that leaves the heap or loops")
        seen.add(cluster)
        out.append(
            read(boot.heap_offset * boot.sector + (cluster - 2) * boot.cluster, boot.cluster)
        )
        nxt = struct.unpack_from("<I", fat, cluster * 4)[0]
        if nxt == _END:
            break
        if nxt == _BAD:
            raise Unsupported("a bad cluster in a metadata chain")
        if nxt:
            cluster = nxt
        elif length:
            cluster += 1  # a contiguous chain the FAT does not hold (exFAT allows it)
        else:
            raise Unsupported("a directory whose cluster chain is not in the FAT")
    if length and len(out) < need:
        raise Unsupported("a metadata chain shorter than its length")
    return out
