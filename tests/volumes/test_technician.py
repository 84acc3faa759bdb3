"""The clone a technician expects (issue 24): nothing dropped without a word, the disk
grown as asked, on real tables and filesystems (tests/volumes/builders.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .builders import MiB, make_disk, need, run, zero_tail

CLI = [sys.executable, "-m", "p2pclone"]


def clone(source: Path | str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "clone", str(source), target, "--yes", "--json", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def done_of(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["event"] == "done", r.stdout
    return last


# -- 1. never a silent drop ------------------------------------------------------------

MARKER = b"p2pclone marker " * 128  # 2 KiB, not zeros


def marked_mbr_disk(path: Path, marker_at: int | None) -> list[tuple[int, int, object]]:
    """A 256 MiB MBR disk, one ext4 partition ending near 181 MiB, zeros after it but for
    a 2 KiB marker at ``marker_at`` (unpartitioned space)."""
    parts = make_disk(path, 256 * MiB, [("ext4", 180 * MiB)], scheme="mbr")
    zero_tail(path, parts)
    if marker_at is not None:
        with open(path, "r+b") as f:
            f.seek(marker_at)
            f.write(MARKER)
    return parts


def test_data_past_a_smaller_targets_end_is_refused_with_what_and_where(
    tmp_path: Path, loop_device
) -> None:
    """Issue 24: a marker in unpartitioned space past a smaller target's end was cut off
    and hashed as zeros — "Done", exit 0, the same root as without it.  Now the clone is
    refused (exit 4) naming the data, where it starts and the size a target needs, and
    the target is untouched.  Negative control (tried): without the sender's look at
    the tail (cut_off's data_past), exit 0 and the marker silently lost."""
    source = tmp_path / "disk.img"
    marked_mbr_disk(source, 240 * MiB)
    before = os.urandom(MiB) * 220
    dev = loop_device(220 * MiB, before)
    r = clone(source, dev)
    assert r.returncode == 4, r.stderr
    assert f"the source holds data past byte {220 * MiB}" in r.stderr, r.stderr
    assert f"the first at byte {240 * MiB}" in r.stderr and "--cut" in r.stderr
    assert "Clone onto a disk of at least 240.0 MiB" in r.stderr, r.stderr
    with open(dev, "rb") as f:
        assert f.read() == before


def test_cut_lets_it_go_and_says_so(tmp_path: Path, loop_device) -> None:
    """With --cut the same clone goes through (exit 0), and neither side calls it whole:
    the done line names where the target stopped and how much data was let go."""
    source = tmp_path / "disk.img"
    parts = marked_mbr_disk(source, 240 * MiB)
    dev = loop_device(220 * MiB, None)
    r = clone(source, dev, "--cut")
    assert r.returncode == 0, r.stderr
    done = done_of(r)
    assert done["cut_at"] == 220 * MiB
    human = subprocess.run([*CLI, "clone", str(source), dev, "--yes", "--cut", "--fresh"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert f"past byte {220 * MiB} not copied" in human.stdout + human.stderr
    start, size, _ = parts[0]
    ext = tmp_path / "p1.img"
    with open(dev, "rb") as f:
        f.seek(start)
        ext.write_bytes(f.read(size))
    run("e2fsck", "-fn", ext)


@pytest.mark.parametrize("marker_at", [None, 200 * MiB], ids=["zeros", "inside-the-target"])
def test_a_smaller_target_takes_what_fits(tmp_path: Path, loop_device, marker_at: int | None):
    """Zeros past the end are no loss (exit 0); a marker past the partitions but inside
    the smaller target is copied, byte for byte (the partition's used blocks are too:
    e2fsck)."""
    need("sfdisk", "e2fsck")
    source = tmp_path / "disk.img"
    parts = marked_mbr_disk(source, marker_at)
    dev = loop_device(220 * MiB, b"\xa5" * (220 * MiB))
    r = clone(source, dev)
    assert r.returncode == 0, r.stderr
    start, size, _ = parts[0]
    with open(source, "rb") as s, open(dev, "rb") as t:
        s.seek(start + size)
        t.seek(start + size)
        assert s.read(220 * MiB - start - size) == t.read(220 * MiB - start - size)
        t.seek(start)
        (tmp_path / "p1.img").write_bytes(t.read(size))
    run("e2fsck", "-fn", tmp_path / "p1.img")


# -- 1. the resize policy ---------------------------------------------------------------

WINDOWS = [("fat32", 100 * MiB), ("msr", 16 * MiB), ("ntfs", 200 * MiB), ("recovery", 128 * MiB)]


def _table(dev: str | Path) -> list[tuple[int, int, int]]:
    """(type, start, end) of each entry of the table, in sfdisk's order (an MBR's
    extended partition among them), the sizes in bytes."""
    table = json.loads(run("sfdisk", "-J", dev))["partitiontable"]
    sector = table.get("sectorsize", 512)
    return [
        (p["type"], p["start"] * sector, (p["start"] + p["size"]) * sector)
        for p in table["partitions"]
    ]


def _slice(path: str | Path, start: int, size: int, out: Path) -> Path:
    with open(path, "rb") as f:
        f.seek(start)
        out.write_bytes(f.read(size))
    return out


def _files(image: Path, how: str = "loop") -> dict[str, bytes]:
    """Every file's bytes in the filesystem image ``image``."""
    from .builders import mounted

    with mounted(image, how) as root:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }


def test_grow_on_the_windows_layout_grows_c_and_keeps_recovery_last(
    tmp_path: Path, loop_device
) -> None:
    """Issue 24: on ESP, MSR, C:, Recovery the 128 MiB Recovery partition took all the
    new space.  Now C: (the largest data partition) takes it and Recovery moves to the
    end of the disk: sgdisk -v finds nothing wrong, both NTFS volumes pass ntfsfix -n,
    every file on them equals the source's, and C:'s NTFS fills its partition.
    Negative control (tried): with the old policy (the partition ending last grows),
    Recovery is grown, nothing moves and C: keeps its size."""
    need("sgdisk", "ntfsfix", "ntfs-3g", "sfdisk")
    source = tmp_path / "win.img"
    parts = make_disk(source, 480 * MiB, WINDOWS)
    dev = loop_device(800 * MiB, None)
    r = clone(source, dev, "--grow")
    assert r.returncode == 0, r.stderr
    notes = [json.loads(x).get("message", "") for x in r.stdout.splitlines()]
    assert any("partition 4 moved" in n for n in notes), notes
    assert any("partition 3's ntfs was grown" in n for n in notes), notes
    assert "No problems found" in run("sgdisk", "-v", dev)
    table = _table(dev)
    (_, c_start, c_end), (_, r_start, r_end) = table[2], table[3]
    assert c_start == parts[2][0]  # C: stays where it was, and ends where Recovery begins
    assert c_end >= r_start - MiB and c_end - c_start > 500 * MiB
    assert r_end >= 800 * MiB - MiB and r_end - r_start == parts[3][1]  # last, its size
    for k, (start, end) in ((2, (c_start, c_end)), (3, (r_start, r_end))):
        after = _slice(dev, start, end - start, tmp_path / f"after{k}.img")
        run("ntfsfix", "-n", after)
        before = _slice(source, parts[k][0], parts[k][1], tmp_path / f"before{k}.img")
        assert _files(after, "ntfs-3g") == _files(before, "ntfs-3g")
    c = _slice(dev, c_start, c_end - c_start, tmp_path / "c.img")
    sectors = int.from_bytes(c.read_bytes()[40:48], "little")
    assert sectors * 512 > (c_end - c_start) - 8 * MiB  # the NTFS fills its partition


def test_grow_on_an_mbr_disk_moves_the_extended_partition_to_the_end(
    tmp_path: Path, loop_device
) -> None:
    """A Linux MBR disk: ext4 as partition 1, swap as a logical partition in an
    extended one after it (Debian's layout).  --grow grows the ext4 and moves the
    extended partition, its boot record and the swap inside, to the end: sfdisk
    --verify is clean, the ext4 passes e2fsck and fills its partition, the swap's
    signature is at its new place, every file equals the source's.  Before: --grow on
    MBR did nothing, without a word (negative control, tried: exit 0, ext4 unchanged)."""
    need("sfdisk", "e2fsck", "dumpe2fs")
    source = tmp_path / "linux.img"
    parts = make_disk(source, 320 * MiB, [("ext4", 200 * MiB), ("swap", 64 * MiB)], scheme="mbr")
    dev = loop_device(600 * MiB, None)
    r = clone(source, dev, "--grow")
    assert r.returncode == 0, r.stderr
    check = subprocess.run(["sfdisk", "--verify", dev], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    table = _table(dev)
    assert any(t[0] in ("5", "f") for t in table), table  # the extended partition
    root = next(t for t in table if t[1] == parts[0][0])
    assert root[2] - root[1] > 400 * MiB  # grown
    swap = max((t for t in table if t[0] == "82"), key=lambda t: t[1])
    assert swap[2] >= 600 * MiB - MiB  # at the end
    with open(dev, "rb") as f:
        f.seek(swap[1] + 4086)
        assert f.read(10) == b"SWAPSPACE2"
    after = _slice(dev, root[1], root[2] - root[1], tmp_path / "root.img")
    run("e2fsck", "-fn", after)
    out = run("dumpe2fs", "-h", after)
    blocks = int(out.split("Block count:")[1].split()[0])
    assert blocks * int(out.split("Block size:")[1].split()[0]) > (root[2] - root[1]) - 8 * MiB
    before = _slice(source, parts[0][0], parts[0][1], tmp_path / "before.img")
    assert _files(after) == _files(before)


def test_grow_n_and_proportional(tmp_path: Path, loop_device) -> None:
    """Two ext4 data partitions and a swap: --grow 1 grows the first (the second and
    the swap move up), --proportional grows both in proportion to their sizes (about
    2:1 here); every filesystem passes e2fsck after."""
    need("sgdisk", "e2fsck")
    source = tmp_path / "two.img"
    make_disk(source, 352 * MiB, [("ext4", 200 * MiB), ("ext4", 100 * MiB), ("swap", 32 * MiB)])
    for extra, check in ((("--grow", "1"), "first"), (("--proportional",), "both")):
        dev = loop_device(700 * MiB, None)
        r = clone(source, dev, *extra)
        assert r.returncode == 0, r.stderr
        assert "No problems found" in run("sgdisk", "-v", dev)
        table = _table(dev)
        sizes = [end - start for _n, start, end in table]
        if check == "first":
            assert sizes[0] > 500 * MiB and sizes[1] == 100 * MiB and sizes[2] == 32 * MiB
        else:
            grow0, grow1 = sizes[0] - 200 * MiB, sizes[1] - 100 * MiB
            assert grow1 > 100 * MiB and abs(grow0 / grow1 - 2) < 0.1, sizes
            assert sizes[2] == 32 * MiB and table[2][2] >= 700 * MiB - 2 * MiB
        for k in (0, 1):
            _n, start, end = table[k]
            run("e2fsck", "-fn", _slice(dev, start, end - start, tmp_path / f"p{k}.img"))


def test_grow_onto_an_image_file_made_larger_first(tmp_path: Path) -> None:
    """A virtual machine's disk: an image file made larger with truncate takes --grow
    (before, nothing happened without a word); a new file (no larger than the source)
    is refused before anything is written, saying how to make it larger."""
    need("sgdisk", "e2fsck")
    source = tmp_path / "disk.img"
    make_disk(source, 96 * MiB, [("fat32", 40 * MiB), ("ext4", 48 * MiB)])
    vm = tmp_path / "vm.img"
    refused = clone(source, str(vm), "--grow")
    assert refused.returncode == 2, refused.stderr
    assert "truncate -s" in refused.stderr and "nothing was written" in refused.stderr
    assert not vm.exists()
    with open(vm, "wb") as f:
        f.truncate(256 * MiB)
    r = clone(source, str(vm), "--grow")
    assert r.returncode == 0, r.stderr
    assert vm.stat().st_size == 256 * MiB
    assert "No problems found" in run("sgdisk", "-v", vm)
    _n, start, end = _table(str(vm))[1]
    assert end - start > 200 * MiB
    run("e2fsck", "-fn", _slice(vm, start, end - start, tmp_path / "p2.img"))


def test_grow_that_cannot_be_done_is_refused_before_anything_is_written(
    tmp_path: Path, loop_device
) -> None:
    """--grow 7 (no such partition), and --grow of a logical partition that is not its
    extended partition's last: exit 2 with the reason, the target untouched."""
    need("sfdisk")
    source = tmp_path / "mbr.img"
    make_disk(source, 200 * MiB, [("ext4", 60 * MiB), ("ext4", 80 * MiB), ("ext4", 40 * MiB)],
              scheme="mbr")  # fmt: skip
    before = b"\x5a" * (300 * MiB)
    dev = loop_device(300 * MiB, before)
    for number, why in (("7", "no partition 7"), ("5", "grows only the last logical")):
        r = clone(source, dev, "--grow", number)
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert "nothing was written" in r.stderr
        with open(dev, "rb") as f:
            assert f.read() == before


def test_too_small_says_how_far_the_last_partition_could_shrink(
    tmp_path: Path, loop_device
) -> None:
    """A target too small for the last partition: refused (exit 4), and the sentence now
    says what to do — how far that ext4 could shrink by resize2fs's own estimate, and the
    commands that would shrink it on the source.  Negative control (tried): without the
    sender's shrink advice, the sentence stops at "the target needs at least"."""
    need("resize2fs", "dumpe2fs")
    source = tmp_path / "disk.img"
    make_disk(source, 160 * MiB, [("fat32", 40 * MiB), ("ext4", 64 * MiB)])
    before = b"\x33" * (96 * MiB)
    dev = loop_device(96 * MiB, before)
    r = clone(source, dev)
    assert r.returncode == 4, r.stderr
    assert "partition 2 of the source ends at byte" in r.stderr
    said = r.stderr.split("could shrink to ")
    assert len(said) == 2 and "resize2fs" in said[1] and "resizepart 2" in said[1], r.stderr
    size, unit = said[1].split()[:2]
    assert unit == "MiB" and float(size) < 64, said[1]
    with open(dev, "rb") as f:
        assert f.read() == before
