"""A cloned partition table laid out on a larger disk, as asked (``--grow``).

Clonezilla's users know the policies: the largest data partition takes the new space
and the partitions after it (a Windows Recovery partition, a Linux swap in an extended
partition) move to the end of the disk, so they stay last; ``--grow N`` names the
partition instead; ``--proportional`` (Clonezilla's ``-k1``) shares the new space among
every data partition in proportion to its size.  Partitions that are not data — EFI
system, Microsoft reserved, BIOS boot, Windows recovery, swap — keep their size.

:func:`plan_resize` reads the cloned table (GPT: the primary header and array; MBR:
sector 0 and the extended partition's chain) and returns a :class:`Resize`: the
blocks of bytes to move up (last first, so a block never overwrites one not moved
yet), the table's writes, and the partitions grown (their filesystems are grown with
their own tools, disks/grow.py, after the bytes are in place).  Pure, as the rest of
volumes/: it reads through ``read``.  An MBR's extended partition moves as one block —
its boot records and logical partitions inside are addressed relative to it — and a
logical partition grows only when it is the last one of its extended partition.
The new space is rounded down to whole MiB, so moved partitions keep a MiB alignment.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from .fs import Read
from .geometry import GeometryError, relocate_gpt
from .table import _EXTENDED, _GPT_ENTRY, _GPT_HEADER, _MBR_ENTRY, GPT_SIGNATURE

#: GPT types that are not data: kept at their size (moved when they lie after a grown one)
_GPT_NOT_DATA = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",  # EFI system
    "e3c9e316-0b5c-4db8-817d-f92df00215ae",  # Microsoft reserved
    "21686148-6449-6e6f-744e-656564454649",  # BIOS boot
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac",  # Windows recovery
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",  # Linux swap
    "bc13c2ff-59e6-4262-a352-b275fd6f7172",  # Linux extended boot
}
#: MBR types that are not data
_MBR_NOT_DATA = {0x27, 0x82, 0xEF, 0x05, 0x0F, 0x85, 0x12, 0x84, 0xDE}
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Policy:
    """Which partitions take the new space: ``number`` 0 is the largest data partition;
    ``proportional``: every data partition, in proportion to its size."""

    number: int = 0
    proportional: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    """A block of the target to move up: ``length`` bytes from ``start`` to ``to``."""

    number: int  # the partition (an MBR's extended partition: its primary slot)
    start: int
    to: int
    length: int


@dataclass(frozen=True, slots=True)
class Grown:
    """A partition that grew: its number, where it now starts, its new size."""

    number: int
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class Resize:
    moves: tuple[Move, ...]  # in the order to make them (the highest first)
    writes: tuple[tuple[int, bytes], ...]  # the table, after the moves
    grown: tuple[Grown, ...]


class ResizeError(GeometryError):
    """The layout cannot be resized as asked (a sentence fragment saying why)."""


@dataclass
class _Part:
    number: int
    first: int  # sectors
    last: int  # inclusive
    data: bool
    growth: int = 0
    shift: int = 0


def plan_resize(read: Read, old_size: int, new_size: int, sector: int, policy: Policy) -> Resize:
    """The resize of the table read through ``read`` from a disk of ``old_size`` bytes
    to ``new_size`` bytes (larger), as ``policy`` says.

    Raises:
        ResizeError: nothing can take the space (no data partition, an unknown number,
            a logical partition that is not its extended partition's last), or a table
            that cannot be read.
    """
    head = read(sector, sector)
    if head[:8] == GPT_SIGNATURE:
        return _gpt(read, old_size, new_size, sector, policy)
    return _mbr(read, old_size, new_size, sector, policy)


def _share(parts: list[_Part], extra: int, policy: Policy, align: int) -> None:
    """Set each part's growth, and the shift of each (sorted) part after a grown one."""
    if policy.proportional:
        data = [p for p in parts if p.data]
        if not data:
            raise ResizeError("the disk has no data partition to grow")
        total = sum(p.last - p.first + 1 for p in data)
        for p in data:
            p.growth = extra * (p.last - p.first + 1) // total // align * align
    else:
        chosen = _chosen(parts, policy.number)
        chosen.growth = extra
    shift = 0
    for p in sorted(parts, key=lambda q: q.first):
        p.shift = shift
        shift += p.growth


def _chosen(parts: list[_Part], number: int) -> _Part:
    if number:
        for p in parts:
            if p.number == number:
                return p
        raise ResizeError(f"the disk has no partition {number}")
    data = [p for p in parts if p.data]
    if not data:
        raise ResizeError(
            "the disk has no data partition to grow (only system, reserved, recovery or "
            "swap ones): name one with --grow N"
        )
    return max(data, key=lambda p: (p.last - p.first, -p.first))


# -- GPT ------------------------------------------------------------------------------------


def _gpt(read: Read, old_size: int, new_size: int, sector: int, policy: Policy) -> Resize:
    raw = read(sector, sector)
    hdr = _GPT_HEADER.unpack_from(raw)
    entries_lba, count, entry_size = hdr[10], hdr[11], hdr[12]
    array = read(entries_lba * sector, count * entry_size)
    parts = []
    for k in range(count):
        type_guid, _u, first, last, _a, _n = _GPT_ENTRY.unpack_from(array, k * entry_size)
        if type_guid != bytes(16):
            parts.append(_Part(k + 1, first, last, _guid(type_guid) not in _GPT_NOT_DATA))
    if not parts:
        raise ResizeError("the disk's GPT has no partitions")
    array_sectors = -(-count * entry_size // sector)
    new_last_usable = new_size // sector - 2 - array_sectors
    align = max(1, _MIB // sector)
    # All the space after the last partition, the old disk's unpartitioned end
    # included: the partitions after the grown one end at the new end.
    extra = (new_last_usable - max(p.last for p in parts)) // align * align
    if extra <= 0:
        return Resize((), tuple(relocate_gpt(read, old_size, new_size, sector)), ())
    _share(parts, extra, policy, align)

    def edit(array: bytearray, count: int, entry_size: int, last_usable: int) -> None:
        for p in parts:
            at = (p.number - 1) * entry_size
            struct.pack_into("<QQ", array, at + 32, p.first + p.shift,
                             p.last + p.shift + p.growth)  # fmt: skip

    writes = relocate_gpt(read, old_size, new_size, sector, edit=edit)
    return Resize(_moves(parts, sector), tuple(writes), _grown(parts, sector))


def _guid(raw: bytes) -> str:
    a, b, c = struct.unpack_from("<IHH", raw)
    return f"{a:08x}-{b:04x}-{c:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


def _moves(parts: list[_Part], sector: int) -> tuple[Move, ...]:
    moved = [p for p in parts if p.shift]
    return tuple(
        Move(
            p.number,
            p.first * sector,
            (p.first + p.shift) * sector,
            (p.last - p.first + 1) * sector,
        )  # fmt: skip
        for p in sorted(moved, key=lambda q: q.first, reverse=True)
    )


def _grown(parts: list[_Part], sector: int) -> tuple[Grown, ...]:
    return tuple(
        Grown(p.number, (p.first + p.shift) * sector, (p.last - p.first + 1 + p.growth) * sector)
        for p in sorted(parts, key=lambda q: q.first)
        if p.growth
    )


# -- MBR ------------------------------------------------------------------------------------


def _mbr(read: Read, old_size: int, new_size: int, sector: int, policy: Policy) -> Resize:
    mbr = bytearray(read(0, 512))
    if mbr[510:512] != b"\x55\xaa":
        raise ResizeError("the disk has neither a GPT nor an MBR to resize")
    units: list[_Part] = []  # primaries; an extended partition is one unit
    extended: tuple[_Part, list[tuple[int, _Part]]] | None = None
    for k in range(4):
        _st, _c, ptype, _c2, first, count = _MBR_ENTRY.unpack_from(mbr, 446 + 16 * k)
        if not ptype or not count:
            continue
        unit = _Part(k + 1, first, first + count - 1, ptype not in _MBR_NOT_DATA)
        units.append(unit)
        if ptype in _EXTENDED:
            logicals = _logical_ebrs(read, sector, first, count)
            extended = (unit, logicals)
            if logicals:  # it moves as one block: its contents, not its free end
                unit.last = max(p.last for _e, p in logicals)
    if not units:
        raise ResizeError("the disk's MBR has no partitions")
    max_sectors = min(new_size // sector, 0xFFFFFFFF)  # an MBR counts in 32 bits
    align = max(1, _MIB // sector)
    extra = (max_sectors - 1 - max(u.last for u in units)) // align * align
    if extra <= 0:
        return Resize((), (), ())
    logical = None
    if extended is not None and not policy.proportional:
        logical = _logical_choice(extended, units, policy)
    if logical is not None:
        container, (ebr, part) = logical
        container.growth = part.growth = extra
        shift = 0
        for u in sorted(units, key=lambda q: q.first):
            u.shift, shift = shift, shift + u.growth
    else:
        if extended is not None and policy.proportional and any(p.data for _e, p in extended[1]):
            raise ResizeError(
                "--proportional on an MBR disk grows primary partitions only, and this one "
                "has data in logical partitions: grow one with --grow N"
            )
        _share(units, extra, policy, align)
    for u in units:
        at = 446 + 16 * (u.number - 1)
        struct.pack_into("<3s", mbr, at + 1, b"\xfe\xff\xff")  # CHS: LBA only
        struct.pack_into("<3s", mbr, at + 5, b"\xfe\xff\xff")
        struct.pack_into("<II", mbr, at + 8, u.first + u.shift, u.last - u.first + 1 + u.growth)
    writes: list[tuple[int, bytes]] = [(0, bytes(mbr))]
    grown = list(_grown(units, sector))
    if logical is not None:
        container, (ebr, part) = logical
        raw = bytearray(read(ebr * sector, 512))
        rel, count = struct.unpack_from("<II", raw, 446 + 8)
        struct.pack_into("<I", raw, 446 + 12, count + extra)
        # the EBR moves with its extended partition, if that moves
        writes.append(((ebr + container.shift) * sector, bytes(raw)))
        grown = [
            Grown(part.number, (ebr + rel + container.shift) * sector, (count + extra) * sector)
        ]
    return Resize(_moves(units, sector), tuple(writes), tuple(grown))


def _logical_ebrs(read: Read, sector: int, first: int, count: int) -> list[tuple[int, _Part]]:
    """(the EBR's sector, the logical partition it holds), in chain order."""
    out: list[tuple[int, _Part]] = []
    ebr, seen = first, set()
    while first <= ebr < first + count and ebr not in seen and len(out) < 128:
        seen.add(ebr)
        raw = read(ebr * sector, 512)
        if raw[510:512] != b"\x55\xaa":
            raise ResizeError("an extended boot record is damaged")
        _s, _c, ptype, _c2, rel, n = _MBR_ENTRY.unpack_from(raw, 446)
        _s, _c, ntype, _c2, nrel, _nn = _MBR_ENTRY.unpack_from(raw, 462)
        if ptype and n:
            out.append(
                (ebr, _Part(5 + len(out), ebr + rel, ebr + rel + n - 1, ptype not in _MBR_NOT_DATA))
            )
        if ntype not in _EXTENDED or not nrel:
            break
        ebr = first + nrel
    return out


def _logical_choice(
    extended: tuple[_Part, list[tuple[int, _Part]]], units: list[_Part], policy: Policy
) -> tuple[_Part, tuple[int, _Part]] | None:
    """The logical partition to grow (with its extended partition and its EBR), or None
    when the one to grow is a primary."""
    container, logicals = extended
    everyone = [u for u in units if u is not container] + [p for _e, p in logicals]
    chosen = _chosen(everyone, policy.number)
    found = next(((e, p) for e, p in logicals if p is chosen), None)
    if found is None:
        return None
    if found[1] is not max((p for _e, p in logicals), key=lambda p: p.first):
        raise ResizeError(
            f"partition {chosen.number} is a logical partition with others after it in "
            "its extended partition: p2pclone grows only the last logical partition; name "
            "another with --grow N"
        )
    return container, found


def check_policy(info: Mapping[str, object], policy: Policy) -> None:
    """Check ``policy`` against a source's layout as its plan describes it
    (volumes/layout.py: ``layout``, ``start<n>``, ``end<n>``, ``type<n>``), before
    anything is written: what :func:`plan_resize` would refuse after the clone.

    Raises:
        ResizeError: no partition table, no such partition, no data partition to grow,
            a logical partition that is not its extended partition's last, or
            ``--proportional`` over logical partitions.
    """
    layout = info.get("layout")
    if layout not in ("gpt", "mbr"):
        raise ResizeError(
            "the source has no partition table (a filesystem on the whole disk): there is "
            "no partition to grow; grow its filesystem with its own tool after the clone"
        )
    parts = []
    for key, start in info.items():
        n = key[5:]
        end, kind = info.get(f"end{n}"), info.get(f"type{n}")
        if not (key.startswith("start") and n.isdigit() and isinstance(start, int)):
            continue
        if isinstance(end, int) and isinstance(kind, str):
            parts.append(_Part(int(n), start, end - 1, _is_data(kind)))
    if not parts:
        raise ResizeError("the source's plan does not describe its partitions")
    logicals = [p for p in parts if layout == "mbr" and p.number >= 5]
    if policy.proportional:
        if any(p.data for p in logicals):
            raise ResizeError(
                "--proportional on an MBR disk grows primary partitions only, and this one "
                "has data in logical partitions: grow one with --grow N"
            )
        if not any(p.data for p in parts):
            raise ResizeError("the disk has no data partition to grow")
        return
    chosen = _chosen(parts, policy.number)
    if chosen in logicals and chosen is not max(logicals, key=lambda p: p.first):
        raise ResizeError(
            f"partition {chosen.number} is a logical partition with others after it in "
            "its extended partition: p2pclone grows only the last logical partition; name "
            "another with --grow N"
        )


def _is_data(kind: str) -> bool:
    if kind.startswith("0x"):
        return int(kind, 16) not in _MBR_NOT_DATA
    return kind not in _GPT_NOT_DATA


__all__ = [
    "Grown",
    "Move",
    "Policy",
    "Resize",
    "ResizeError",
    "check_policy",
    "plan_resize",
]
