"""Targets of another size: the GPT fitted to the new end, checked by sgdisk -v.

sgdisk (gdisk's scriptable twin) is the oracle: it must find no problem in the table
of a clone, whatever the target's size; the filesystems pass their fsck.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pclone.volumes.geometry import GeometryError, relocate_gpt
from p2pclone.volumes.table import read_table

from .builders import MiB, make_disk, need, run, zero_tail


def sgdisk_ok(path: Path | str) -> bool:
    out = subprocess.run(["sgdisk", "-v", str(path)], capture_output=True, text=True)
    return "No problems found" in out.stdout


def gpt_disk(path: Path, size: int, parts_mib: list[int]) -> None:
    need("sgdisk")
    with open(path, "wb") as f:
        f.truncate(size)
    args = []
    for k, mib in enumerate(parts_mib, 1):
        args += ["-n", f"{k}:0:+{mib}M"]
    run("sgdisk", *args, path)


def fitted(src: Path, dst: Path, new_size: int) -> None:
    """Copy what fits of ``src`` into a ``new_size`` file and apply relocate_gpt."""
    data = src.read_bytes()[:new_size]
    with open(dst, "wb") as f:
        f.write(data)
        f.truncate(new_size)
    fd = os.open(dst, os.O_RDWR)
    try:
        writes = relocate_gpt(lambda o, n: os.pread(fd, n, o), src.stat().st_size, new_size, 512)
        for offset, chunk in writes:
            os.pwrite(fd, chunk, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("new_mib", [64, 100, 256])
def test_a_gpt_fitted_to_a_new_size_passes_sgdisk(tmp_path: Path, new_mib: int) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    gpt_disk(src, 100 * MiB, [20, 30])  # partitions end at 51 MiB
    assert sgdisk_ok(src)
    copy = tmp_path / "copy.img"
    copy.write_bytes(src.read_bytes())
    with open(copy, "r+b") as f:  # the plain copy onto a bigger disk is what users hit
        f.truncate(256 * MiB)
    assert not sgdisk_ok(copy)
    fitted(src, dst, new_mib * MiB)
    assert sgdisk_ok(dst), run("sgdisk", "-v", dst)
    before = read_table(*_reader(src))
    after = read_table(*_reader(dst))
    assert after.trusted and not after.notes
    assert after.partitions == before.partitions
    assert after.gpt is not None and after.gpt.backup_lba == new_mib * MiB // 512 - 1


def test_a_partition_past_the_new_end_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    gpt_disk(src, 100 * MiB, [20, 30])
    with pytest.raises(GeometryError, match="partition 2 ends at byte 53477376"):
        fitted(src, tmp_path / "dst.img", 50 * MiB)


def _reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    return (lambda o, n: os.pread(fd, n, o)), os.fstat(fd).st_size


def clone_cli(source: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", str(source), target, "--yes", "--verify",
         "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


LAYOUT = [("fat32", 40 * MiB), ("ext4", 64 * MiB)]  # ends near 105 MiB of 160


def table_and_ext4_check(dev: str, ext4: tuple[int, int, object], tmp_path: Path) -> None:
    """sgdisk -v finds no problem in the table, e2fsck -fn none in the ext4 partition."""
    assert sgdisk_ok(dev), run("sgdisk", "-v", dev)
    start, size, _ = ext4
    ext = tmp_path / "ext.img"
    with open(dev, "rb") as f:
        f.seek(start)
        ext.write_bytes(f.read(size))
    run("e2fsck", "-fn", ext)


@pytest.mark.parametrize("target_size", [256 * MiB, 128 * MiB + 512 * 1024])
def test_a_disk_cloned_onto_a_bigger_or_smaller_disk(
    tmp_path: Path, loop_device, target_size: int
) -> None:
    """Onto a loop device of 256 MiB (bigger) and of 128.5 MiB (smaller, every partition
    fits; the end falls inside a chunk): exit 0, sgdisk -v finds no problem, the ext4
    partition passes e2fsck.  Negative control (tried): without the sender's matching
    cut (sender._cut_off), the smaller clone fails its verify (exit 6)."""
    need("e2fsck", "sgdisk")
    source = tmp_path / "source.img"
    parts = make_disk(source, 160 * MiB, LAYOUT)
    zero_tail(source, parts)  # nothing past the partitions that a smaller disk would lose
    dev = loop_device(target_size, None)
    done = clone_cli(source, dev)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["event"] == "done" and last["verified"]
    notes = [json.loads(line) for line in done.stdout.splitlines()]
    assert any("GPT's backup was moved" in n.get("message", "") for n in notes)
    table_and_ext4_check(dev, parts[1], tmp_path)


def test_a_target_too_small_for_a_partition_is_refused_untouched(
    tmp_path: Path, loop_device
) -> None:
    source = tmp_path / "source.img"
    make_disk(source, 160 * MiB, LAYOUT)
    before = os.urandom(MiB) * 96
    dev = loop_device(96 * MiB, before)
    done = clone_cli(source, dev)
    assert done.returncode == 4
    assert "partition 2 of the source ends at byte" in done.stderr
    assert "nothing was written" in done.stderr
    with open(dev, "rb") as f:
        assert f.read() == before


def test_an_image_restored_onto_a_smaller_disk(tmp_path: Path, loop_device) -> None:
    """The image player masks what the smaller target cuts off (its stored payloads
    cannot be sent as they are there): exit 0, sgdisk -v and e2fsck find nothing.
    Negative control (tried): sending the stored payload of the chunk the cut falls
    in fails the verify ("the source changed since it was cloned", exit 6)."""
    need("e2fsck", "sgdisk")
    source, image = tmp_path / "source.img", tmp_path / "disk.p2pc"
    parts = make_disk(source, 160 * MiB, LAYOUT)
    zero_tail(source, parts)
    env = {**os.environ, "P2PCLONE_PASSPHRASE": "image-pass-phrase"}
    saved = subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", str(source), f"file://{image}"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    dev = loop_device(128 * MiB + 512 * 1024, None)  # cut inside a chunk
    done = subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", f"file://{image}", dev, "--yes", "--verify"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table_and_ext4_check(dev, parts[1], tmp_path)


def test_discard_tells_the_target_its_free_space_holds_nothing(tmp_path: Path, loop_device) -> None:
    """--discard on a loop device: the kernel punches the free ranges out of its backing
    file, which then reads zeros there (the old bytes are gone), while every used byte
    is the source's and the run says how much it discarded."""
    from p2pclone.volumes import scan

    source = tmp_path / "source.img"
    make_disk(source, 160 * MiB, LAYOUT)
    dev = loop_device(160 * MiB, b"\xa5" * (160 * MiB))
    done = subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", str(source), dev, "--yes", "--discard",
         "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = [json.loads(line).get("message", "") for line in done.stdout.splitlines()]
    assert any(n.startswith("discarded the") for n in notes), notes
    free = scan(*_reader(source)).free
    with open(dev, "rb") as f:
        got = f.read()
    src = source.read_bytes()
    assert all(got[a:b] == src[a:b] for a, b in free.invert(0, len(src)))
    assert all(got[a:b] == bytes(b - a) for a, b in free)  # discarded: no old bytes left


