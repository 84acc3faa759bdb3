"""The per-chunk work, as plain functions the drivers run in worker threads.

Sender: read -> zero check -> BLAKE3 -> zstd (level 1) or raw.  Receiver: bounded
decompress -> BLAKE3 check -> write.  Each worker thread keeps its own zstd
context: zstandard objects shared between threads crash the interpreter.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol

import blake3
import xxhash
import zstandard

from .disks import Target
from .errors import IntegrityError, UnreadableError
from .protocol import SUB_HASH_SIZE, Chunk, Encoding, Patch, Plan, bitmap, zero_digest
from .volumes.extents import Extents

ZSTD_LEVEL = 1
_ZERO = bytes(1 << 20)
_local = threading.local()


class DiskSource(Protocol):
    """What the sender reads: a disk (disks.Source) or an image (image.reader.ImageSource)."""

    size: int
    info: dict[str, str | int]
    #: ranges no filesystem uses: read as zeros, never sent (empty: send every byte)
    free: Extents

    def read(self, offset: int, length: int) -> bytes | memoryview: ...

    def next_data(self, offset: int) -> int: ...

    def close(self) -> None: ...


def default_threads() -> int:
    """Worker threads for hashing and compression: one per core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


def _compressor() -> zstandard.ZstdCompressor:
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def is_zero(data: bytes | memoryview) -> bool:
    """True if every byte is zero (compares with a preallocated zero buffer: ~20 GB/s)."""
    # bytes == bytes is a memcmp; comparing with a memoryview is ~100x slower.
    return data == (_ZERO if len(data) == len(_ZERO) else bytes(len(data)))


def chunk_span(plan: Plan, index: int) -> str:
    start = index * plan.chunk_size
    return f"bytes {start}-{start + plan.chunk_length(index) - 1}"


@dataclass(frozen=True, slots=True)
class Encoded:
    """What to send for one chunk: exactly one of the four is set.

    ``chunk``: its CHUNK event; ``patch``: a PATCH of the sub-blocks that differ;
    ``zero``: it is all zeros (a ZERO range); ``same``: the receiver already holds it,
    and this is its hash (a SAME range); ``lost``: it cannot be read (a damaged image):
    a LOST range; ``later``: a failing disk did not read it on the first pass (a LATER
    range; it is narrowed down and sent after every other chunk).
    """

    index: int
    chunk: Chunk | None = None
    zero: bool = False
    same: bytes | None = None
    patch: Patch | None = None
    lost: bool = False
    later: bool = False


#: Sub-block size for delta re-sync: one changed 4 KiB block costs at most this much.
SUB_BLOCK = 32 * 1024


def sub_hashes(data: bytes | memoryview, sub: int) -> bytes:
    """xxh3-64 of every ``sub``-byte block of ``data``, concatenated.

    Sub-hashes only locate what changed inside a chunk: the patched chunk is always
    checked against its full BLAKE3 before it is written, so a fast non-cryptographic
    hash is enough here, and it keeps the delta scan at disk speed (BLAKE3 twice
    over every chunk would not).
    """
    view = memoryview(data)
    return b"".join(xxhash.xxh3_64_digest(view[k : k + sub]) for k in range(0, len(view), sub))


def _encode(data: bytes | memoryview, length: int) -> tuple[bytes | memoryview, int]:
    packed = _compressor().compress(data)
    # Raw when compression saves under ~3%: decompressing would cost more than it saves.
    if len(packed) < length - length // 32:
        return packed, Encoding.ZSTD
    return data, Encoding.RAW


