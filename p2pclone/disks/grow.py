"""``--grow``: a grown partition's filesystem grown to fill it.

The filesystem's own tool does the work, on a loop device over the partition's byte
range (no partition node is needed: some kernels never create them for loop devices):
ext2/3/4 with ``e2fsck -f -p`` then ``resize2fs``, NTFS with ``ntfsresize --force``.
XFS and btrfs grow only while mounted: the partition is mounted for the moment of the
grow in a private temporary folder (``xfs_growfs``, ``btrfs filesystem resize max``),
then unmounted.  Where a tool or the kernel's driver is missing, the sentence returned
says which command to run once the disk is in its machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from ..errors import TargetError
from ..units import human_bytes
from .tools import loop_over, said

#: the tools each filesystem is grown with, unmounted (ext, NTFS) or mounted (XFS, btrfs)
_OFFLINE = {
    "ext2": [["e2fsck", "-f", "-p"], ["resize2fs"]],
    "ext3": [["e2fsck", "-f", "-p"], ["resize2fs"]],
    "ext4": [["e2fsck", "-f", "-p"], ["resize2fs"]],
    "ntfs": [["ntfsresize", "--force", "--no-progress-bar"]],
}
_MOUNTED = {
    "xfs": (["xfs_growfs"], "xfs_growfs MOUNTPOINT"),
    "btrfs": (["btrfs", "filesystem", "resize", "max"], "btrfs filesystem resize max MOUNTPOINT"),
}


def grow_filesystem(device: str, number: int, start: int, size: int, fs: str) -> str:
    """Grow partition ``number``'s filesystem (``fs``: what the receiver itself found on
    the written partition) to ``size`` bytes; return one sentence saying what was done
    or what to do.

    Raises:
        TargetError: the tool exists but failed (the data is cloned and verified; the
            filesystem keeps its old size).
    """
    try:
        return _grow(device, number, start, size, fs)
    except OSError as exc:  # no loop device
        raise TargetError(
            f"growing the filesystem failed: {exc}; the clone itself is complete and "
            "verified, the filesystem keeps its old size"
        ) from None


def _grow(device: str, number: int, start: int, size: int, fs: str) -> str:
    where = f"partition {number}"
    if fs in _MOUNTED:
        return _grow_mounted(device, where, start, size, fs)
    steps = _OFFLINE.get(fs)
    if steps is None:
        return f"{where} was grown; its filesystem ({fs or 'unknown'}) was left as it was"
    for step in steps:
        if shutil.which(step[0]) is None:
            return f"{where} was grown, but {step[0]} is not installed to grow its {fs}"
    with loop_over(device, start, size) as loop:
        for step in steps:
            # e2fsck -p exits 1 when it fixed something, which is fine before a resize
            _run([*step, loop], ok=(0, 1) if step[0] == "e2fsck" else (0,))
    return f"{where}'s {fs} was grown to fill it ({human_bytes(size)})"


def _grow_mounted(device: str, where: str, start: int, size: int, fs: str) -> str:
    tool, later = _MOUNTED[fs]
    if shutil.which(tool[0]) is None:
        return (
            f"{where} was grown, but {tool[0]} is not installed: grow its {fs} after "
            f"mounting it: {later}"
        )
    with (
        loop_over(device, start, size) as loop,
        tempfile.TemporaryDirectory(prefix="p2pclone-grow-") as mnt,
    ):
        mounted = subprocess.run(["mount", "-t", fs, loop, mnt], capture_output=True, text=True)
        if mounted.returncode != 0:
            return (
                f"{where} was grown, but its {fs} could not be mounted here to grow it "
                f"({said(mounted)}): grow it after mounting it: {later}"
            )
        try:
            _run([*tool, mnt])
        finally:
            subprocess.run(["umount", mnt], capture_output=True)
    return f"{where}'s {fs} was grown to fill it ({human_bytes(size)}), through a temporary mount"


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in ok:
        raise TargetError(
            f"growing the filesystem failed: {argv[0]} said {said(done)!r}; the clone itself is "
            "complete and verified, the filesystem keeps its old size"
        )
    return done.stdout
