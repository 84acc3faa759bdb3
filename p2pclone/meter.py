"""How far a clone is, in the bytes a person cares about, as the far end has them.

Two things made the progress lie (issue 24): its total was the disk, of which the
free space is never sent, and the sender counted a chunk done when it was queued, so
on a 115200-baud cable the bar read "done" for the 25 s the data was still crossing.

:class:`Meter` counts in *used* bytes (the disk less the plan's free map): the total
is what is to be copied, and a position on the disk becomes the used bytes before it.
The sender marks, after each frame it hands to the link, the wire byte at which the
frame ends and the disk position the frame covers up to; what the far end has taken
(``delivered`` wire bytes: the link's own acknowledgements, TCP's unacknowledged
queue subtracted) is turned back into a position by interpolating between the marks.
The receiver counts what it has received, a frame in flight by its share of bytes
arrived.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from itertools import accumulate

from .volumes.extents import Extents


class Meter:
    """Used bytes before a position, and the sender's wire marks (see the module)."""

    def __init__(self, size: int, free: Extents) -> None:
        self.size = size
        self._starts = [s for s, _e in free.ranges]
        self._ends = [e for _s, e in free.ranges]
        self._free_before = [0, *accumulate(e - s for s, e in free.ranges)]
        #: bytes to copy: the disk less its free ranges
        self.total = size - self._free_before[-1]
        self._marks: deque[tuple[int, int]] = deque()  # (wire end, disk position)
        self._last = (0, 0)  # the last mark the far end has passed

    def used_before(self, position: int) -> int:
        """The used bytes in ``[0, position)``."""
        position = max(0, min(position, self.size))
        k = bisect.bisect_right(self._starts, position)  # free ranges starting at or before
        free = self._free_before[k]
        if k and self._ends[k - 1] > position:  # inside the k-th range: only part of it
            free -= self._ends[k - 1] - position
        return position - free

    # -- the sender: what the far end has taken -------------------------------------------

    def mark(self, wire_end: int, position: int) -> None:
        """A frame handed to the link ends at wire byte ``wire_end`` and covers the disk
        up to ``position``."""
        if self._marks and self._marks[-1][0] >= wire_end:
            self._marks[-1] = (self._marks[-1][0], max(self._marks[-1][1], position))
        else:
            self._marks.append((wire_end, position))

    def taken(self, delivered: int, ahead: tuple[int, int] | None = None) -> int:
        """The used bytes the far end has, once ``delivered`` wire bytes reached it;
        ``ahead``: a mark for the frame being handed over now (a serial link takes
        a big chunk for many seconds, and acknowledges it piece by piece meanwhile)."""
        while self._marks and self._marks[0][0] <= delivered:
            self._last = self._marks.popleft()
        wire0, pos0 = self._last
        position = pos0
        following = self._marks[0] if self._marks else ahead
        if following is not None and following[0] > delivered >= wire0:
            wire1, pos1 = following
            position += max(0, pos1 - pos0) * (delivered - wire0) // max(1, wire1 - wire0)
        return self.used_before(position)


def in_flight(done_position: int, have: int, frame: int, chunk: int) -> int:
    """The receiver's position: ``done_position``, plus a frame in flight's share of a
    chunk (``have`` of its ``frame`` bytes arrived; 0 when no frame is under way)."""
    if frame <= 0:
        return done_position
    return done_position + chunk * min(have, frame) // frame


__all__ = ["Meter", "in_flight"]
