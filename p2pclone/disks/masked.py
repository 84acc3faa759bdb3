"""Reading and writing around the free ranges of a used map.

A chunk partly inside a free range is read with the free bytes as zeros (they are
never read from the disk), and written back only where it is used: the target keeps
whatever it held in the free ranges, as partclone and bmaptool leave it.  Hashes,
resume, delta and the root digest are all over these masked bytes, so they stay
deterministic whatever the free space holds on either side.
"""

from __future__ import annotations

from collections.abc import Callable

from ..volumes.extents import Extents


def used_parts(free: Extents, offset: int, length: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` ranges of ``[offset, offset + length)`` outside ``free``."""
    if not free:
        return [(offset, offset + length)]
    return list(free.invert(offset, offset + length))


def masked_read(
    read: Callable[[int, int], bytes], free: Extents, offset: int, length: int
) -> bytes:
    """``read(offset, length)`` with every free byte zero and never read."""
    if not free or not free.clip(offset, offset + length):
        return read(offset, length)
    buf = bytearray(length)
    for start, end in free.invert(offset, offset + length):
        buf[start - offset : end - offset] = read(start, end - start)
    return bytes(buf)


def next_used(free: Extents, offset: int) -> int:
    """``offset``, or the end of the free range it lies in."""
    hit = free.find(offset)
    return hit[1] if hit else offset
