"""A cloned GPT fitted to a target of another size: the backup moved to the new end.
(What grows or moves on a larger disk is volumes/resize.py's.)

A GPT keeps a backup header in the disk's last sector and a backup partition array
just before it, and both headers name each other's place and the last usable sector.
Cloned onto a bigger disk, the backup sits in the middle and ``sgdisk -v`` reports a
damaged table; onto a smaller one, it is cut off.  ``relocate_gpt`` returns the
writes that make the table right for the new size: the primary header (its backup's
place, the last usable sector, its CRC), a new backup array and header at the end,
the protective MBR's size, and zeros over the old backup header if it is still on
the disk.  Pure: it reads through ``read`` and returns ``(offset, bytes)`` pairs.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from .fs import Read
from .table import _GPT_ENTRY, _GPT_HEADER, GPT_SIGNATURE

_PROTECTIVE = 0xEE


class GeometryError(Exception):
    """The table cannot be fitted (the message says why, as a sentence fragment)."""


#: edits a GPT's partition array in place, given (array, entries, entry size, the new
#: last usable LBA); the table is then checked and sealed around what it made
EditArray = Callable[[bytearray, int, int, int], None]


def relocate_gpt(
    read: Read,
    old_size: int,
    new_size: int,
    sector: int,
    *,
    edit: EditArray | None = None,
    disk_guid: bytes | None = None,
) -> list[tuple[int, bytes]]:
    """The writes that fit the GPT read through ``read`` (a disk that was ``old_size``
    bytes) to a disk of ``new_size`` bytes; ``edit`` changes the partitions first (a
    resize, volumes/resize.py; new partition GUIDs, volumes/identity.py), and
    ``disk_guid`` (16 bytes, as stored) replaces the disk's GUID in both headers.

    Raises:
        GeometryError: no primary GPT, a damaged array, or a partition past the new end.
    """
    raw = bytearray(read(sector, sector))
    if raw[:8] != GPT_SIGNATURE:
        raise GeometryError("the primary GPT header is missing")
    hdr = list(_GPT_HEADER.unpack_from(raw))
    hsize, entries_lba, count, entry_size = hdr[2], hdr[10], hdr[11], hdr[12]
    array_bytes = count * entry_size
    array = bytearray(read(entries_lba * sector, array_bytes))
    if zlib.crc32(array) != hdr[13]:
        raise GeometryError("the primary GPT partition array fails its CRC")
    sectors = new_size // sector
    array_sectors = -(-array_bytes // sector)
    backup_lba = sectors - 1
    backup_array_lba = backup_lba - array_sectors
    last_usable = backup_array_lba - 1
    if edit is not None:
        edit(array, count, entry_size, last_usable)
    for k in range(count):
        type_guid, _u, _first, last, _a, _n = _GPT_ENTRY.unpack_from(array, k * entry_size)
        if type_guid != bytes(16) and last > last_usable:
            raise GeometryError(
                f"partition {k + 1} ends at byte {(last + 1) * sector}, beyond the last "
                f"usable byte {(last_usable + 1) * sector} of a {new_size}-byte disk"
            )
    hdr[6], hdr[8], hdr[13] = backup_lba, last_usable, zlib.crc32(array)  # alternate, last usable
    if disk_guid is not None:
        hdr[9] = disk_guid
    primary = _sealed(hdr, raw, hsize)
    hdr[5], hdr[6], hdr[10] = backup_lba, 1, backup_array_lba  # backup: mine, other, array
    backup = _sealed(hdr, bytearray(sector), hsize)
    padded = bytes(array) + bytes(array_sectors * sector - array_bytes)
    writes = [
        (sector, primary),
        (entries_lba * sector, padded),
        (backup_array_lba * sector, padded),
        (backup_lba * sector, backup),
    ]
    old_backup = old_size // sector - 1
    if old_backup < sectors and old_backup != backup_lba and old_backup > entries_lba:
        writes.append((old_backup * sector, bytes(sector)))
    mbr = _protective_mbr(read(0, 512), sectors)
    if mbr is not None:
        writes.append((0, mbr))
    return writes


def _sealed(hdr: list[int | bytes], base: bytearray, hsize: int) -> bytes:
    out = bytearray(base)
    hdr[3] = 0
    _GPT_HEADER.pack_into(out, 0, *hdr)
    out[hsize:] = bytes(len(out) - hsize)  # the rest of the sector is reserved: zeros
    struct.pack_into("<I", out, 16, zlib.crc32(out[:hsize]))
    return bytes(out)


def _protective_mbr(mbr: bytes, sectors: int) -> bytes | None:
    """Sector 0 with its 0xEE entry sized to the new disk (a hybrid MBR's other
    entries kept as they are), or None when it has none."""
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    out = bytearray(mbr)
    for k in range(4):
        at = 446 + 16 * k
        if out[at + 4] == _PROTECTIVE:
            first = struct.unpack_from("<I", out, at + 8)[0]
            struct.pack_into("<I", out, at + 12, min(sectors - first, 0xFFFFFFFF))
            return bytes(out)
    return None
