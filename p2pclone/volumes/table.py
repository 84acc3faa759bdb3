"""Partition tables read in user space: GPT (both copies, CRC-checked), MBR with its
chain of extended boot records, or none (a filesystem on the whole disk).

Pure functions over ``read(offset, length) -> bytes``: nothing here needs the
kernel's ``/dev/sdXN`` or ``/dev/loopNpM`` nodes, which some kernels never create for
loop devices.  Offsets and sizes are bytes.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Read = Callable[[int, int], bytes]

GPT_SIGNATURE = b"EFI PART"
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_EXTENDED = {0x05, 0x0F, 0x85}
_PROTECTIVE = 0xEE
#: a partition array larger than this is not a real one (128 x 128 bytes = 16 KiB)
_MAX_ARRAY = 1 << 20
_MAX_LOGICAL = 128

#: GPT type GUIDs we name (lower case); anything else is shown as its GUID
GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "LUKS",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux /home",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
}
MBR_TYPES = {
    0x01: "FAT12",
    0x04: "FAT16",
    0x06: "FAT16",
    0x07: "NTFS/exFAT",
    0x0B: "FAT32",
    0x0C: "FAT32 (LBA)",
    0x0E: "FAT16 (LBA)",
    0x27: "Windows recovery",
    0x82: "Linux swap",
    0x83: "Linux",
    0x8E: "Linux LVM",
    0xEF: "EFI system",
    0xFD: "Linux RAID",
}


#: how the plan line and ``image info`` name a table's scheme
SCHEME_NAMES = {"gpt": "GPT", "mbr": "MBR", "none": "no partition table"}


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # as the kernel would number it (MBR logicals from 5)
    start: int
    size: int
    type: str  # a GPT type GUID, or an MBR type byte as "0x83"
    name: str = ""  # the GPT partition name

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def type_name(self) -> str:
        if self.type.startswith("0x"):
            return MBR_TYPES.get(int(self.type, 16), f"type {self.type}")
        return GPT_TYPES.get(self.type, self.type)


@dataclass(frozen=True, slots=True)
class GptGeometry:
    """Where a GPT's parts lie, for relocating the backup onto another disk size."""

    sector: int
    entries_lba: int  # the primary array
    entries: int
    entry_size: int
    first_usable: int
    last_usable: int
    backup_lba: int  # as the primary header says


@dataclass(frozen=True, slots=True)
class Table:
    scheme: str  # "gpt", "mbr" or "none"
    sector: int
    partitions: tuple[Partition, ...] = ()
    #: what was wrong and what was done about it, one sentence each
    notes: tuple[str, ...] = ()
    #: the ranges the table itself occupies (headers, arrays, EBRs)
    metadata: tuple[tuple[int, int], ...] = ()
    gpt: GptGeometry | None = None
    #: false when the table could not be trusted: copy the whole disk
    trusted: bool = True


def read_table(read: Read, size: int, sector: int = 0) -> Table:
    """The partition table of a disk of ``size`` bytes.

    ``sector`` is the logical sector size when known (a block device); for a file, 0:
    a GPT is looked for at 512 and at 4096 bytes.  Never raises for bad contents: a
    table that cannot be trusted comes back with ``trusted=False`` and a note.
    """
    head = read(0, min(size, 512))
    mbr = _mbr_entries(head)
    if mbr is not None and any(t == _PROTECTIVE for t, _s, _n in mbr):
        for sec in [sector] if sector else [512, 4096]:
            table = _read_gpt(read, size, sec)
            if table is not None:
                return table
        return Table(
            "gpt",
            sector or 512,
            notes=(
                "both GPT headers are damaged (the disk has a protective MBR): "
                "the whole disk is copied",
            ),
            trusted=False,
        )
    if mbr is None:
        return Table("none", sector or 512)
    return _read_mbr(read, size, sector or 512, mbr)


# -- GPT ---------------------------------------------------------------------------------


