"""Narrowing down an area of a failing disk, as GNU ddrescue does (issue 15's core).

A read of a whole chunk failed somewhere inside ``[start, end)``.  ``rescue_area``
finds out what still reads, touching the bad part as little as possible:

1. **trim** from the front, one sector at a time, up to the first sector that fails;
2. **trim** from the back, one sector at a time, down to the last one that fails;
3. **scrape** the sectors between the two, each read once;
4. **retry** the sectors that failed, ``retries`` times each (0: never read a failed
   sector again in this run).

Every read is one logical sector, through :class:`DirectReader` (``O_DIRECT``, an
aligned buffer), so the kernel's read-ahead cannot turn one request into many failed
ones.  The area function takes any ``read(offset, length)`` that raises ``OSError`` on a
media error, so it is tested on a real failing device and on plain functions alike.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..volumes.extents import Extents

#: errors a failing medium gives (not a programming error or a vanished device)
MEDIA_ERRORS = {errno.EIO, errno.ENODATA, errno.EILSEQ, errno.EREMOTEIO, errno.ETIMEDOUT}


@dataclass(frozen=True)
class RescueOptions:
    """How a failing source is read (``--retries``, ``--read-timeout``)."""

    retries: int = 1  # extra reads of each sector that failed
    read_timeout: float = 10.0  # seconds before a read that does not answer is given up


@dataclass
class Rescued:
    """What an area gave: its readable bytes (``data``, unreadable sectors as zeros),
    the unreadable sectors, and how many reads failed doing it."""

    start: int
    data: bytearray
    bad: Extents = field(default_factory=Extents)
    failed_reads: int = 0


def rescue_area(
    read: Callable[[int, int], bytes], start: int, end: int, sector: int, *, retries: int = 1
) -> Rescued:
    """Narrow down ``[start, end)`` (whole sectors) to its unreadable sectors."""
    if start % sector or end % sector:
        raise ValueError("an area is rescued in whole sectors")
    out = Rescued(start, bytearray(end - start))
    state: dict[int, bool] = {}  # sector offset -> read it (True) / failed (False)

    def attempt(pos: int) -> bool:
        try:
            data = read(pos, sector)
        except OSError as exc:
            if exc.errno not in MEDIA_ERRORS:
                raise
            out.failed_reads += 1
            state[pos] = False
            return False
        if len(data) != sector:  # short: the medium stopped there
            out.failed_reads += 1
            state[pos] = False
            return False
        out.data[pos - start : pos - start + sector] = data
        state[pos] = True
        return True

    front = start
    while front < end and attempt(front):  # 1. trim from the front
        front += sector
    back = end - sector
    while back > front and attempt(back):  # 2. trim from the back
        back -= sector
    for pos in range(front + sector, back, sector):  # 3. scrape the middle once
        attempt(pos)
    for _ in range(retries):  # 4. the failed sectors again
        for pos in [p for p, ok in state.items() if not ok]:
            attempt(pos)
    out.bad = Extents.of((p, p + sector) for p, ok in state.items() if not ok)
    return out


class DirectReader:
    """Reads whole logical sectors of a disk with ``O_DIRECT`` into an aligned buffer
    (one page-aligned mmap buffer, reused), so nothing is read ahead or cached."""

    def __init__(self, path: str, sector: int) -> None:
        self.sector = sector
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        self._buf = mmap.mmap(-1, max(sector, mmap.PAGESIZE))

    def read(self, offset: int, length: int) -> bytes:
        if offset % self.sector or length != self.sector:
            raise ValueError("a direct read is one aligned sector")
        n = os.preadv(self.fd, [memoryview(self._buf)[:length]], offset)
        return bytes(self._buf[:n])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._buf.close()

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
