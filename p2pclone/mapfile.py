"""GNU ddrescue's mapfile format, for ``--mapfile``: the clone's outcome per byte range,
readable by ``ddrescuelog`` and ddrescueview.

Every byte of the source is either "+" (finished: on the target as the source holds
it) or "-" (a bad sector: unreadable, zeros on the target).  Ranges are written in
order, adjacent ones of one status merged, as ddrescue writes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile

from . import __version__


def render(size: int, unreadable: list[list[int]], command: str = "") -> str:
    """The mapfile of a ``size``-byte source whose ``unreadable`` ``[offset, length]``
    pairs (sorted, merged) could not be read."""
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"# Mapfile. Created by p2pclone {__version__} (GNU ddrescue's format)",
        f"# Command line: {command}" if command else "# Command line: p2pclone",
        f"# Start time:   {now}",
        f"# Current time: {now}",
        "# Finished",
        "# current_pos  current_status  current_pass",
        f"0x{size:08X}     +               1",
        "#      pos        size  status",
    ]
    pos = 0
    for offset, length in unreadable:
        if offset > pos:
            lines.append(f"0x{pos:08X}  0x{offset - pos:08X}  +")
        lines.append(f"0x{offset:08X}  0x{length:08X}  -")
        pos = offset + length
    if pos < size or not size:
        lines.append(f"0x{pos:08X}  0x{size - pos:08X}  +")
    return "\n".join(lines) + "\n"


def write(path: str, size: int, unreadable: list[list[int]], command: str = "") -> None:
    """Write the mapfile at ``path`` (replacing it whole: written aside, then renamed).

    The file aside is a new one made by ``mkstemp`` in the same folder (O_EXCL, mode
    0600, never through a link): a fixed name there, planted as a symlink by another
    user of a shared folder, once made a root run overwrite whatever it pointed at.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, aside = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(size, unreadable, command))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(aside, 0o644)
        os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise
