"""Choose what to copy (issue 24, §3): ``--partitions 1,3`` / ``--skip 4`` on clone,
send, save and restore (Clonezilla's saveparts and restoreparts), on real tables and
filesystems (tests/volumes/builders.py): the partitions chosen arrive whole and check
clean, the others keep what the target held (or become zeros with ``--exact``), the
table is copied as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from p2pclone.volumes.table import read_table

from .builders import MiB, make_disk, need
from .test_technician import clone, done_of

CLI = [sys.executable, "-m", "p2pclone"]


def table_of(data: bytes):  # noqa: ANN201 - a volumes.table.Table
    return read_table(lambda o, n: data[o : o + n], len(data))


def test_partitions_on_a_linux_mbr_disk_with_logicals(tmp_path: Path, loop_device) -> None:
    """MBR, ext4 primary + swap and ext4 as logicals: ``--partitions 1,6`` copies the
    two ext4s (fsck clean, bytes equal where used), leaves the swap's space as the
    target had it and copies the table with its boot records.  The plan line says what
    is left out.  Negative control (tried): with the left-out partitions not added to
    the free map, the swap's space is overwritten and the "left as it was" assertion
    fails."""
    need("sfdisk", "mkswap")
    source = tmp_path / "mbr.img"
    make_disk(
        source, 128 * MiB, [("ext4", 48 * MiB), ("swap", 16 * MiB), ("ext4", 40 * MiB)],
        scheme="mbr",
    )  # fmt: skip
    src = source.read_bytes()
    p1, p5, p6 = table_of(src).partitions
    assert (p1.number, p5.number, p6.number) == (1, 5, 6)
    old = os.urandom(128 * MiB)
    dev = loop_device(128 * MiB, old)
    human = subprocess.run(
        [*CLI, "clone", str(source), dev, "--yes", "--partitions", "1,6"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "partition 5 is not copied (left as it is on the target)" in human.stdout
    with open(dev, "rb") as f:
        now = f.read()
    assert now[p5.start : p5.end] == old[p5.start : p5.end]  # the swap: as it was
    assert table_of(now).partitions == table_of(src).partitions  # the table, EBRs too
    for p in (p1, p6):
        assert now[p.start : p.start + 64 * 1024] == src[p.start : p.start + 64 * 1024]
        with open(tmp_path / "part.img", "wb") as f:
            f.write(now[p.start : p.end])
        subprocess.run(["e2fsck", "-fn", str(tmp_path / "part.img")], check=True,
                       capture_output=True)  # fmt: skip


def test_skip_with_exact_zeroes_what_it_leaves_out(tmp_path: Path, loop_device) -> None:
    """``--skip 5 --exact``: every byte of the others, and zeros where partition 5 was
    (a forensic copy without the swap)."""
    need("sfdisk", "mkswap")
    source = tmp_path / "mbr.img"
    make_disk(source, 96 * MiB, [("ext4", 48 * MiB), ("swap", 16 * MiB)], scheme="mbr")
    src = source.read_bytes()
    p1, p5 = table_of(src).partitions
    dev = loop_device(96 * MiB, os.urandom(96 * MiB))
    r = clone(source, dev, "--skip", "5", "--exact")
    assert r.returncode == 0, r.stderr
    with open(dev, "rb") as f:
        now = f.read()
    assert now[p5.start : p5.end] == bytes(p5.size)
    assert now[: p5.start - 512] == src[: p5.start - 512]  # the rest, free space too
    assert now[p5.end :] == src[p5.end :]


def test_saveparts_and_restoreparts_on_the_windows_layout(tmp_path: Path, loop_device) -> None:
    """The Windows layout (ESP, MSR, C:, Recovery): an image saved with ``--skip 4``
    holds no Recovery; restored with ``--partitions 3`` onto a disk that has its own
    ESP and Recovery, only C: changes.  ``image info`` names what the image left out."""
    need("sgdisk", "mkntfs", "ntfsfix")
    source = tmp_path / "win.img"
    make_disk(
        source, 160 * MiB,
        [("fat32", 40 * MiB), ("msr", 16 * MiB), ("ntfs", 64 * MiB), ("recovery", 24 * MiB)],
    )  # fmt: skip
    src = source.read_bytes()
    esp, _msr, c, recovery = table_of(src).partitions
    image = tmp_path / "win.p2pc"
    env = {**os.environ, "P2PCLONE_PASSPHRASE": "a long enough passphrase"}
    saved = subprocess.run(
        [*CLI, "send", str(source), f"file://{image}", "--skip", "4", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert done_of(saved)["free_bytes"] >= recovery.size
    info = subprocess.run(
        [*CLI, "image", "info", f"file://{image}"], capture_output=True, text=True, env=env
    )
    assert "partition 4 is not copied" in info.stdout, info.stdout
    old = os.urandom(160 * MiB)
    dev = loop_device(160 * MiB, old)
    restored = subprocess.run(
        [*CLI, "clone", f"file://{image}", dev, "--yes", "--partitions", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    with open(dev, "rb") as f:
        now = f.read()
    for kept in (esp, recovery):
        assert now[kept.start : kept.end] == old[kept.start : kept.end]
    with open(tmp_path / "c.img", "wb") as f:
        f.write(now[c.start : c.end])
    subprocess.run(["ntfsfix", "--no-action", str(tmp_path / "c.img")], check=True,
                   capture_output=True)  # fmt: skip
    # a partition the image left out cannot be restored from it
    again = subprocess.run(
        [*CLI, "clone", f"file://{image}", dev, "--yes", "--partitions", "4"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert again.returncode == 2, again.stderr
    assert "partition 4 is not in this image" in again.stderr, again.stderr


def test_a_wrong_choice_is_refused_before_anything_is_written(tmp_path: Path, loop_device) -> None:
    """A number the table does not have (listing those it has), no table at all, or
    nothing left to copy: exit 2, and the target untouched."""
    need("sgdisk")
    source = tmp_path / "gpt.img"
    make_disk(source, 48 * MiB, [("ext4", 20 * MiB), ("raw", 8 * MiB)])
    old = os.urandom(48 * MiB)
    dev = loop_device(48 * MiB, old)
    cases = [
        (["--partitions", "3"], "has no partition 3; its partitions are 1 (Linux filesystem"),
        (["--skip", "1,2"], "--skip 1,2 leaves nothing of"),
        (["--partitions", "1,x"], "is not a list of partition numbers"),
        (["--partitions", "1", "--skip", "2"], "not allowed with argument"),
    ]
    for extra, said in cases:
        r = clone(source, dev, *extra)
        assert r.returncode == 2 and said in r.stderr, (extra, r.stderr)
    bare = tmp_path / "fs.img"
    bare.write_bytes(src := source.read_bytes()[MiB : 21 * MiB])  # the ext4 alone
    assert src[1024 + 0x38 : 1024 + 0x3A] == b"\x53\xef"
    r = clone(bare, dev, "--partitions", "1")
    assert r.returncode == 2 and "has no partition table to choose from" in r.stderr
    with open(dev, "rb") as f:
        assert f.read() == old
