"""What a filesystem reader returns, and the signatures that tell filesystems apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .extents import Extents

Read = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class FsMap:
    """One volume's allocation, as far as p2pclone understands it.

    ``free`` holds the byte ranges (relative to the volume's start) that its filesystem
    does not use.  When ``whole`` is set, ``free`` is empty and ``whole`` says why the
    volume is copied whole (one sentence fragment: "a dirty journal").
    """

    fs: str  # "ext4", "vfat", "ntfs", ... or "" when unknown
    free: Extents = Extents()
    whole: str = ""
    #: the filesystem's own size in bytes (what its superblock claims), 0 if unknown
    fs_size: int = 0

    @classmethod
    def copy_whole(cls, fs: str, why: str) -> FsMap:
        return cls(fs, Extents(), why)


class Unsupported(Exception):
    """A reader met something it does not fully understand: copy the volume whole.
    The message is the reason, as a fragment ("an unknown feature flag 0x80000")."""


def probe(read: Read, size: int) -> str:
    """The filesystem or volume kind at the start of ``read`` ("" if unknown)."""
    head = read(0, min(size, 4096))
    if len(head) < 512:
        return ""
    if head[:6] == b"LUKS\xba\xbe":
        return "luks"
    if head[3:11] == b"-FVE-FS-":
        return "bitlocker"
    if head[512:520] == b"LABELONE":
        return "lvm"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[3:11] == b"EXFAT   ":
        return "exfat"
    if head[:4] == b"XFSB":
        return "xfs"
    if size >= 2048 and read(1024 + 0x38, 2) == b"\x53\xef":
        return "ext"
    if size >= 0x10048 and read(0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    if len(head) == 4096 and head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if _is_fat(head):
        return "fat"
    return ""


def _is_fat(head: bytes) -> bool:
    if head[510:512] != b"\x55\xaa" or head[0] not in (0xEB, 0xE9):
        return False
    bps = int.from_bytes(head[11:13], "little")
    spc = head[13]
    return (
        bps in (512, 1024, 2048, 4096)
        and spc in (1, 2, 4, 8, 16, 32, 64, 128)
        and head[16] in (1, 2)  # number of FATs
        and int.from_bytes(head[14:16], "little") > 0  # reserved sectors
    )
