"""Partition tables read in user space, and whole disks scanned into one used map.

Tables are written by sgdisk (GPT) and sfdisk (MBR with logical partitions), never by
us; the kernel is not asked (loop devices here get no partition nodes).
"""

from __future__ import annotations

import os
from pathlib import Path

from p2pclone.volumes import scan
from p2pclone.volumes.extents import Extents
from p2pclone.volumes.table import read_table

from .builders import MiB, make_disk, wrongly_free


def reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    return (lambda off, n: os.pread(fd, n, off)), os.fstat(fd).st_size


LAYOUT = [("fat32", 40 * MiB), ("ext4", 96 * MiB), ("swap", 8 * MiB), ("raw", 8 * MiB)]


def test_gpt_disk_maps_every_partition_and_keeps_what_lies_between(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    parts = make_disk(disk, 160 * MiB, LAYOUT)
    got = scan(*reader(disk))
    assert got.table.scheme == "gpt" and got.table.trusted and not got.table.notes
    assert [(p.start, p.size) for p in got.table.partitions] == [(s, n) for s, n, _ in parts]
    assert [p.type_name for p in got.table.partitions][:3] == [
        "EFI system",
        "Linux filesystem",
        "Linux swap",
    ]
    assert [v.fs for v in got.volumes] == ["fat32", "ext4", "swap", ""]
    assert [bool(v.whole) for v in got.volumes] == [False, False, False, True]
    assert "no filesystem recognised" in got.volumes[3].whole
    # Never free: what the oracles call used, both GPTs, the gaps between partitions.
    used = Extents.of(r for _s, _n, u in parts for r in u)
    assert not wrongly_free(got.free, used)
    outside = Extents.of((s, s + n) for s, n, _ in parts).invert(0, 160 * MiB)
    assert not wrongly_free(got.free, outside)
    assert got.free.total > 80 * MiB  # most of the dirty free space is not sent


def test_mbr_with_logical_partitions(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    parts = make_disk(disk, 160 * MiB, LAYOUT, scheme="mbr")
    got = scan(*reader(disk))
    assert got.table.scheme == "mbr" and got.table.trusted
    assert [p.number for p in got.table.partitions] == [1, 5, 6, 7]
    assert [(p.start, p.size) for p in got.table.partitions] == [(s, n) for s, n, _ in parts]
    assert [v.fs for v in got.volumes] == ["fat32", "ext4", "swap", ""]
    used = Extents.of(r for _s, _n, u in parts for r in u)
    assert not wrongly_free(got.free, used)
    # the extended boot records lie outside every partition: kept
    assert not wrongly_free(got.free, Extents.of(got.table.metadata))


def test_a_damaged_primary_gpt_uses_the_backup_and_says_so(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, 160 * MiB, LAYOUT[:2])
    good = scan(*reader(disk))
    with open(disk, "r+b") as f:
        f.seek(512 + 56)
        f.write(b"\xff" * 8)  # inside the primary header's CRC'd bytes
    got = scan(*reader(disk))
    assert got.table.trusted and "backup" in got.table.notes[0]
    assert got.table.partitions == good.table.partitions and got.free == good.free


def test_both_gpts_damaged_copies_the_whole_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, 96 * MiB, LAYOUT[:1])
    size = disk.stat().st_size
    with open(disk, "r+b") as f:
        for at in (512 + 56, size - 512 + 56):
            f.seek(at)
            f.write(b"\xff" * 8)
    got = scan(*reader(disk))
    assert not got.table.trusted and not got.free
    assert "the whole disk is copied" in got.volumes[0].whole


def test_a_partition_array_entry_outside_the_disk_is_not_trusted(tmp_path: Path) -> None:
    """A table that points outside the disk could make us call bytes free that some
    other partition uses: copy whole (read_table on a hand-damaged array, CRC fixed)."""
    import struct
    import zlib

    disk = tmp_path / "disk.img"
    make_disk(disk, 96 * MiB, LAYOUT[:1])
    raw = bytearray(disk.read_bytes())
    entries = 1024
    struct.pack_into("<Q", raw, entries + 40, 10**9)  # entry 1's last LBA
    struct.pack_into("<I", raw, 512 + 88, zlib.crc32(raw[entries : entries + 128 * 128]))
    hdr = bytearray(raw[512 : 512 + 92])
    hdr[16:20] = b"\0\0\0\0"
    struct.pack_into("<I", raw, 512 + 16, zlib.crc32(hdr))
    disk.write_bytes(raw)
    table = read_table(*reader(disk))
    assert not table.trusted and "outside the usable area" in table.notes[0]


def test_a_whole_disk_filesystem_without_a_table(tmp_path: Path) -> None:
    from .builders import make_ext, partclone_used

    image = tmp_path / "fs.img"
    make_ext(image, 64 * MiB)
    got = scan(*reader(image))
    assert got.table.scheme == "none" and [v.fs for v in got.volumes] == ["ext4"]
    assert not wrongly_free(got.free, partclone_used("ext4", image))
