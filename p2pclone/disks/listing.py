"""What ``p2pclone disks`` shows of each disk's contents: its partitions (the kernel's
nodes), and of each its size, filesystem and labels as blkid reads them from the
device itself (``blkid -p``: no cache, no udev), so a person picks the right disk by
what is on it, not only by its name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .device import DeviceInfo
from .tools import run


def probe(path: str) -> dict[str, str]:
    """blkid's low-level probe of ``path``: TYPE, LABEL, PARTLABEL, PTTYPE…
    (empty when blkid is missing or finds nothing)."""
    if not shutil.which("blkid"):
        return {}
    done = run(["blkid", "-p", "-o", "export", path])
    fields = (line.partition("=") for line in done.stdout.splitlines())
    # export format escapes spaces and the like with a backslash: "EFI\\ system"
    return {key: re.sub(r"\\(.)", r"\1", value) for key, sep, value in fields if sep}


def contents(disk: DeviceInfo) -> list[dict[str, str | int]]:
    """The disk's partitions, each ``{path, size, fs, label, partlabel}``; a disk with
    no partition nodes but a filesystem on the whole of it: that one."""
    names = disk.partitions or [Path(disk.path).name]
    out: list[dict[str, str | int]] = []
    for name in names:
        path = f"/dev/{name}"
        sectors = (Path("/sys/class/block") / name / "size").read_text().strip()
        found = probe(path)
        if name == Path(disk.path).name and not found.get("TYPE"):
            continue  # the whole disk, holding a table or nothing known
        out.append(
            {
                "path": path,
                "size": int(sectors or 0) * 512,
                "fs": found.get("TYPE", ""),
                "label": found.get("LABEL", ""),
                "partlabel": found.get("PARTLABEL") or found.get("PART_ENTRY_NAME", ""),
            }
        )
    return out


def table(disk: DeviceInfo) -> str:
    """The disk's partition table as blkid names it ("gpt", "dos"), or ""."""
    return probe(disk.path).get("PTTYPE", "")


__all__ = ["contents", "probe", "table"]
