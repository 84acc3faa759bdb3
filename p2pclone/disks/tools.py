"""The filesystems' own tools, run on a loop device over one partition's bytes.

No partition node is needed (some kernels never create them for loop devices): a loop
device over ``size`` bytes from ``start`` of the disk or image file is the partition.
Used by ``--grow`` (disks/grow.py) and ``--new-ids`` (disks/identity.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def loop_over(device: str, start: int, size: int, *, read_only: bool = False) -> Iterator[str]:
    """A loop device over ``size`` bytes of ``device`` from ``start``.

    Raises:
        OSError: losetup failed (no free loop device, not root).
    """
    made = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            *(["--read-only"] if read_only else []),
            "-o",
            str(start),
            "--sizelimit",
            str(size),
            device,
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise OSError(f"losetup failed: {said(made)}")
    loop = made.stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def said(done: subprocess.CompletedProcess[str]) -> str:
    """A tool's last line of output, for a sentence quoting it."""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1].strip() if lines else "no output"


def missing(role: str, path: str) -> str:
    """The sentence for a SOURCE or TARGET that does not exist: under /dev, a disk
    this machine does not have (and `p2pclone disks` lists those it has)."""
    if os.path.realpath(path).startswith("/dev/"):
        return (
            f"the {role} {path} does not exist: this machine has no such disk; "
            "`p2pclone disks` lists its disks with their partitions, filesystems and labels"
        )
    return f"the {role} {path} does not exist: check the path"


def run(argv: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing what it says (never raises for its exit status)."""
    return subprocess.run(argv, capture_output=True, text=True, input=stdin)


__all__ = ["loop_over", "missing", "run", "said"]
