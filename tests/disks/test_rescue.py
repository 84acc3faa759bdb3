"""Narrowing a failing area down to its unreadable sectors (disks/rescue.py), as GNU
ddrescue trims and scrapes: on plain functions, and on a real failing block device
(a FUSE file failing reads, under a loop device read with O_DIRECT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pclone.disks.rescue import DirectReader, rescue_area
from p2pclone.volumes.extents import Extents
from tests.conftest import MiB, random_file
from tests.disks.test_failing_source import need_fuse
from tests.failing_disk import as_block_device, failing_disk

S = 512


def disk(size: int, bad: set[int], once: set[int] = frozenset()):
    """A read function over ``size`` bytes failing in sectors ``bad`` (always) and
    ``once`` (the first time), counting reads."""
    data = bytes(range(256)) * (size // 256)
    failed_once: set[int] = set()
    reads = []

    def read(offset: int, length: int) -> bytes:
        reads.append(offset)
        sectors = set(range(offset // S, (offset + length) // S))
        if sectors & bad or (sectors & once) - failed_once:
            failed_once.update(sectors & once)
            raise OSError(5, "Input/output error")
        return data[offset : offset + length]

    return read, data, reads


def test_trims_both_ends_and_leaves_the_middle_unread() -> None:
    """Without --scrape (as ddrescue -n): the first and last bad sectors are found by
    reading towards them one sector at a time; what lies between is not read and counts
    as unreadable; two failed reads, however long the stretch."""
    read, data, reads = disk(64 * S, bad={10, 11, 20, 40})
    got = rescue_area(read, 0, 64 * S, S, retries=0)
    assert got.bad == Extents(((10 * S, 41 * S),))
    assert got.failed_reads == 2 and got.failed == Extents(((10 * S, 11 * S), (40 * S, 41 * S)))
    assert len(reads) == 10 + 1 + 23 + 1  # the good sectors at both ends, each once
    for k in [*range(10), *range(41, 64)]:
        assert bytes(got.data[k * S : (k + 1) * S]) == data[k * S : (k + 1) * S]
    assert bytes(got.data[10 * S : 41 * S]) == bytes(31 * S)


def test_a_long_stretch_costs_two_failed_reads() -> None:
    read, _data, _reads = disk(4096 * S, bad=set(range(100, 4000)))
    got = rescue_area(read, 0, 4096 * S, S, retries=0)
    assert got.bad == Extents(((100 * S, 4000 * S),)) and got.failed_reads == 2


def test_scrape_reads_the_middle_once() -> None:
    read, data, reads = disk(64 * S, bad={10, 11, 20, 40})
    got = rescue_area(read, 0, 64 * S, S, retries=0, scrape=True)
    assert got.bad == Extents.of((k * S, (k + 1) * S) for k in (10, 11, 20, 40))
    assert got.failed_reads == 4  # each bad sector read exactly once
    assert len(reads) == 64  # and every sector exactly once
    for k in range(64):
        piece = bytes(got.data[k * S : (k + 1) * S])
        assert piece == (bytes(S) if k in (10, 11, 20, 40) else data[k * S : (k + 1) * S])


def test_a_sector_that_failed_before_in_this_run_is_not_read_again() -> None:
    """``known_bad`` (what failed earlier in the run, e.g. the chunk before) is not
    read again, except by a retry pass."""
    read, _data, reads = disk(16 * S, bad={0, 1, 2})
    got = rescue_area(read, 0, 16 * S, S, retries=0, known_bad=Extents(((0, 2 * S),)))
    assert got.bad == Extents(((0, 3 * S),)) and 0 not in reads and S not in reads
    assert got.failed_reads == 1  # sector 2, found by trimming from the back


def test_a_sector_that_fails_once_is_recovered_by_a_retry_only() -> None:
    read, data, _ = disk(16 * S, bad=set(), once={5})
    assert rescue_area(read, 0, 16 * S, S, retries=0).bad == Extents(((5 * S, 6 * S),))
    read, data, _ = disk(16 * S, bad=set(), once={5})
    got = rescue_area(read, 0, 16 * S, S, retries=1)
    assert not got.bad and bytes(got.data) == data[: 16 * S]


def test_a_retry_trims_a_stretch_that_shrank() -> None:
    """Sectors 4..9 bad, of which 4 and 9 (the ends) read on a second try: the retry
    pass trims the stretch down to 5..8."""
    read, data, _ = disk(16 * S, bad={5, 6, 7, 8}, once={4, 9})
    got = rescue_area(read, 0, 16 * S, S, retries=1)
    assert got.bad == Extents(((5 * S, 9 * S),))
    assert bytes(got.data[4 * S : 5 * S]) == data[4 * S : 5 * S]
    assert bytes(got.data[9 * S : 10 * S]) == data[9 * S : 10 * S]


def test_other_errors_are_not_taken_for_bad_sectors() -> None:
    def read(offset: int, length: int) -> bytes:
        raise OSError(9, "Bad file descriptor")

    with pytest.raises(OSError):
        rescue_area(read, 0, 4 * S, S)


def test_a_real_failing_block_device(tmp_path: Path) -> None:
    """Bad ranges inside one chunk (a 4 KiB page, and 1 KiB not page-aligned): the
    unreadable sectors found are exactly those, every other byte of the chunk is the
    image's, and the failed reads are the bad sectors, each once (the device's own log
    counts them)."""
    need_fuse()
    image = tmp_path / "disk.img"
    data = random_file(image, 4 * MiB)
    bad = [(MiB + 3 * 4096, 4096), (MiB + 200 * S, 2 * S)]
    with failing_disk(image, [(s, n, -1) for s, n in bad]) as (path, log):
        with as_block_device(path) as loop, DirectReader(loop, S) as reader:
            got = rescue_area(reader.read, MiB, 2 * MiB, S, retries=0, scrape=True)
        eio = sum(1 for line in log.read_text().splitlines() if line.endswith("EIO"))
    assert got.bad == Extents.of((s, s + n) for s, n in bad)
    assert got.failed_reads == 10  # 8 + 2 bad sectors, each read once
    assert eio <= got.failed_reads + 2  # nothing read ahead into the bad area
    for a, b in got.bad.invert(MiB, 2 * MiB):
        assert bytes(got.data[a - MiB : b - MiB]) == data[a:b]


def test_what_the_first_pass_read_is_read_again_in_one_go() -> None:
    """``known_good`` (the part of a first-pass read that came back before it stopped
    short) is read with one ``read_span``, not a sector at a time: the front trim
    starts where the disk failed."""
    read, data, reads = disk(64 * S, bad={40})
    spans = []

    def read_span(offset: int, length: int) -> bytes:
        spans.append((offset, length))
        return data[offset : offset + length]

    got = rescue_area(
        read, 0, 64 * S, S, retries=0, known_good=Extents(((0, 32 * S),)), read_span=read_span
    )
    assert spans == [(0, 32 * S)] and got.bad == Extents(((40 * S, 41 * S),))
    assert min(reads) == 32 * S and got.failed_reads == 1
    assert bytes(got.data[: 40 * S]) == data[: 40 * S]
