"""Narrowing down an area of a failing disk, as GNU ddrescue does (issue 15's core).

A read of a whole chunk failed somewhere inside ``[start, end)``.  ``rescue_area``
finds out what still reads, touching the bad part as little as possible:

1. **trim** from the front, one sector at a time, up to the first sector that fails;
2. **trim** from the back, one sector at a time, down to the last one that fails;
3. **scrape** (only when asked: ``--scrape``) the sectors between the two, each read
   once.  Without it the area between the two failed sectors is not read at all, and
   counts as unreadable, as after GNU ddrescue's ``-n`` (no-scrape): a long bad
   stretch costs two failed reads, not one per sector;
4. **retry** (``retries`` passes): each bad stretch is trimmed again from both ends
   (its first and last failed sectors read once more, and onwards while they read),
   and with ``scrape`` every failed sector between them too.

A sector that failed before in this run (``known_bad``) is never read again except by
a retry pass.  Every read is one logical sector, through :class:`DirectReader`
(``O_DIRECT``, an aligned buffer), so the kernel's read-ahead cannot turn one request
into many failed ones.  The area function takes any ``read(offset, length)`` that
raises ``OSError`` on a media error, so it is tested on a real failing device and on
plain functions alike.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..volumes.extents import Extents

#: errors a failing medium gives (not a programming error or a vanished device)
MEDIA_ERRORS = {errno.EIO, errno.ENODATA, errno.EILSEQ, errno.EREMOTEIO, errno.ETIMEDOUT}


@dataclass(frozen=True)
class RescueOptions:
    """How a failing source is read (``--retries``, ``--scrape``, ``--read-timeout``)."""

    retries: int = 1  # extra passes over each bad stretch (its ends read again)
    read_timeout: float = 10.0  # seconds before a read that does not answer is given up
    scrape: bool = False  # also read every sector between a stretch's trimmed ends


@dataclass
class Rescued:
    """What an area gave: its readable bytes (``data``, unreadable sectors as zeros),
    the unreadable sectors (failed, or between two failed ones and not read), the
    sectors whose read failed, and how many reads failed doing it."""

    start: int
    data: bytearray
    bad: Extents = field(default_factory=Extents)
    failed: Extents = field(default_factory=Extents)
    failed_reads: int = 0


def rescue_area(
    read: Callable[[int, int], bytes],
    start: int,
    end: int,
    sector: int,
    *,
    retries: int = 1,
    scrape: bool = False,
    known_bad: Extents = Extents(),  # noqa: B008 - frozen
    known_good: Extents = Extents(),  # noqa: B008 - frozen
    read_span: Callable[[int, int], bytes] | None = None,
) -> Rescued:
    """Narrow down ``[start, end)`` (whole sectors) to its unreadable sectors.

    ``known_good``: ranges that read before (the part of a first-pass read that came
    back before it stopped short), read again in one ``read_span`` each rather than a
    sector at a time."""
    if start % sector or end % sector:
        raise ValueError("an area is rescued in whole sectors")
    out = Rescued(start, bytearray(end - start))
    state: dict[int, bool] = {}  # sector offset -> read it (True) / failed (False)
    for a, b in known_bad.clip(start, end):
        for pos in range(a - a % sector, b, sector):
            state[pos] = False
    for a, b in known_good.clip(start, end) if read_span is not None else ():
        a, b = -(-a // sector) * sector, b - b % sector
        try:
            data = read_span(a, b - a) if b > a and read_span is not None else b""
        except OSError as exc:
            if exc.errno not in MEDIA_ERRORS:
                raise
            continue  # it failed now: found sector by sector like the rest
        if data and len(data) == b - a:
            out.data[a - start : b - start] = data
            state.update((pos, True) for pos in range(a, b, sector) if pos not in state)

    def attempt(pos: int, again: bool = False) -> bool:
        if pos in state and not again:
            return state[pos]
        try:
            data = read(pos, sector)
        except OSError as exc:
            if exc.errno not in MEDIA_ERRORS:
                raise
            data = b""
        if len(data) != sector:  # failed, or short: the medium stopped there
            out.failed_reads += 1
            state[pos] = False
            return False
        out.data[pos - start : pos - start + sector] = data
        state[pos] = True
        return True

    def trim(first: int, last: int, again: bool) -> None:
        """Read forwards from ``first`` and backwards from ``last`` (sector offsets)
        while the sectors read; ``again``: the failed ends are read once more."""
        front = first
        while front <= last and attempt(front, again):
            front += sector
        back = last
        while back > front and attempt(back, again):
            back -= sector
        if scrape:
            for pos in range(front + sector, back, sector):
                attempt(pos, again)

    trim(start, end - sector, again=False)
    for _ in range(retries):
        for a, b in _stretches(state, start, end, sector).ranges:
            trim(a, b - sector, again=True)
    out.bad = _stretches(state, start, end, sector)
    out.failed = Extents.of((p, p + sector) for p, ok in state.items() if not ok)
    return out


def _stretches(state: dict[int, bool], start: int, end: int, sector: int) -> Extents:
    """The unreadable stretches: from each failed sector to the last failed sector
    before the next one that read (the sectors between, never read, included)."""
    out: list[tuple[int, int]] = []
    begin = -1
    last_failed = -1
    for pos in range(start, end, sector):
        ok = state.get(pos)
        if ok is False:
            if begin < 0:
                begin = pos
            last_failed = pos
        elif ok is True and begin >= 0:
            out.append((begin, last_failed + sector))
            begin = -1
    if begin >= 0:
        out.append((begin, last_failed + sector))
    return Extents.of(out)


#: the first skip after a failed read on the first pass (GNU ddrescue's default)
MIN_SKIP = 64 * 1024


class SkipAhead:
    """GNU ddrescue's skip on the first pass over a failing disk: after a read fails,
    the reads that start in the next ``size`` bytes are not tried (they are left for
    the second pass); the size doubles while failures follow each other (up to 1 % of
    the disk, at most 1 GiB) and starts again at 64 KiB after a failure far from the
    last one.  So a long bad stretch costs a few failed reads on the first pass, not
    one per chunk."""

    def __init__(self, disk_size: int) -> None:
        self.limit = min(1 << 30, max(MIN_SKIP, disk_size // 100))
        self.size = MIN_SKIP // 2
        self.start = self.end = 0

    def skips(self, offset: int) -> bool:
        """A read starting at ``offset`` is not to be tried now."""
        return self.start <= offset < self.end

    def failed(self, offset: int, length: int) -> None:
        """A read of ``[offset, offset+length)`` failed: skip what follows it."""
        near = self.end > 0 and offset <= self.end + length
        self.size = min(self.limit, self.size * 2) if near else MIN_SKIP
        self.start, self.end = offset + length, offset + length + self.size


class DirectReader:
    """Reads whole logical sectors of a disk with ``O_DIRECT`` into an aligned buffer
    (one page-aligned mmap buffer, reused; ``read_span`` has one per thread, for the
    first pass's read-ahead threads), so nothing is read ahead or cached."""

    def __init__(self, path: str, sector: int) -> None:
        self.sector = sector
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:  # a file system without O_DIRECT (tmpfs): no disk to spare
            if exc.errno != errno.EINVAL:
                raise
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._buf = mmap.mmap(-1, max(sector, mmap.PAGESIZE))
        self._spans = threading.local()  # each thread's buffer for read_span

    def read(self, offset: int, length: int) -> bytes:
        if offset % self.sector or length != self.sector:
            raise ValueError("a direct read is one aligned sector")
        n = os.preadv(self.fd, [memoryview(self._buf)[:length]], offset)
        return bytes(self._buf[:n])

    def read_span(self, offset: int, length: int) -> bytes:
        """``[offset, offset+length)`` in one direct read of the whole sectors around it
        (short at the end of the disk)."""
        start = offset - offset % self.sector
        end = -(-(offset + length) // self.sector) * self.sector
        buf: mmap.mmap | None = getattr(self._spans, "buf", None)
        if buf is None or len(buf) < end - start:
            if buf is not None:
                buf.close()
            buf = self._spans.buf = mmap.mmap(
                -1, -(-(end - start) // mmap.PAGESIZE) * mmap.PAGESIZE
            )
        n = os.preadv(self.fd, [memoryview(buf)[: end - start]], start)
        return bytes(buf[offset - start : min(n, offset - start + length)])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._buf.close()

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
