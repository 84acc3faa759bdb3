"""Which files a failing disk's unreadable ranges fall in, where the filesystem can say
(issue 24 §6): a technician restores those files from a backup instead of wondering.

The partitions come from the plan's source map (volumes/layout.py: start, end and the
filesystem the sender's scan found), so the failing disk is not read again for its
table.  Each partition the ranges touch whose filesystem is ext2/3/4 or NTFS is opened
read-only through a loop device over its bytes and asked by its own tool: ``debugfs``
(``icheck`` block → inode, ``ncheck`` inode → path), ``ntfscluster -s`` (sector range
→ inode and path).  Other filesystems, a disk with no partition table (``--exact``, a
whole-disk filesystem), a missing tool: nothing is named; the partitions still are
(``partitions_hit``).  Blocking; best-effort, never raises.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping

from ..volumes.layout import partitions
from .tools import loop_over, run

#: at most this many blocks are asked about per partition (a long dead stretch)
MAX_BLOCKS = 4096
#: at most this many names are given (and how many more there are)
MAX_NAMES = 20


def files_hit(path: str, info: Mapping[str, object], ranges: list[list[int]]) -> list[str]:
    """The files (``/home/ann/thesis.odt (partition 2)``) the ``[offset, length]``
    ranges of the disk ``path`` fall in, its partitions as the plan's source map
    ``info`` has them; filesystem metadata by its own names."""
    if not ranges or not shutil.which("losetup"):
        return []
    names: list[str] = []
    for start, end, number, fs in partitions(info):
        spans = [(max(o, start) - start, min(o + n, end) - start)
                 for o, n in ranges if o < end and start < o + n]  # fmt: skip
        if not spans or not (fs.startswith("ext") or fs == "ntfs"):
            continue
        try:
            with loop_over(path, start, end - start, read_only=True) as dev:
                found = _ntfs(dev, spans) if fs == "ntfs" else _ext(dev, spans)
        except OSError:
            continue
        names += [f"{name} (partition {number})" for name in found]
    if len(names) > MAX_NAMES:
        return [*names[:MAX_NAMES], f"and {len(names) - MAX_NAMES} more"]
    return names


def _ext(dev: str, spans: list[tuple[int, int]]) -> list[str]:
    """debugfs: the blocks' inodes, then their paths (an inode without one by number)."""
    if not shutil.which("debugfs"):
        return []
    head = run(["dumpe2fs", "-h", dev]).stdout
    found = re.search(r"^Block size:\s+(\d+)", head, re.M)
    if not found:
        return []
    bs = int(found.group(1))
    blocks = sorted({b for a, e in spans for b in range(a // bs, (e - 1) // bs + 1)})
    listed = run(["debugfs", "-R", "icheck " + " ".join(map(str, blocks[:MAX_BLOCKS])), dev])
    inodes = sorted({int(f[1]) for f in _rows(listed.stdout) if f[1].isdigit()})
    if not inodes:
        return []
    paths = run(["debugfs", "-R", "ncheck -c " + " ".join(map(str, inodes)), dev])
    named = {int(f[0]): f[1] for f in _rows(paths.stdout) if f[0].isdigit()}
    return [named.get(i, f"inode {i} (no path: filesystem metadata or a deleted file)")
            for i in inodes]  # fmt: skip


def _ntfs(dev: str, spans: list[tuple[int, int]]) -> list[str]:
    """ntfscluster: the files with data in each sector range."""
    if not shutil.which("ntfscluster"):
        return []
    out: list[str] = []
    for a, e in spans:
        listed = run(["ntfscluster", "-s", f"{a // 512}-{(e - 1) // 512}", dev]).stdout
        for line in listed.splitlines():
            if (m := re.match(r"Inode \d+ (/.*?)(/\$DATA)?$", line)) and m.group(1) not in out:
                out.append(m.group(1))
    return out


def _rows(text: str) -> list[list[str]]:
    """debugfs's table lines (tab- or space-separated), its header left out."""
    return [line.split(None, 1) for line in text.splitlines()[1:] if len(line.split(None, 1)) == 2]


__all__ = ["files_hit"]