def encode_chunk(
    source: DiskSource,
    plan: Plan,
    index: int,
    have: bytes | None = None,
    have_subs: bytes = b"",
    sub: int = 0,
    defer: bool = False,
) -> Encoded:
    """Read chunk ``index`` and decide what to send for it.

    ``have`` is the hash the receiver reports for this chunk (resume or delta), if
    any: a match costs a hash and no compression, and nothing but its hash is sent.
    ``have_subs`` (delta) are the receiver's sub-block hashes: when only a few
    sub-blocks differ, just those are sent, as a PATCH.  ``defer``: a chunk that fails to
    read is left for later (the first pass over a failing disk), not narrowed down now.
    """
    length = plan.chunk_length(index)
    try:
        data, bad = read_chunk(source, plan, index, rescue=not defer)
    except UnreadableError:
        if not defer:
            raise
        return Encoded(index, later=True)
    if bad:  # sent whole, so the receiver learns which ranges it could not get
        body, encoding = _encode(data, length)
        digest = blake3.blake3(data).digest()
        return Encoded(index, Chunk(index=index, length=length, digest=digest,
                                    encoding=encoding, body=body, unreadable=bad))  # fmt: skip
    if is_zero(data):
        if have is not None and have == zero_digest(length):
            return Encoded(index, same=have)
        return Encoded(index, zero=True)
    digest = blake3.blake3(data).digest()
    if digest == have:
        return Encoded(index, same=digest)
    if have_subs and sub:
        ours = sub_hashes(data, sub)
        changed = [
            k
            for k in range(len(ours) // SUB_HASH_SIZE)
            if ours[SUB_HASH_SIZE * k : SUB_HASH_SIZE * (k + 1)]
            != have_subs[SUB_HASH_SIZE * k : SUB_HASH_SIZE * (k + 1)]
        ]
        if changed and len(changed) * sub <= length // 2:
            view = memoryview(data)
            blocks = b"".join(view[k * sub : (k + 1) * sub] for k in changed)
            body, encoding = _encode(blocks, len(blocks))
            return Encoded(
                index,
                patch=Patch(
                    index=index,
                    length=length,
                    digest=digest,
                    encoding=encoding,
                    changed=bitmap(changed, len(ours) // SUB_HASH_SIZE),
                    body=body,
                ),
            )
    body, encoding = _encode(data, length)
    return Encoded(
        index, Chunk(index=index, length=length, digest=digest, encoding=encoding, body=body)
    )


def encode_repair(source: DiskSource, plan: Plan, index: int) -> Chunk:
    """Chunk ``index`` as a full CHUNK, whatever it holds (answering a NAK)."""
    length = plan.chunk_length(index)
    data, bad = read_chunk(source, plan, index)
    body, encoding = _encode(data, length)
    return Chunk(
        index=index,
        length=length,
        digest=blake3.blake3(data).digest(),
        encoding=encoding,
        body=body,
        unreadable=bad,
    )


def read_chunk(
    source: DiskSource, plan: Plan, index: int, *, rescue: bool = True
) -> tuple[bytes | memoryview, tuple[tuple[int, int], ...]]:
    """Chunk ``index``'s bytes, and the ranges of it the source could not read (zeros
    in the bytes): a media error is narrowed down (``Source.rescue``), not fatal,
    where the source can do that (not with ``rescue`` false: it is raised)."""
    offset, length = index * plan.chunk_size, plan.chunk_length(index)
    try:
        data = source.read(offset, length)
    except UnreadableError as exc:
        narrow = getattr(source, "rescue", None)
        if narrow is None:
            raise
        if exc.hung:  # a device that does not answer: no sector-by-sector narrowing
            return bytes(length), source.free.invert(offset, offset + length).ranges
        if not rescue:
            raise
        data, bad = narrow(offset, length)
        return data, bad
    # An image of a failing disk knows which ranges its source could not read.
    known = getattr(source, "unreadable", None)
    return data, known.clip(offset, offset + length).ranges if known else ()


def decode_body(
    index: int, encoding: int, body: bytes | memoryview, length: int, plan: Plan
) -> bytes | memoryview:
    """A CHUNK or PATCH body's plain bytes, which must be exactly ``length`` long.

    Raises:
        IntegrityError: a malformed or oversized zstd frame, or the wrong length.
    """
    span = chunk_span(plan, index)
    if encoding != Encoding.ZSTD:
        data = body
    else:
        # Check the declared size *before* decompressing: zstandard allocates what
        # the frame header says and ignores max_output_size when a size is given.
        try:
            declared = zstandard.frame_content_size(body)
        except zstandard.ZstdError:
            declared = -2
        if declared != length:
            raise IntegrityError(
                f"chunk {index} ({span}) arrived as a malformed zstd frame; "
                "nothing of it was written: run the clone again"
            )
        try:
            data = _decompressor().decompress(body)
        except zstandard.ZstdError:
            raise IntegrityError(
                f"chunk {index} ({span}) failed to decompress; nothing of it was "
                "written: run the clone again"
            ) from None
    if len(data) != length:
        raise IntegrityError(f"chunk {index} ({span}) decoded to the wrong length")
    return data


def decode_chunk(chunk: Chunk, plan: Plan) -> bytes | memoryview:
    """The plain bytes of ``chunk``, checked against its BLAKE3.

    Raises:
        IntegrityError: the body does not decode to exactly ``chunk.length`` bytes
            with the announced hash.
    """
    span = chunk_span(plan, chunk.index)
    data = decode_body(chunk.index, chunk.encoding, chunk.body, chunk.length, plan)
    if len(data) != chunk.length or blake3.blake3(data).digest() != chunk.digest:
        raise IntegrityError(
            f"chunk {chunk.index} ({span}) does not match its BLAKE3 hash; nothing of it "
            "was written: the data was corrupted on the way, run the clone again"
        )
    return data


def write_chunk(target: Target, chunk: Chunk, plan: Plan) -> None:
    target.write(chunk.index * plan.chunk_size, decode_chunk(chunk, plan))


def apply_patch(target: Target, patch: Patch, plan: Plan, sub: int) -> None:
    """Rebuild the chunk from the target and the changed sub-blocks; check, then write.

    Raises:
        IntegrityError: the patched chunk does not have the announced BLAKE3 (the
            target changed under us, or the data was corrupted): nothing was written.
    """
    start = patch.index * plan.chunk_size
    blocks = patch.changed_blocks()
    sizes = [min(sub, patch.length - k * sub) for k in blocks]
    body = decode_body(patch.index, patch.encoding, patch.body, sum(sizes), plan)
    chunk = bytearray(target.read(start, patch.length))
    pos = 0
    for k, size in zip(blocks, sizes, strict=True):
        chunk[k * sub : k * sub + size] = body[pos : pos + size]
        pos += size
    if len(chunk) != patch.length or blake3.blake3(chunk).digest() != patch.digest:
        raise IntegrityError(
            f"chunk {patch.index} ({chunk_span(plan, patch.index)}) did not match its BLAKE3 "
            "after patching: the target changed during the re-sync or data was corrupted; "
            "nothing of it was written; run again without --delta"
        )
    view = memoryview(chunk)
    for k, size in zip(blocks, sizes, strict=True):
        target.write(start + k * sub, view[k * sub : k * sub + size])


def zero_chunks(target: Target, plan: Plan, index: int, count: int) -> None:
    start = index * plan.chunk_size
    end = min(plan.source_size, (index + count) * plan.chunk_size)
    target.zero(start, end - start)


def hash_target_chunk(target: Target, plan: Plan, index: int) -> bytes:
    return blake3.blake3(target.read(index * plan.chunk_size, plan.chunk_length(index))).digest()
