"""Byte ranges as sorted, disjoint, merged ``(start, end)`` pairs (end exclusive).

The used map is built from these: each filesystem reader returns its *free* ranges,
and the disk's used map is everything outside them.  Bitmaps are turned into ranges
with a regular expression over whole bytes of 0x00 / 0xFF first (a bitmap of a real
filesystem is long runs of both), so a 32 GiB ext4 bitmap of 8 M bits costs
milliseconds, not a Python loop per bit.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_RUNS = re.compile(rb"\x00+|\xff+")


@dataclass(frozen=True, slots=True)
class Extents:
    """Sorted, disjoint, non-adjacent half-open ranges ``[start, end)``."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> Extents:
        """Any ranges (unsorted, overlapping, empty ones) -> merged extents."""
        out: list[tuple[int, int]] = []
        for start, end in sorted(r for r in ranges if r[1] > r[0]):
            if out and start <= out[-1][1]:
                if end > out[-1][1]:
                    out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return cls(tuple(out))

    @property
    def total(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def shift(self, by: int) -> Extents:
        return Extents(tuple((s + by, e + by) for s, e in self.ranges))

    def union(self, other: Extents) -> Extents:
        return Extents.of(self.ranges + other.ranges)

    def clip(self, start: int, end: int) -> Extents:
        """The parts inside ``[start, end)``."""
        return Extents(
            tuple(
                (max(s, start), min(e, end))
                for s, e in self.ranges[self._first(start) :]
                if s < end and max(s, start) < min(e, end)
            )
        )

    def invert(self, start: int, end: int) -> Extents:
        """What of ``[start, end)`` these extents do not cover."""
        out = []
        pos = start
        for s, e in self.clip(start, end):
            if s > pos:
                out.append((pos, s))
            pos = e
        if pos < end:
            out.append((pos, end))
        return Extents(tuple(out))

    def subtract(self, other: Extents) -> Extents:
        """What of these extents ``other`` does not cover."""
        return Extents(tuple(r for s, e in self.ranges for r in other.invert(s, e)))

    def shrink_to(self, unit: int) -> Extents:
        """Each range cut inwards to whole ``unit``-aligned blocks (free ranges shrink,
        so nothing used is ever rounded into them)."""
        return Extents.of((-(-s // unit) * unit, e // unit * unit) for s, e in self.ranges)

    def find(self, offset: int) -> tuple[int, int] | None:
        """The range holding byte ``offset``, if any."""
        i = bisect_right(self.ranges, offset, key=lambda r: r[0]) - 1
        if i >= 0 and self.ranges[i][1] > offset:
            return self.ranges[i]
        return None

    def _first(self, offset: int) -> int:
        """Index of the first range that may end after ``offset``."""
        i = bisect_right(self.ranges, (offset, offset)) - 1
        return max(i, 0)


def bitmap_runs(bits: bytes | memoryview, nbits: int, *, value: int) -> Iterator[tuple[int, int]]:
    """``(first, end)`` bit numbers of the runs of bits equal to ``value`` (0 or 1) among
    the first ``nbits`` of ``bits``; bit ``k`` is bit ``k % 8`` (LSB first) of byte
    ``k // 8``, as ext2/3/4, NTFS and exFAT store their allocation bitmaps."""
    data = bytes(bits[: -(-nbits // 8)])
    start = -1
    for first, _end, hit in _pieces(data, 0xFF if value else 0x00, value):
        if hit and start < 0:
            start = first
        elif not hit and start >= 0:
            yield start, min(first, nbits)
            start = -1
    if start >= 0 and start < nbits:
        yield start, min(len(data) * 8, nbits)


def _pieces(data: bytes, full: int, value: int) -> Iterator[tuple[int, int, bool]]:
    """The bitmap as ``(first bit, end bit, equals value)`` pieces: whole-byte runs in
    one piece each, the mixed bytes between them bit by bit."""
    pos = 0
    for m in _RUNS.finditer(data):
        yield from _bits(data, pos, m.start(), value)
        yield m.start() * 8, m.end() * 8, data[m.start()] == full
        pos = m.end()
    yield from _bits(data, pos, len(data), value)


def _bits(data: bytes, first: int, end: int, value: int) -> Iterator[tuple[int, int, bool]]:
    for i in range(first, end):
        byte = data[i]
        for b in range(8):
            yield i * 8 + b, i * 8 + b + 1, ((byte >> b) & 1) == value
