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
