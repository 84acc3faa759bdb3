"""What on a disk is in use: its partition table and each filesystem's allocation.

``scan(read, size)`` reads the partition table (table.py) and, for every partition (or
the whole disk when there is no table), the filesystem's own allocation data (ext.py,
fat.py, swap.py, ...).  The result's ``free`` ranges are the bytes that no filesystem
uses: the clone neither sends nor writes them.  Everything else is used -- the table
itself, gaps between partitions, boot code before the first partition, and every
volume p2pclone does not fully understand, which ``volumes`` lists with the reason.
Unknown or doubtful means used: a wrong "free" loses data, a wrong "used" costs time.

Pure functions over ``read(offset, length) -> bytes`` (sans-I/O, like the protocol
core): tests run them on bytes, the sender on a disk.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import P2PCloneError
from ..units import human_bytes
from . import btrfs, exfat, ext, fat, ntfs, swap, xfs
from .extents import Extents
from .fs import FsMap, Read, Unsupported, probe
from .table import Partition, Table, read_table

__all__ = ["DiskMap", "Extents", "Partition", "Table", "Volume", "identify", "map_volume", "scan"]

#: A free range is counted in 512-byte sectors; more free ranges than this and the
#: smallest are dropped (copied after all), which bounds the plan a receiver accepts.
SECTOR = 512
MAX_FREE_EXTENTS = 1 << 20

_READERS: dict[str, Callable[[Read, int], FsMap]] = {
    "ext": ext.read_map,
    "btrfs": btrfs.read_map,
    "exfat": exfat.read_map,
    "fat": fat.read_map,
    "ntfs": ntfs.read_map,
    "swap": swap.read_map,
    "xfs": xfs.read_map,
}
_NAMES = {
    "luks": "LUKS (encrypted)",
    "bitlocker": "BitLocker (encrypted)",
    "lvm": "LVM",
}


@dataclass(frozen=True, slots=True)
class Volume:
    """One partition (or the whole disk, ``partition`` None) as the plan shows it."""

    partition: Partition | None
    start: int
    size: int
    fs: str  # "" when nothing was recognised
    free: int  # bytes not sent
    whole: str  # why it is copied whole; "" when mapped

    def describe(self) -> str:
        """One line for people: "EFI system, fat32, 10.1 MiB used of 40.0 MiB"."""
        p = self.partition
        kind = p.type_name if p else "whole disk"
        used = f"{human_bytes(self.size - self.free)} used of {human_bytes(self.size)}"
        how = f", copied whole: {self.whole}" if self.whole else ""
        return f"{kind}, {self.fs or 'unknown'}, {used}{how}"

    def to_info(self) -> dict[str, str | int]:
        p = self.partition
        return {
            "number": p.number if p else 0,
            "type": p.type_name if p else "",
            "start": self.start,
            "size": self.size,
            "fs": self.fs,
            "used": self.size - self.free,
            "whole": self.whole,
        }


@dataclass(frozen=True, slots=True)
class DiskMap:
    size: int
    table: Table
    volumes: tuple[Volume, ...]
    free: Extents  # absolute byte ranges, whole sectors

    @property
    def free_bytes(self) -> int:
        return self.free.total


def scan(read: Read, size: int, sector: int = 0) -> DiskMap:
    """The used map of a disk of ``size`` bytes read through ``read``."""
    table = read_table(read, size, sector)
    if not table.trusted:
        return DiskMap(size, table, (Volume(None, 0, size, "", 0, table.notes[0]),), Extents())
    spans: list[tuple[Partition | None, int, int]] = [
        (p, p.start, p.size) for p in table.partitions
    ] or [(None, 0, size)]
    volumes = []
    free: list[tuple[int, int]] = []
    for part, start, length in spans:
        fsmap = map_volume(_within(read, start), length)
        mine = fsmap.free.clip(0, length).shift(start).shrink_to(SECTOR)
        free += mine.ranges
        volumes.append(Volume(part, start, length, fsmap.fs, mine.total, fsmap.whole))
    extents = Extents.of(free)
    if len(extents) > MAX_FREE_EXTENTS:
        keep = sorted(extents, key=lambda r: r[1] - r[0], reverse=True)[:MAX_FREE_EXTENTS]
        extents = Extents.of(keep)
    return DiskMap(size, table, tuple(volumes), extents)


def _within(read: Read, start: int) -> Read:
    return lambda offset, length: read(start + offset, length)


def map_volume(read: Read, size: int) -> FsMap:
    """One volume's map: its filesystem's, or copied whole with the reason.

    The one place where "this cannot be mapped" becomes "copy it whole" (as bmaptool's
    Filemap picks its mapper): the readers raise :class:`Unsupported` for what they do
    not fully understand, their structures may not parse, and their metadata may not
    read — a failing sector (the rescue then deals with it, exit 7), or an offset past
    the end of the volume (a damaged superblock pointing terabytes away).  A volume
    that cannot be mapped is copied whole, with the reason on the plan line; it never
    stops the run.
    """
    bounded = _bounded(read, size)
    try:
        kind = probe(bounded, size)
    except (Unsupported, OSError, P2PCloneError) as exc:
        return FsMap.copy_whole("", f"its first sectors could not be read ({_why(exc)})")
    reader = _READERS.get(kind)
    if reader is None:
        if kind:
            return FsMap.copy_whole(_NAMES.get(kind, kind), "not read by this version")
        return FsMap.copy_whole("", "no filesystem recognised")
    name = _name(kind, bounded)
    try:
        return reader(bounded, size)
    except Unsupported as exc:
        return FsMap.copy_whole(name, str(exc))
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        # a structure that does not parse: doubtful is used
        return FsMap.copy_whole(name, f"its metadata does not parse ({exc})")
    except (OSError, P2PCloneError) as exc:
        return FsMap.copy_whole(name, f"its metadata could not be read ({_why(exc)})")


def identify(read: Read, size: int) -> str:
    """The filesystem at the start of ``read`` ("ext4", "ntfs", "xfs", … "" if none
    is recognised or it cannot be read): what a tool that changes it must be."""
    bounded = _bounded(read, size)
    try:
        return _name(probe(bounded, size), bounded)
    except (Unsupported, OSError, P2PCloneError, struct.error, ValueError):
        return ""


def _name(kind: str, read: Read) -> str:
    """The filesystem's name for the plan line ("ext4", "vfat", …)."""
    if kind == "ext":
        return ext.name_of(read)
    return {"fat": "vfat"}.get(kind, kind)


def _why(exc: BaseException) -> str:
    if isinstance(exc, P2PCloneError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class _Outside(Unsupported):
    """A read of metadata outside its volume."""


def _bounded(read: Read, size: int) -> Read:
    """``read``, refusing what lies outside the volume's ``size`` bytes: a filesystem's
    metadata is inside its volume, so a pointer out of it is damage, not a place to
    read (and past the disk's end it once stopped the run as a "source changed")."""

    def inside(offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > size:
            raise _Outside(
                f"its metadata points past the end of the volume (at byte {offset} of {size})"
            )
        return read(offset, length)

    return inside
