"""A clone source: a block device or a regular file, read at chunk offsets.

Sparse files are mapped with ``SEEK_DATA``/``SEEK_HOLE`` so holes are never read:
a chunk that lies wholly in a hole is known to be zero without touching it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable

from ..errors import SafetyError, SourceError, UnreadableError
from ..volumes.extents import Extents
from .device import block_size_bytes, device_info, logical_sector_size
from .masked import masked_read, next_used
from .rescue import MEDIA_ERRORS, DirectReader, RescueOptions, SkipAhead, rescue_area
from .tools import missing


def within(
    timeout: float, read: Callable[[int, int], bytes], offset: int, length: int, path: str
) -> bytes:
    """``read(offset, length)`` in a thread of its own, given up after ``timeout``
    seconds (some USB bridges never answer a read of a bad area).  The abandoned thread
    stays blocked until the device answers; it is a daemon and holds nothing else.

    Raises:
        UnreadableError: the read did not answer in time (``hung``).
    """
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["data"] = read(offset, length)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="p2pclone-read", daemon=True).start()
    if not done.wait(timeout):
        raise UnreadableError(
            f"reading the source {path} between bytes {offset} and {offset + length - 1} "
            f"did not answer within {timeout:g} s; the disk is failing",
            offset,
            length,
            hung=True,
        )
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["data"]  # type: ignore[return-value]


class Source:
    """An open source.  ``read`` and ``next_data`` are thread-safe (positional I/O)."""

    def __init__(self, path: str, fd: int, size: int, is_block: bool, info: dict[str, str | int]):
        self.path = path
        self.fd = fd
        self.size = size
        self.is_block = is_block
        self.info = info
        self._seek_data = True
        #: ranges no filesystem uses (set by the sender from the used map): read as
        #: zeros without touching the disk
        self.free = Extents()
        #: ranges read as zeros but sent (partitions left out with --exact: zeroed on
        #: the target; sender/select.py)
        self.zeroed = Extents()
        #: how a failing area is narrowed down (``--retries``, ``--scrape``)
        self.rescue_options = RescueOptions()
        #: sectors whose read failed in this run: not read again (but by a retry pass)
        self.failed = Extents()
        self._rescuing = threading.Lock()  # one area at a time: a failing disk is slow
        self._noting = threading.Lock()  # what the reading threads learn of the disk
        #: the first pass of a sender that leaves failing chunks for later: skip ahead
        self.skip: SkipAhead | None = None
        #: what failed to read whole on the first pass: the second goes to rescue(),
        #: and what came back of it before the read stopped short
        self.suspect = Extents()
        self.good = Extents()
        #: the second pass: whole reads with O_DIRECT (``second_pass``)
        self.direct: DirectReader | None = None
        #: seconds a read may take before its range counts as unreadable (0: forever)
        self.read_timeout = 0.0

    @classmethod
    def open(cls, path: str, *, allow_mounted: bool = False) -> Source:
        """Open ``path`` for reading.

        A block device mounted read-write is refused unless ``allow_mounted``: files
        changing under the copy make an inconsistent clone.

        Raises:
            SourceError: it does not exist, is not a file or block device, or can't be read.
            SafetyError: it is mounted read-write (and ``allow_mounted`` is false).
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceError(missing("source", path)) from None
        except PermissionError:
            raise SourceError(
                f"no permission to read the source {path}: run as root or fix its permissions"
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot open the source {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISBLK(st.st_mode):
                size = block_size_bytes(fd)
                dev = device_info(path)
                if dev.rw_mountpoints and not allow_mounted:
                    where = ", ".join(dev.rw_mountpoints)
                    raise SafetyError(
                        f"the source {path} is mounted read-write at {where}: files changing "
                        "during the copy would make an inconsistent clone; unmount it or "
                        f"remount it read-only (mount -o remount,ro {dev.rw_mountpoints[0]}), "
                        "or pass --allow-mounted to accept a possibly inconsistent copy"
                    )
                info: dict[str, str | int] = {
                    "name": path,
                    "kind": "block",
                    "model": dev.model,
                    "serial": dev.serial,
                    "sector": logical_sector_size(fd),
                }
                cls._sequential(fd)
                return cls(path, fd, size, True, info)
            if stat.S_ISREG(st.st_mode):
                cls._sequential(fd)
                return cls(path, fd, st.st_size, False, {"name": path, "kind": "file"})
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a file or block device"
            raise SourceError(f"the source {path} is {kind}: give a disk or an image file")
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _sequential(fd: int) -> None:
        """Read in order: tell the kernel, so it reads ahead further (helps cold disks)."""
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset`` (free ranges as zeros, unread).

        Raises:
            SourceError: a read error, or the source ended early (it shrank).
        """
        if self.zeroed:
            return masked_read(self._unzeroed, self.free, offset, length)
        return masked_read(self._read, self.free, offset, length)

    def _unzeroed(self, offset: int, length: int) -> bytes:
        return masked_read(self._read, self.zeroed, offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        if self._rescuing.locked():  # an area is being narrowed down: its outcome first
            with self._rescuing:
                pass
        near = (offset - 512, offset + length)
        known = self.failed.clip(*near) or self.suspect.clip(*near)
        if known or (self.skip is not None and self.skip.skips(offset)):
            # Skip ahead: the area is known to fail (or the stretch just before it
            # did), or a read just before failed on the first pass: not tried now
            # (left for the second pass, or read a sector at a time by rescue()).
            raise UnreadableError(
                f"reading the source {self.path} between bytes {offset} and "
                f"{offset + length - 1} was not tried: the area is failing",
                offset,
                length,
            )
        if not self.read_timeout:
            return self._read_now(offset, length)
        return within(self.read_timeout, self._read_now, offset, length, self.path)

    def _read_now(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset``.

        Raises:
            SourceError: a read error, or the source ended early (it shrank).
        """
        try:
            if self.direct is not None:  # the second pass: nothing read ahead, or cached
                data = self.direct.read_span(offset, length)
            else:
                data = os.pread(self.fd, length, offset)
            while len(data) < length:
                if self.skip is not None or self.direct is not None:
                    # Either pass over a failing disk: a short read stops where the disk
                    # failed; reading on from there would be one more failed read.  What
                    # came back is known good (the rescue reads it again in one go).
                    good = offset + len(data) - len(data) % 512
                    with self._noting:
                        self.good = self.good.union(Extents(((offset, good),)))
                    raise OSError(errno.EIO, "Input/output error (a short read)")
                more = os.pread(self.fd, length - len(data), offset + len(data))
                if not more:
                    raise SourceError(
                        f"the source {self.path} ended at byte {offset + len(data)} although it "
                        f"was {self.size} bytes long: it changed during the clone"
                    )
                data += more
        except OSError as exc:
            if exc.errno in MEDIA_ERRORS:
                # Not narrowed here: every read into a failing area costs (rescue() does
                # it, once per sector, where the driver can use what still reads).
                if self.skip is not None:
                    with self._noting:
                        self.skip.failed(offset, length)
                        self.suspect = self.suspect.union(Extents(((offset, offset + length),)))
                        # From the first failure on, read with O_DIRECT: a buffered read
                        # into a failing area costs the kernel's page-by-page retries
                        # (through a loop device: a 4 KiB failed read per page).
                        if self.direct is None:
                            self.direct = DirectReader(self.path, self._sector())
                raise UnreadableError(
                    f"reading the source {self.path} failed between bytes {offset} and "
                    f"{offset + length - 1}: {exc.strerror}; the disk is failing",
                    offset,
                    length,
                ) from None
            bad = self._first_unreadable(offset, length)
            raise SourceError(
                f"reading the source {self.path} failed at byte {bad}: {exc.strerror}"
            ) from None
        return data

    def first_pass(self) -> None:
        """A first pass that leaves failing chunks for later: skip ahead after a failed
        read (GNU ddrescue's skip), instead of narrowing each one down in place."""
        self.skip = SkipAhead(self.size)

    def second_pass(self) -> None:
        """Back to the chunks the first pass left: read with O_DIRECT, nothing skipped."""
        self.skip = None
        if self.direct is None:
            self.direct = DirectReader(self.path, self._sector())

    def _sector(self) -> int:
        sector = self.info.get("sector", 512)
        return sector if isinstance(sector, int) and sector > 0 else 512

    def rescue(self, offset: int, length: int) -> tuple[bytes, tuple[tuple[int, int], ...]]:
        """``[offset, offset+length)``, which failed to read, narrowed down to its
        unreadable sectors (disks/rescue.py): its bytes, zeros where unreadable, and
        those ranges.  Only the used ranges are read (what no filesystem uses is never
        "unreadable": it was never needed); a sector that failed before in this run
        is not read again, except by a retry pass."""
        sector = self._sector()
        out = bytearray(length)
        bad: list[tuple[int, int]] = []
        with self._rescuing, DirectReader(self.path, sector) as reader:
            for a, b in self.free.union(self.zeroed).invert(offset, offset + length):
                start, end = a - a % sector, min(-(-b // sector) * sector, self.size)
                got = rescue_area(
                    reader.read, start, end, sector,
                    retries=self.rescue_options.retries,
                    scrape=self.rescue_options.scrape,
                    known_bad=self.failed,
                    known_good=self.good,
                    read_span=reader.read_span,
                )  # fmt: skip
                self.failed = self.failed.union(got.failed)
                out[a - offset : b - offset] = got.data[a - start : b - start]
                bad += got.bad.clip(a, b)
        return bytes(out), Extents.of(bad).ranges

    def _first_unreadable(self, offset: int, length: int) -> int:
        """The first byte of [offset, offset+length) that does not read (to a 512-byte
        sector), so an error names where the disk fails, not where the chunk starts.
        Only runs after a read failed."""
        pos, end = offset, offset + length
        for step in (64 * 1024, 4096, 512):
            while pos < end:
                want = min(step, end - pos)
                try:
                    got = len(os.pread(self.fd, want, pos))
                except OSError:
                    break  # the failure is in [pos, pos + step): narrow it down
                if got < want:  # a block device's buffered read stops short of the error
                    pos += got - got % 512
                    break
                pos += step
        return pos if pos < end else offset  # it read this time: name the chunk

    def next_data(self, offset: int) -> int:
        """Offset of the first byte at or after ``offset`` that may hold data.

        Returns ``self.size`` when only a hole remains.  Where the filesystem or
        device can't tell, everything counts as data.  Free ranges are holes too.
        """
        offset = next_used(self.free, offset)
        if not self._seek_data or self.is_block or offset >= self.size:
            return offset
        try:
            found = os.lseek(self.fd, offset, os.SEEK_DATA)
            return found if found == offset else self.next_data(found)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return self.size
            self._seek_data = False
            return offset

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
            self.direct = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
