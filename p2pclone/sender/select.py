"""``--partitions 1,3`` / ``--skip 4``: copy only some partitions (Clonezilla's
saveparts and restoreparts).

The partition table is copied as it is, and so is everything outside the partitions
(boot code, the gap before the first one, an MBR's extended boot records).  The
partitions not chosen are added to the source's free map: never read, never sent,
never written, so the target keeps what it had there.  With ``--exact`` they are
read as zeros instead, and the target gets zeros.  The plan's source map says which
were left out (``skipped``), so the receiver's question, its plan line and
``image info`` say so.
"""

from __future__ import annotations

from collections.abc import Callable

from ..disks import Source
from ..errors import UsageError
from ..image.reader import ImageSource
from ..pipeline import DiskSource
from ..units import human_bytes
from ..volumes import Extents
from ..volumes.table import read_table


def choose_partitions(
    source: DiskSource, partitions: tuple[int, ...], skip: tuple[int, ...], *, zero: bool
) -> None:
    """Leave out of ``source`` the partitions not in ``partitions`` (or those in
    ``skip``): free (not sent), or with ``zero`` (``--exact``) read as zeros.

    Raises:
        UsageError: no partition table, a number the table does not have, or nothing
            left to copy (nothing is read or written).
    """
    if not partitions and not skip:
        return
    option = f"--partitions {_numbers(partitions)}" if partitions else f"--skip {_numbers(skip)}"
    name = str(source.info.get("name", "the source"))
    sector = source.info.get("sector", 0)
    table = read_table(_reader(source), source.size, sector if isinstance(sector, int) else 0)
    if not table.partitions:
        raise UsageError(
            f"{option}: {name} has no partition table to choose from (a filesystem on the "
            "whole disk, or no table at all): leave it out; nothing was done"
        )
    if not table.trusted:
        raise UsageError(
            f"{option}: the partition table of {name} cannot be trusted "
            f"({'; '.join(table.notes)}): copy the whole disk; nothing was done"
        )
    have = {p.number: p for p in table.partitions}
    asked = partitions or skip
    missing = sorted(set(asked) - set(have))
    if missing:
        listing = ", ".join(f"{n} ({p.type_name}, {human_bytes(p.size)})" for n, p in have.items())
        raise UsageError(
            f"{option}: {name} has no partition {_numbers(tuple(missing))}; its partitions "
            f"are {listing}; nothing was done"
        )
    before = {int(n) for n in str(source.info.get("skipped", "")).split(",") if n.isdigit()}
    if partitions and (gone := sorted(before & set(partitions))):
        raise UsageError(
            f"{option}: partition{'s' if len(gone) > 1 else ''} {_numbers(tuple(gone))} "
            f"{'are' if len(gone) > 1 else 'is'} not in this image (left out when it was "
            "saved); nothing was done"
        )
    out = [p for p in table.partitions if (p.number not in asked) == bool(partitions)]
    if {p.number for p in out} | before >= set(have):
        raise UsageError(f"{option} leaves nothing of {name} to copy; nothing was done")
    if not out:
        return
    ranges = Extents.of([(p.start, p.end) for p in out])
    if zero:
        assert isinstance(source, Source), "--exact reads a disk, never an image"
        source.zeroed = source.zeroed.union(ranges)
    else:
        source.free = source.free.union(ranges)
    source.info["skipped"] = _numbers(tuple(sorted(before | {p.number for p in out})))
    source.info["skipped_as"] = "zeros" if zero else "kept"


def _reader(source: DiskSource) -> Callable[[int, int], bytes]:
    """Reads of any range: an image is read a whole chunk at a time (the table's few
    sectors are in its first chunks; each chunk is decoded once)."""
    if not isinstance(source, ImageSource):
        return lambda offset, length: bytes(source.read(offset, length))
    size = source.chunk_size
    chunks: dict[int, bytes] = {}

    def read(offset: int, length: int) -> bytes:
        out = bytearray()
        end = min(offset + length, source.size)
        while offset < end:
            index, rem = divmod(offset, size)
            if index not in chunks:
                start = index * size
                chunks[index] = bytes(source.read(start, min(size, source.size - start)))
            piece = chunks[index][rem : rem + end - offset]
            out += piece
            offset += len(piece)
        return bytes(out)

    return read


def _numbers(numbers: tuple[int, ...]) -> str:
    return ",".join(str(n) for n in numbers)


__all__ = ["choose_partitions"]
