"""The used map on the wire: the byte ranges of the source that no filesystem uses.

It travels as the PLAN frame's body: zstd over a msgpack array of integers counting
512-byte sectors, ``[start, length, gap, length, gap, length, ...]`` (each range's
start given as the gap after the previous range's end), so a map of a million ranges
costs a few MB before compression and far less after.  The receiver checks what it
decodes -- sizes declared before decompressing, ranges sorted, disjoint, non-empty
and inside the source -- because the plan decides which bytes it will never write.
"""

from __future__ import annotations

import msgpack
import zstandard

from ..errors import RemoteProtocolError
from ..volumes.extents import Extents

UNIT = 512
#: At most this many free ranges (volumes.scan drops the smallest beyond it).
MAX_FREE_RANGES = 1 << 20
#: The largest PLAN body accepted: two msgpack integers of at most 9 bytes per range.
MAX_PLAN_BODY = 2 * 9 * MAX_FREE_RANGES + 64


def encode_free(free: Extents) -> bytes:
    """The PLAN body for ``free`` (empty bytes when nothing is free)."""
    if not free:
        return b""
    flat: list[int] = []
    pos = 0
    for start, end in free:
        if start % UNIT or end % UNIT:
            raise ValueError("free ranges must be whole 512-byte sectors")
        flat += [(start - pos) // UNIT, (end - start) // UNIT]
        pos = end
    packed: bytes = msgpack.packb(flat)
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(packed)


def decode_free(body: bytes | memoryview, source_size: int, count: int) -> Extents:
    """The free ranges a PLAN body announces (``count`` of them, as its meta says).

    Raises:
        RemoteProtocolError: the body is malformed, too large, or its ranges are not
            sorted, disjoint, non-empty and inside the source.
    """
    if not body:
        if count:
            raise RemoteProtocolError("the peer's PLAN announces free ranges but carries none")
        return Extents()
    if not 0 < count <= MAX_FREE_RANGES:
        raise RemoteProtocolError(
            f"the peer's PLAN announces {count} free ranges; at most {MAX_FREE_RANGES} are accepted"
        )
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        declared = -1
    if not 0 < declared <= MAX_PLAN_BODY:
        raise RemoteProtocolError("the peer's PLAN carries a malformed or oversized used map")
    try:
        flat = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(body), use_list=True)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException):
        raise RemoteProtocolError("the peer's PLAN carries an unreadable used map") from None
    if (
        not isinstance(flat, list)
        or len(flat) != 2 * count
        or not all(type(n) is int and n >= 0 for n in flat)
    ):
        raise RemoteProtocolError("the peer's PLAN used map is not a list of range sizes")
    ranges = []
    pos = 0
    for k in range(0, len(flat), 2):
        gap, length = flat[k], flat[k + 1]
        if length == 0 or (k and gap == 0):
            raise RemoteProtocolError("the peer's PLAN used map has empty or touching ranges")
        start = pos + gap * UNIT
        pos = start + length * UNIT
        ranges.append((start, pos))
    if pos > source_size:
        raise RemoteProtocolError("the peer's PLAN used map reaches beyond the source")
    return Extents(tuple(ranges))


def fit_free(free: Extents, limit: int) -> Extents:
    """``free`` itself, or its largest ranges, so that it encodes in ``limit`` bytes.

    Any subset of the free ranges describes the same masked data (free bytes are zeros
    either way): a range left out is merely written as zeros by a restore.
    """
    keep = len(free)
    while keep and len(encode_free(fitted := _largest(free, keep))) > limit:
        keep //= 2
    return fitted if keep else Extents()


def _largest(free: Extents, keep: int) -> Extents:
    if keep >= len(free):
        return free
    return Extents.of(sorted(free, key=lambda r: r[1] - r[0], reverse=True)[:keep])