def _gpt_header(read: Read, size: int, lba: int, sector: int) -> tuple[Any, ...] | None:
    if lba <= 0 or (lba + 1) * sector > size:
        return None
    raw = read(lba * sector, sector)
    if len(raw) < _GPT_HEADER.size or raw[:8] != GPT_SIGNATURE:
        return None
    hdr = _GPT_HEADER.unpack_from(raw)
    hsize = hdr[2]
    if not 92 <= hsize <= sector:
        return None
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hdr[3] or hdr[5] != lba:
        return None
    return hdr


def _gpt_array(read: Read, size: int, hdr: tuple[Any, ...], sector: int) -> bytes | None:
    entries_lba, count, entry_size, crc = hdr[10], hdr[11], hdr[12], hdr[13]
    total = count * entry_size
    if entry_size < 128 or entry_size % 8 or total > _MAX_ARRAY:
        return None
    if entries_lba * sector + total > size:
        return None
    array = read(entries_lba * sector, total)
    if len(array) != total or zlib.crc32(array) != crc:
        return None
    return array


def _read_gpt(read: Read, size: int, sector: int) -> Table | None:
    notes = []
    primary = _gpt_header(read, size, 1, sector)
    array = _gpt_array(read, size, primary, sector) if primary else None
    backup_lba = primary[6] if primary else size // sector - 1
    backup = _gpt_header(read, size, backup_lba, sector)
    backup_array = _gpt_array(read, size, backup, sector) if backup else None
    if primary is None and backup is None:
        return None  # not a GPT of this sector size (the caller tries the other)
    hdr, entries = primary, array
    if primary is None or array is None:
        if backup is None or backup_array is None:
            return _bad_gpt(sector, "both")
        notes.append(
            "the primary GPT is damaged (bad CRC); the backup at the end of the disk "
            "is valid and was used"
        )
        hdr, entries = backup, backup_array
    elif backup is None or backup_array is None:
        notes.append("the backup GPT at the end of the disk is damaged; the primary was used")
    assert hdr is not None and entries is not None
    first_usable, last_usable = hdr[7], hdr[8]
    parts = []
    for k in range(hdr[11]):
        type_guid, _uniq, first, last, _attrs, name = _GPT_ENTRY.unpack_from(entries, k * hdr[12])
        if type_guid == bytes(16):
            continue
        if last < first or first < first_usable or last > last_usable:
            return _bad_gpt(sector, f"entry {k + 1} lies outside the usable area")
        parts.append(
            Partition(
                number=k + 1,
                start=first * sector,
                size=(last - first + 1) * sector,
                type=str(uuid.UUID(bytes_le=type_guid)),
                name=name.decode("utf-16-le", "replace").split("\0", 1)[0],
            )
        )
    array_bytes = hdr[11] * hdr[12]
    primary_lba = primary[10] if primary else 2
    backup_entries = backup[10] if backup else (size // sector - 1) - -(-array_bytes // sector)
    metadata = [
        (0, sector),  # protective MBR
        (sector, 2 * sector),
        (primary_lba * sector, primary_lba * sector + array_bytes),
        (backup_entries * sector, backup_entries * sector + array_bytes),
        (backup_lba * sector, (backup_lba + 1) * sector),
    ]
    geometry = GptGeometry(
        sector=sector,
        entries_lba=primary_lba,
        entries=hdr[11],
        entry_size=hdr[12],
        first_usable=first_usable,
        last_usable=last_usable,
        backup_lba=backup_lba,
    )
    return Table(
        "gpt",
        sector,
        tuple(sorted(parts, key=lambda p: p.start)),
        tuple(notes),
        tuple(metadata),
        geometry,
    )


def _bad_gpt(sector: int, what: str) -> Table:
    why = "both GPT headers are damaged" if what == "both" else f"the GPT is inconsistent ({what})"
    return Table("gpt", sector, notes=(f"{why}: the whole disk is copied",), trusted=False)


# -- MBR ---------------------------------------------------------------------------------


def _mbr_entries(sector0: bytes) -> list[tuple[int, int, int]] | None:
    """``(type, first LBA, sectors)`` of the four primary entries, or None when sector 0
    is no MBR (no 0x55AA, or a filesystem boot sector rather than a table)."""
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return None
    out = []
    for k in range(4):
        status, _chs, ptype, _chs2, first, count = _MBR_ENTRY.unpack_from(sector0, 446 + 16 * k)
        if status not in (0x00, 0x80):
            return None  # boot code where the table would be: a filesystem's boot sector
        out.append((ptype, first, count))
    if not any(t for t, _f, n in out if n):
        return None
    if _looks_like_boot_sector(sector0):
        return None
    return out


def _looks_like_boot_sector(sector0: bytes) -> bool:
    """FAT and NTFS boot sectors end in 0x55AA too; their OEM field and BPB give them away."""
    oem = sector0[3:11]
    if oem in (b"NTFS    ", b"EXFAT   "):
        return True
    bytes_per_sector = int.from_bytes(sector0[11:13], "little")
    return (
        sector0[0] in (0xEB, 0xE9)
        and bytes_per_sector in (512, 1024, 2048, 4096)
        and (sector0[54:59] == b"FAT12" or sector0[54:59] == b"FAT16" or sector0[82:87] == b"FAT32")
    )


def _read_mbr(read: Read, size: int, sector: int, entries: list[tuple[int, int, int]]) -> Table:
    parts: list[Partition] = []
    metadata = [(0, sector)]
    notes: list[str] = []
    for k, (ptype, first, count) in enumerate(entries):
        if not ptype or not count:
            continue
        if (first + count) * sector > size:
            notes.append(f"MBR partition {k + 1} ends beyond the disk: the whole disk is copied")
            return Table("mbr", sector, notes=tuple(notes), trusted=False)
        if ptype in _EXTENDED:
            logical, ebrs, why = _logicals(read, size, sector, first, count)
            metadata += ebrs
            if why:
                return Table(
                    "mbr", sector, notes=(f"{why}: the whole disk is copied",), trusted=False
                )
            parts += logical
        else:
            parts.append(Partition(k + 1, first * sector, count * sector, f"0x{ptype:02x}"))
    ordered = sorted(parts, key=lambda p: p.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.end:
            return Table(
                "mbr",
                sector,
                notes=(f"partitions {a.number} and {b.number} overlap: the whole disk is copied",),
                trusted=False,
            )
    return Table("mbr", sector, tuple(ordered), tuple(notes), tuple(metadata))


def _logicals(
    read: Read, size: int, sector: int, ext_first: int, ext_count: int
) -> tuple[list[Partition], list[tuple[int, int]], str]:
    """Follow the extended partition's chain of EBRs."""
    parts: list[Partition] = []
    ebrs: list[tuple[int, int]] = []
    seen: set[int] = set()
    ebr = ext_first
    while len(parts) < _MAX_LOGICAL:
        if ebr in seen or not ext_first <= ebr < ext_first + ext_count:
            return (
                parts,
                ebrs,
                "the extended partition's chain loops or leaves it",
            )
        seen.add(ebr)
        raw = read(ebr * sector, 512)
        if raw[510:512] != b"\x55\xaa":
            return parts, ebrs, "an extended boot record is damaged"
        ebrs.append((ebr * sector, ebr * sector + sector))
        _s, _c, ptype, _c2, first, count = _MBR_ENTRY.unpack_from(raw, 446)
        _s, _c, ntype, _c2, nfirst, _ncount = _MBR_ENTRY.unpack_from(raw, 462)
        if ptype and count:
            start = ebr + first
            if start + count > ext_first + ext_count or (start + count) * sector > size:
                return (
                    parts,
                    ebrs,
                    "a logical partition ends beyond its extended partition",
                )
            parts.append(
                Partition(5 + len(parts), start * sector, count * sector, f"0x{ptype:02x}")
            )
        if ntype not in _EXTENDED or not nfirst:
            return parts, ebrs, ""
        ebr = ext_first + nfirst
    return parts, ebrs, "more than 128 logical partitions"
