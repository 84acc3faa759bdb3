"""The sender's source: a disk, a file or an image, opened and mapped.

``open_source`` opens it; ``map_source`` reads its partition table and filesystems
(p2pclone/volumes) so that the free ranges are neither read nor sent; ``cut_off``
narrows what is sent when the receiver's disk is smaller and keeps nothing past its
end.
"""

from __future__ import annotations

import functools
import time
from typing import assert_never

import trio

from ..disks import Source
from ..endpoints import Disk, Image, Place
from ..errors import RemoteProtocolError, SafetyError
from ..image.reader import ImageSource
from ..options import SendOptions
from ..pipeline import DiskSource
from ..session import Mapped, Reporter, no_report
from ..units import human_bytes
from ..volumes import Extents, scan
from ..volumes.layout import layout_info
from .select import choose_partitions


async def open_source(
    origin: Place,
    chunk_size: int,
    options: SendOptions,
    report: Reporter = no_report,
    *,
    free: Extents | None = None,
) -> tuple[DiskSource, int]:
    """The SOURCE opened for reading (a disk, a file, or an image, whose own chunk size
    then wins), and the chunk size to send it with.

    A disk or file is mapped (reported as :class:`Mapped`) unless ``options.exact``: its
    free ranges are then read as zeros and sent as nothing.  ``free``: a map made before
    (the same source opened again), used as it is.  A disk is read as ``options`` say
    (``allow_mounted``, a failing disk's ``rescue``), an image with its passphrase.
    Either is then narrowed to the partitions chosen (``--partitions``, ``--skip``)."""
    match origin:
        case Image():
            image = await trio.to_thread.run_sync(
                ImageSource.open,
                origin.url,
                options.passphrase or "",
                options.password or origin.password,
            )
            try:
                choose_partitions(image, options.partitions, options.skip, zero=False)
            except BaseException:
                image.close()
                raise
            return image, image.chunk_size
        case Disk(path=path):
            pass
        case _:
            assert_never(origin)
    rescue = options.rescue
    source = await trio.to_thread.run_sync(
        functools.partial(Source.open, path, allow_mounted=options.allow_mounted)
    )
    source.rescue_options = rescue
    if free is not None:
        source.free = free
    elif options.exact:
        report(Mapped("exact", [], [], 0, source.size, 0.0))
    else:
        try:
            mapped, source.free = await trio.to_thread.run_sync(map_source, source)
        except BaseException:
            source.close()
            raise
        report(mapped)
    try:
        choose_partitions(source, options.partitions, options.skip, zero=options.exact)
    except BaseException:
        source.close()
        raise
    # Timed from here: the map's many small metadata reads go without a thread each.
    source.read_timeout = rescue.read_timeout
    return source, chunk_size


def map_source(source: Source) -> tuple[Mapped, Extents]:
    """Read the source's partition table and filesystems (in a worker thread): what
    to report, and the free ranges."""
    started = time.monotonic()
    sector = source.info.get("sector", 0)
    disk = scan(source.read, source.size, sector if isinstance(sector, int) else 0)
    mapped = Mapped(
        disk.table.scheme,
        [v.to_info() for v in disk.volumes],
        list(disk.table.notes),
        disk.free_bytes,
        source.size,
        time.monotonic() - started,
    )
    # The layout travels in the plan's source map: the receiver's question, its plan
    # line and an image's `image info` show it (volumes/layout.py).
    source.info.update(layout_info(disk))
    return mapped, disk.free


def cut_off(source: DiskSource, cut: int, chunk_size: int, *, target: str, drop: bool) -> int:
    """The receiver's target is smaller and keeps nothing from ``cut`` on: send nothing
    from there either (it is free on both sides, so the hashes agree).  Only past the
    last partition, which the receiver checked against our plan; we check it too.

    What lies there is read first (a blocking call): bytes that are not zero are lost
    by the cut, which only ``drop`` (the receiver's ``--cut``) allows; a GPT's backup,
    at the very end, is rebuilt on the target and does not count.  Returns the bytes
    of data let go (in 4 KiB blocks that are not all zero).

    Raises:
        RemoteProtocolError: a cut inside a partition.
        SafetyError: data past the cut, and no ``drop``.
    """
    ends = [v for k, v in source.info.items() if k.startswith("end") and isinstance(v, int)]
    if not ends or cut < max(ends):
        raise RemoteProtocolError(
            f"the receiver asked to cut the source at byte {cut}, inside a partition"
        )
    first, last, data = data_past(source, cut, chunk_size)
    if data and not drop:
        needed = last + (source.size - _tail_end(source))
        raise SafetyError(
            f"the source holds data past byte {cut}, where the target {target} ends: "
            f"{human_bytes(data, small='bytes')} outside every partition, the first at "
            f"byte {first}; this target would lose it. Clone onto a disk of at least "
            f"{human_bytes(needed, small='bytes')}, or let it go with --cut on the "
            "receiver; nothing was written"
        )
    source.free = source.free.union(Extents(((cut, source.size),)))
    return data


def _tail_end(source: DiskSource) -> int:
    """Where the tail that a cut may lose ends: before a GPT's backup (its array and
    header, rebuilt at the target's end), else at the source's end."""
    if source.info.get("layout") != "gpt":
        return source.size
    sector = source.info.get("sector") or 512
    return source.size - (1 + -(-16384 // int(sector))) * int(sector)


def data_past(source: DiskSource, cut: int, chunk_size: int) -> tuple[int, int, int]:
    """(the first byte that is not zero, the end of the last, how many bytes of data)
    in the source from ``cut`` to its tail's end, counted in 4 KiB blocks; zeros when
    all of it is zeros.  Read a chunk at a time (an image is read in whole chunks), a
    file's holes skipped."""
    first = last = data = 0
    end = _tail_end(source)
    zero = bytes(4096)
    index = cut // chunk_size
    while index * chunk_size < end:
        at = index * chunk_size
        if source.next_data(at) >= at + chunk_size:  # a hole: zeros, not read
            index += 1
            continue
        chunk = bytes(source.read(at, min(chunk_size, source.size - at)))
        lo, hi = max(cut, at) - at, min(end, at + len(chunk)) - at
        for k in range(lo - lo % 4096, hi, 4096):
            a, b = max(k, lo), min(k + 4096, hi)
            piece = chunk[a:b]
            if piece != zero[: len(piece)]:
                first = first or at + a + next(i for i, c in enumerate(piece) if c)
                last = at + a + len(piece.rstrip(b"\0"))
                data += len(piece)
        index += 1
    return first, last, data
