"""A disk as a person recognises it: path, size, model, serial and its partitions.

Shown before a target is overwritten.  Returns text; the CLI decides where it goes.
"""

from __future__ import annotations

import shutil
import subprocess

from ..units import human_bytes
from .device import DeviceInfo


def describe(path: str, size: int, device: DeviceInfo | None) -> str:
    """Lines for ``path``: size, and for a block device (``device``) model, serial and
    the current partitions (as ``lsblk`` lists them when it is installed, else their
    names)."""
    lines = [f"  {path}  {human_bytes(size)}"]
    if device is not None:
        lines[0] += f"  model: {device.model or 'unknown'}  serial: {device.serial or 'unknown'}"
        if device.partitions:
            listing = _lsblk(path)
            lines.append("  current partitions:")
            lines += [f"    {ln}" for ln in (listing.splitlines()[1:] or device.partitions)]
        else:
            lines.append("  no partitions")
    return "\n".join(lines)


def _lsblk(path: str) -> str:
    """``lsblk``'s table for ``path`` (the disk's own line first), or "" without lsblk."""
    if not shutil.which("lsblk"):
        return ""
    return subprocess.run(
        ["lsblk", "-no", "NAME,SIZE,FSTYPE,LABEL", path],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.rstrip()
