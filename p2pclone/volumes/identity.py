"""New identities for a cloned partition table (``--new-ids``): the GPT's disk GUID and
every partition's unique GUID (both headers and both arrays, their CRCs sealed again),
or the MBR's disk signature.

A clone carries its source's IDs, and a second disk with the same IDs confuses the
machine it shares: Windows takes the colliding disk offline, Linux mounts by
``PARTUUID`` whichever it finds first.  The filesystems' own IDs are changed by their
own tools (disks/identity.py); the table's are ours to write, because the table reader
and writer are ours (volumes/table.py, volumes/geometry.py).

Pure: reads through ``read`` and returns ``(offset, bytes)`` writes, with the old and
new names as Linux spells them (``PARTUUID=``), so that references can be rewritten.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .fs import Read
from .geometry import GeometryError, relocate_gpt
from .table import _GPT_ENTRY, _GPT_HEADER, GPT_SIGNATURE, read_table

#: where an MBR keeps its 32-bit disk signature
MBR_SIGNATURE = 440


@dataclass(frozen=True, slots=True)
class TableIds:
    """What giving a table new IDs writes, and what it renamed."""

    writes: tuple[tuple[int, bytes], ...]
    #: old → new, as ``blkid`` prints them: the GPT's disk GUID and each ``PARTUUID``
    #: (GPT: the partition's GUID; MBR: ``SIGNATURE-NN``)
    renamed: dict[str, str] = field(default_factory=dict)
    #: one phrase: "the GPT's disk GUID and 4 partition GUIDs"
    said: str = ""


def new_table_ids(
    read: Read, size: int, sector: int, random: Callable[[int], bytes] = os.urandom
) -> TableIds:
    """New IDs for the table read through ``read`` (a disk of ``size`` bytes, logical
    sectors of ``sector`` bytes); nothing to write for a disk with no table.

    Raises:
        GeometryError: the GPT's primary header or array is damaged (nothing written).
    """
    table = read_table(read, size, sector)
    if table.scheme == "gpt":
        return _gpt(read, size, table.sector, random)
    if table.scheme == "mbr":
        return _mbr(read, [p.number for p in table.partitions], random)
    return TableIds(())


def _gpt(read: Read, size: int, sector: int, random: Callable[[int], bytes]) -> TableIds:
    raw = read(sector, sector)
    if raw[:8] != GPT_SIGNATURE:
        raise GeometryError("the primary GPT header is missing")
    old_disk = _GPT_HEADER.unpack_from(raw)[9]
    new_disk = _guid_bytes(random)
    renamed = {_name(old_disk): _name(new_disk)}
    count = 0

    def edit(array: bytearray, entries: int, entry_size: int, _last_usable: int) -> None:
        nonlocal count
        for k in range(entries):
            at = k * entry_size
            type_guid, unique, *_rest = _GPT_ENTRY.unpack_from(array, at)
            if type_guid == bytes(16):
                continue
            fresh = _guid_bytes(random)
            array[at + 16 : at + 32] = fresh
            renamed[_name(unique)] = _name(fresh)
            count += 1

    writes = relocate_gpt(read, size, size, sector, edit=edit, disk_guid=new_disk)
    said = f"the GPT's disk GUID and {count} partition GUID{'s' if count != 1 else ''}"
    return TableIds(tuple(writes), renamed, said)


def _mbr(read: Read, numbers: list[int], random: Callable[[int], bytes]) -> TableIds:
    head = bytearray(read(0, 512))
    old = struct.unpack_from("<I", head, MBR_SIGNATURE)[0]
    new = old
    while new in (old, 0):  # 0 means "none" to Windows, which then writes its own
        new = struct.unpack("<I", random(4))[0]
    struct.pack_into("<I", head, MBR_SIGNATURE, new)
    renamed = {f"{old:08x}": f"{new:08x}"}
    renamed.update({f"{old:08x}-{n:02x}": f"{new:08x}-{n:02x}" for n in numbers})
    return TableIds(((0, bytes(head)),), renamed, f"the MBR's disk signature (0x{new:08x})")


def _guid_bytes(random: Callable[[int], bytes]) -> bytes:
    """A random (version 4) GUID as a GPT stores it."""
    return uuid.UUID(bytes=random(16), version=4).bytes_le


def _name(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


__all__ = ["MBR_SIGNATURE", "TableIds", "new_table_ids"]
