"""FAT12/16/32: free clusters from the file allocation tables.

A cluster is free only when its entry is 0 in *every* copy of the FAT (copies that
disagree are read as the union of what they use).  Everything before the first
cluster (boot sector, reserved sectors, the FATs, the FAT12/16 root directory) and
the sectors after the last whole cluster are used.  A volume whose "clean" bit says
it was not unmounted cleanly, or (FAT32) whose FSInfo free count disagrees with the
FAT, is copied whole.
"""

from __future__ import annotations

import struct
from array import array

from .extents import Extents
from .fs import FsMap, Read, Unsupported


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the FAT12/16/32 at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    bpb = read(0, 512)
    bps, spc, reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHBHH", bpb, 11)
    fat16_size = struct.unpack_from("<H", bpb, 22)[0]
    total32, fat32_size = struct.unpack_from("<II", bpb, 32)
    total = total16 or total32
    fat_sectors = fat16_size or fat32_size
    if not (bps and spc and reserved and nfats and total and fat_sectors):
        raise Unsupported("an implausible boot sector")
    if total * bps > size:
        raise Unsupported("a boot sector larger than its partition")
    root_sectors = -(-root_entries * 32 // bps)
    first_data = reserved + nfats * fat_sectors + root_sectors
    clusters = (total - first_data) // spc
    kind = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    if (kind == 32) != (fat16_size == 0):
        raise Unsupported("a boot sector whose FAT type and sizes disagree")
    need = -(-(clusters + 2) * kind // 8)
    if need > fat_sectors * bps:
        raise Unsupported("a FAT too small for its clusters")
    raws = {read((reserved + k * fat_sectors) * bps, need) for k in range(nfats)}
    copies = [_entries(raw, kind, clusters + 2) for raw in raws]
    clean = {16: 0x8000, 32: 0x08000000}.get(kind)
    if clean and not all(c[1] & clean for c in copies):
        raise Unsupported("a volume not cleanly unmounted (its dirty bit is set; run fsck.vfat)")
    merged = copies[0] if len(copies) == 1 else [any(e) for e in zip(*copies, strict=True)]
    if kind == 32:
        _check_fsinfo(read, bpb, bps, sum(1 for e in merged[2 : clusters + 2] if not e))
    cluster = spc * bps
    base = first_data * bps
    free: list[tuple[int, int]] = []
    run = -1
    for i in range(clusters):
        is_free = not merged[i + 2]
        if is_free and run < 0:
            run = i
        elif not is_free and run >= 0:
            free.append((base + run * cluster, base + i * cluster))
            run = -1
    if run >= 0:
        free.append((base + run * cluster, base + clusters * cluster))
    return FsMap(f"fat{kind}", Extents.of(free), fs_size=total * bps)


def _check_fsinfo(read: Read, bpb: bytes, bps: int, free: int) -> None:
    """FAT32's FSInfo sector keeps a free-cluster count (0xFFFFFFFF: not known); a FAT
    that disagrees with it is doubtful (what fsck.vfat reports as a wrong free count)."""
    sector = struct.unpack_from("<H", bpb, 48)[0]
    if not sector or sector == 0xFFFF:
        return
    info = read(sector * bps, 512)
    if info[:4] != b"RRaA" or info[484:488] != b"rrAa":
        return
    count = struct.unpack_from("<I", info, 488)[0]
    if count != 0xFFFFFFFF and count != free:
        raise Unsupported(
            f"a FAT with {free} free clusters where FSInfo says {count} (run fsck.vfat)"
        )


def _entries(raw: bytes, kind: int, count: int) -> list[int] | array[int]:
    if kind == 16:
        return array("H", raw[: count * 2])
    if kind == 32:
        return [e & 0x0FFFFFFF for e in array("I", raw[: count * 4])]
    out = []
    for i in range(count):
        pair = int.from_bytes(raw[i * 3 // 2 : i * 3 // 2 + 2], "little")
        out.append(pair >> 4 if i % 2 else pair & 0xFFF)
    return out