@pytest.mark.parametrize("last", ["ext4", "ntfs"])
def test_grow_fills_a_bigger_disk(tmp_path: Path, loop_device, last: str) -> None:
    """--grow onto a disk twice the size: the last partition reaches the end (sgdisk -v
    clean), its filesystem fills it (dumpe2fs / ntfsinfo-free check: the filesystem's
    own size), and it passes its fsck."""
    need("sgdisk", "e2fsck", "resize2fs", "ntfsresize", "ntfsfix")
    source = tmp_path / "source.img"
    parts = make_disk(source, 160 * MiB, [("fat32", 40 * MiB), (last, 64 * MiB)])
    dev = loop_device(320 * MiB, None)
    done = subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", str(source), dev, "--yes", "--grow",
         "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = [json.loads(line).get("message", "") for line in done.stdout.splitlines()]
    assert any("was grown to fill it" in n for n in notes), notes
    assert sgdisk_ok(dev)
    table = read_table(*_reader_dev(dev))
    start, _size, _ = parts[1]
    grown = table.partitions[1]
    assert grown.start == start and grown.end > 300 * MiB
    part = tmp_path / "part.img"
    with open(dev, "rb") as f:
        f.seek(grown.start)
        part.write_bytes(f.read(grown.size))
    if last == "ext4":
        run("e2fsck", "-fn", part)
        out = run("dumpe2fs", "-h", part)
        blocks = int(out.split("Block count:")[1].split()[0])
        bsize = int(out.split("Block size:")[1].split()[0])
        assert blocks * bsize > grown.size - 8 * MiB
    else:
        run("ntfsfix", "-n", part)
        sectors = int.from_bytes(part.read_bytes()[40:48], "little")
        assert sectors * 512 > grown.size - 8 * MiB


def _reader_dev(dev: str):
    fd = os.open(dev, os.O_RDONLY)
    return (lambda o, n: os.pread(fd, n, o)), os.lseek(fd, 0, os.SEEK_END)


def test_an_mbr_disk_onto_a_smaller_disk(tmp_path: Path, loop_device) -> None:
    """MBR, the same rule: every partition (here a logical one, in an extended
    partition) ends inside the smaller disk, so the clone is accepted; sfdisk --verify
    finds nothing wrong and the ext4 partition passes e2fsck."""
    need("sfdisk", "e2fsck")
    source = tmp_path / "source.img"
    parts = make_disk(source, 160 * MiB, LAYOUT, scheme="mbr")
    zero_tail(source, parts)
    dev = loop_device(128 * MiB + 512 * 1024, None)
    done = clone_cli(source, dev)
    assert done.returncode == 0, done.stderr
    assert "GPT" not in done.stdout  # nothing to move on an MBR disk
    check = subprocess.run(["sfdisk", "--verify", dev], capture_output=True, text=True)
    assert check.returncode == 0 and "Remaining" in check.stdout, check.stdout + check.stderr
    start, size, _ = parts[1]
    ext = tmp_path / "ext.img"
    with open(dev, "rb") as f:
        f.seek(start)
        ext.write_bytes(f.read(size))
    run("e2fsck", "-fn", ext)
