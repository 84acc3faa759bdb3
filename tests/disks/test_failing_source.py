"""A real failing source: a FUSE file (tests/failing_disk.py) whose reads in chosen
ranges fail with EIO, read directly and through a loop device (a failing block
device).  What p2pclone does today: it stops with exit 1 and names the first failing
byte (issue 15 turns this into "read errors are data"); the target is left with what
was written before, and no false "done".

Negative control (the loop-device case, tried): before the fix in
``Source._first_unreadable``, a buffered block-device read stopping short of the error
(it returns fewer bytes instead of failing) was taken for success, and the message
named the chunk's first byte (5242880) instead of the failing sector's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MiB, random_file
from tests.failing_disk import failing_disk


def need_fuse() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a FUSE disk needs root and /dev/fuse")
    pytest.importorskip("mfusepy")


def clone_cli(source: str, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pclone", "clone", source, str(target), "--yes", "--exact"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("via_loop", [False, True], ids=["file", "loop device"])
def test_an_unreadable_sector_is_named_and_nothing_claims_success(
    tmp_path: Path, via_loop: bool
) -> None:
    need_fuse()
    image = tmp_path / "disk.img"
    random_file(image, 8 * MiB)
    bad = 5 * MiB + 3 * 4096
    with failing_disk(image, [(bad, 4096, -1)]) as (disk, log):
        source = str(disk)
        loop = ""
        if via_loop:
            loop = subprocess.run(
                ["losetup", "-r", "--find", "--show", "--direct-io=on", str(disk)],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            source = loop
        try:
            done = clone_cli(source, tmp_path / "target.img")
        finally:
            if loop:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
        assert done.returncode == 1, done.stderr
        assert "Input/output error" in done.stderr and "failing" in done.stderr
        assert f"at byte {bad}" in done.stderr  # narrowed to the failing sector
        assert " EIO" in log.read_text()  # the reads really failed on the device
