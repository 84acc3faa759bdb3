"""A clone target: a block device or a regular file, written at chunk offsets.

Life cycle, in the order the receiver uses it:

1. :meth:`Target.open` before the receiver listens: checks the path; a block device
   is opened exclusively (``O_EXCL``, which fails while it is mounted or held) and
   kept open for the whole session.  A file target is not created yet.
2. :meth:`Target.check_plan` once the sender's plan is known: refuses a block
   device that is smaller than the source.  Nothing has been written so far.
3. :meth:`Target.prepare`: creates or resizes a file target.
4. :meth:`write` / :meth:`zero` at offsets, from worker threads.  A file keeps zero
   ranges as holes (punched, so old bytes never survive); a device gets them really
   zeroed (BLKZEROOUT): a device is never assumed to hold zeros already.
5. :meth:`sync` before success is reported; :meth:`read` for ``--verify``.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ..errors import SafetyError, TargetError
from .device import (
    DeviceInfo,
    block_size_bytes,
    device_info,
    logical_sector_size,
    punch_hole,
    pwrite_all,
    start_writeback,
    zero_out,
)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class Target:
    def __init__(self, path: str, fd: int, is_block: bool, size: int, device: DeviceInfo | None):
        self.path = path
        self.fd = fd
        self.is_block = is_block
        self.size = size  # device size, or the file's size before the clone
        self.device = device
        self.sector_size = logical_sector_size(fd) if is_block and fd >= 0 else 512

    @classmethod
    def open(cls, path: str) -> Target:
        """Check and (for a block device) exclusively open ``path``.

        Raises:
            TargetError: the folder does not exist, it is a directory, or can't be opened.
            SafetyError: the block device is in use (mounted, swap, held).
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise TargetError(
                    f"the folder {parent} for the target file does not exist: "
                    "create it or choose another path"
                ) from None
            if not os.access(parent, os.W_OK):
                raise TargetError(f"no permission to create a file in {parent}") from None
            return cls(path, -1, False, 0, None)
        if stat.S_ISDIR(st.st_mode):
            raise TargetError(f"the target {path} is a folder: give a disk or a file path")
        if stat.S_ISBLK(st.st_mode):
            dev = device_info(path)
            if dev.holds_running_system:
                raise SafetyError(
                    f"the target {path} holds the running system ({dev.describe_use()}): "
                    "boot the target machine from a live system, or choose another disk; "
                    "nothing was written"
                )
            if dev.in_use:
                raise SafetyError(
                    f"the target {path} is in use ({dev.describe_use()}): unmount it "
                    "or choose another disk; nothing was written"
                )
            try:
                # O_EXCL on a block device: fails with EBUSY while anything has it
                # mounted or claimed, and keeps others from claiming it meanwhile.
                fd = os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == 16:  # EBUSY
                    raise SafetyError(
                        f"the target {path} is busy (mounted or used by another program): "
                        "unmount it or choose another disk; nothing was written"
                    ) from None
                raise TargetError(f"cannot open the target {path}: {exc.strerror}") from None
            return cls(path, fd, True, block_size_bytes(fd), dev)
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(f"the target {path} is neither a block device nor a regular file")
        if not os.access(path, os.W_OK):
            raise TargetError(f"no permission to write the target {path}")
        return cls(path, -1, False, st.st_size, None)

    def identity(self) -> str:
        """What names this target across runs (the resume journal is kept per identity)."""
        if self.device is not None:
            dev = self.device
            return f"block:{os.path.realpath(self.path)}:{dev.model}:{dev.serial}:{self.size}"
        return f"file:{os.path.abspath(self.path)}"

    def medium(self) -> str:
        """Which medium this is, for the resume journal: a file's device and inode
        number (a file deleted and created again is another medium); "" for a block
        device, whose identity already names it (and whose content the receiver
        re-hashes before trusting a journal)."""
        if self.is_block or self.fd < 0:
            return ""
        st = os.fstat(self.fd)
        return f"inode:{st.st_dev}:{st.st_ino}"

    def describe(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {
            "name": self.path,
            "kind": "block" if self.is_block else "file",
            "size": self.size,
        }
        if self.device is not None:
            out.update(model=self.device.model, serial=self.device.serial, sector=self.sector_size)
        return out

    def check_plan(self, source_size: int, source: dict[str, str | int]) -> None:
        """Refuse a plan this target can't hold, before anything is written.

        Raises:
            SafetyError: the block device is smaller than the source, or its logical
                sector size differs from a block-device source's.
        """
        if self.is_block and self.size < source_size:
            raise SafetyError(
                f"the target {self.path} holds {_human(self.size)} but the source is "
                f"{_human(source_size)}: choose a target at least as large; nothing was written"
            )
        src_sector = source.get("sector")
        if self.is_block and isinstance(src_sector, int) and src_sector != self.sector_size:
            raise SafetyError(
                f"the source disk has {src_sector}-byte logical sectors and the target "
                f"{self.path} has {self.sector_size}-byte ones: its partition table would be "
                "wrong on the target; choose a target with the same sector size; "
                "nothing was written"
            )

    def prepare(self, source_size: int) -> None:
        """Create or size a file target (block devices need nothing)."""
        if self.is_block:
            return
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # The target must end up equal to the source, so a larger old file is
            # cut to the source's size; every byte below it is rewritten or punched.
            os.ftruncate(self.fd, source_size)
        except OSError as exc:
            raise TargetError(f"cannot create the target {self.path}: {exc.strerror}") from None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as exc:
            raise TargetError(
                f"writing the target {self.path} failed at byte {offset}: {exc.strerror}"
            ) from None

    def zero(self, offset: int, length: int) -> None:
        try:
            if self.is_block:
                zero_out(self.fd, offset, length)
            else:
                punch_hole(self.fd, offset, length)
        except OSError as exc:
            raise TargetError(
                f"zeroing the target {self.path} failed at byte {offset}: {exc.strerror}"
            ) from None

    def start_writeback(self) -> None:
        """Begin flushing what has been written so far (returns without waiting)."""
        start_writeback(self.fd)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise TargetError(f"flushing the target {self.path} failed: {exc.strerror}") from None

    def prefetch(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading this range now (we will read it next)."""
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def drop_cache(self) -> None:
        """Ask the kernel to forget cached pages, so a verify reads the medium."""
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise TargetError(
                f"reading back the target {self.path} failed at byte {offset}: {exc.strerror}"
            ) from None
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
