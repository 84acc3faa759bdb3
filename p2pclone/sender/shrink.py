"""What to do when the receiver's disk is too small: how far the source's last
partition could shrink, by its filesystem's own tool, and the commands that would do it.

Asked only when a receiver refuses for size (its ERROR's code ``too-small``): the
estimate costs a read of the filesystem's metadata, which no clone that fits should
pay.  The tools run read-only (``resize2fs -P``, ``ntfsresize --info --no-action``) on
a read-only loop device over the partition's byte range; nothing is changed on the
source.  Blocking: run in a worker thread.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ..disks import Source
from ..pipeline import DiskSource
from ..units import human_bytes


def shrink_advice(source: DiskSource) -> str:
    """One sentence (starting with "; ") saying how far the partition that ends last
    could shrink and how, or "" when that cannot be told (an image as SOURCE, another
    filesystem, a tool or root missing)."""
    if not isinstance(source, Source) or shutil.which("losetup") is None:
        return ""
    info = source.info
    ends = [(v, k[3:]) for k, v in info.items() if k.startswith("end") and isinstance(v, int)]
    if not ends:
        return ""
    _end, n = max(ends)
    start, fs = info.get(f"start{n}"), str(info.get(f"fs{n}", ""))
    if not isinstance(start, int):
        return ""
    size = _end - start
    try:
        minimum = _estimate(source.path, start, size, fs)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ""
    if minimum is None:
        return ""
    first = ""  # a disk image: its partitions through a loop device first
    if source.is_block:
        device = f"{source.path}{'p' if source.path[-1:].isdigit() else ''}{n}"
    else:
        device, first = f"${{LOOP}}p{n}", f"LOOP=$(losetup --find --show -P {source.path}); "
    if fs.startswith("ext"):
        commands = f"e2fsck -f {device} && resize2fs {device} {_ceil_mib(minimum)}M"
    else:
        commands = f"ntfsresize --size {_ceil_mib(minimum)}M {device}"
    commands = first + commands
    return (
        f"; partition {n}'s {fs} could shrink to {human_bytes(minimum)} (its own tool's "
        f"estimate): on this machine, with it unmounted, `{commands}`, then shrink "
        f"partition {n} to match (e.g. `parted {source.path} resizepart {n} …`) and clone "
        "again"
    )


def _ceil_mib(n: int) -> int:
    return -(-n // (1 << 20))


def _estimate(path: str, start: int, size: int, fs: str) -> int | None:
    """The filesystem tool's estimate of its minimum size in bytes, or None."""
    if fs.startswith("ext") and shutil.which("resize2fs") and shutil.which("dumpe2fs"):
        argv, parse = ["resize2fs", "-P"], _resize2fs
    elif fs == "ntfs" and shutil.which("ntfsresize"):
        argv, parse = ["ntfsresize", "--info", "--force", "--no-action"], _ntfsresize
    else:
        return None
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", "-o", str(start), "--sizelimit",
         str(size), path],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if loop.returncode != 0:
        return None
    dev = loop.stdout.strip()
    try:
        done = subprocess.run([*argv, dev], capture_output=True, text=True, timeout=120)
        block = 1
        if argv[0] == "resize2fs":
            head = subprocess.run(["dumpe2fs", "-h", dev], capture_output=True, text=True,
                                  timeout=60).stdout  # fmt: skip
            found = re.search(r"Block size:\s+(\d+)", head)
            if found is None:
                return None
            block = int(found.group(1))
        return parse(done.stdout + done.stderr, block)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _resize2fs(out: str, block: int) -> int | None:
    m = re.search(r"Estimated minimum size of the filesystem:\s*(\d+)", out)
    return int(m.group(1)) * block if m else None


def _ntfsresize(out: str, block: int) -> int | None:
    m = re.search(r"You might resize at (\d+) bytes", out)
    return int(m.group(1)) if m else None
