"""``--grow``: the last partition's filesystem grown to fill the partition extended for it.

The filesystem's own tool does the work, on a loop device over the partition's byte
range (no partition node is needed: some kernels never create them for loop devices):
ext2/3/4 with ``e2fsck -f -p`` then ``resize2fs``, NTFS with ``ntfsresize --force``.
XFS and btrfs grow only while mounted, so the sentence returned says how.
"""

from __future__ import annotations

import shutil
import subprocess

from ..errors import TargetError
from ..units import human_bytes


def grow_filesystem(device: str, number: int, start: int, size: int, fs: str) -> str:
    """Grow partition ``number``'s filesystem (``fs``: what the receiver itself found on
    the written partition) to ``size`` bytes; return one sentence saying what was done
    or what to do.

    Raises:
        TargetError: the tool exists but failed (the data is cloned and verified; the
            filesystem keeps its old size).
    """
    where = f"partition {number}"
    if fs in ("ext2", "ext3", "ext4"):
        steps = [["e2fsck", "-f", "-p"], ["resize2fs"]]
    elif fs == "ntfs":
        steps = [["ntfsresize", "--force", "--no-progress-bar"]]
    elif fs == "xfs":
        return f"{where} was extended; grow its XFS after mounting it: xfs_growfs MOUNTPOINT"
    elif fs == "btrfs":
        return (
            f"{where} was extended; grow its btrfs after mounting it: "
            "btrfs filesystem resize max MOUNTPOINT"
        )
    else:
        return f"{where} was extended; its filesystem ({fs or 'unknown'}) was left as it was"
    for step in steps:
        if shutil.which(step[0]) is None:
            return f"{where} was extended, but {step[0]} is not installed to grow its {fs}"
    loop = _run(
        ["losetup", "--find", "--show", "-o", str(start), "--sizelimit", str(size), device]
    ).strip()
    try:
        for step in steps:
            # e2fsck -p exits 1 when it fixed something, which is fine before a resize
            _run([*step, loop], ok=(0, 1) if step[0] == "e2fsck" else (0,))
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    return f"{where}'s {fs} was grown to fill it ({human_bytes(size)})"


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in ok:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TargetError(
            f"growing the filesystem failed: {argv[0]} said {why[0]!r}; the clone itself is "
            "complete and verified, the filesystem keeps its old size"
        )
    return done.stdout
