"""Linux swap: only the header page holds anything worth keeping.

A swap area's signature sits in the last 10 bytes of its first page ("SWAPSPACE2");
the rest is scratch that the next boot overwrites.  A swap area holding a
hibernation image carries another signature (S1SUSPEND, ...) and is not recognised
as swap, so it is copied whole.
"""

from __future__ import annotations

from .extents import Extents
from .fs import FsMap, Read, Unsupported

PAGE = 4096


def read_map(read: Read, size: int) -> FsMap:
    # Only 4 KiB pages are recognised (fs.probe looks at byte 4086): on a machine with
    # larger pages the signature lies elsewhere and the area is copied whole.
    if read(PAGE - 10, 10) not in (b"SWAPSPACE2", b"SWAP-SPACE"):
        raise Unsupported("no swap signature in a 4 KiB page")
    return FsMap("swap", Extents(((PAGE, size),)) if size > PAGE else Extents(), fs_size=size)
