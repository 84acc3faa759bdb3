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
import errno
import os
import stat

from ..errors import SafetyError, TargetError
from ..units import human_bytes
from ..volumes import identify
from ..volumes.extents import Extents
from .device import (
    DeviceInfo,
    block_size_bytes,
    device_info,
    discard,
    is_read_only,
    logical_sector_size,
    loop_backing,
    open_elsewhere,
    punch_hole,
    pwrite_all,
    reread_partitions,
    start_writeback,
    zero_out,
)
from .masked import masked_read, used_parts
from .tools import missing


def _cannot_write(path: str, exc: OSError) -> TargetError:
    if exc.errno in (errno.EROFS, errno.EPERM) or (
        exc.errno == errno.EACCES and os.path.exists(path)
    ):
        why = "read-only" if exc.errno == errno.EROFS else "not writable by this user"
        return TargetError(
            f"the target {path} is {why} ({exc.strerror}): choose a writable target; "
            "nothing was written"
        )
    if exc.errno == errno.ELOOP:
        return TargetError(f"the target {path} is a symbolic link: give the file's real path")
    return TargetError(f"cannot open the target {path}: {exc.strerror}")


class Target:
    def __init__(self, path: str, fd: int, is_block: bool, size: int, device: DeviceInfo | None):
        self.path = path
        self.fd = fd
        self.is_block = is_block
        self.size = size  # device size, or the file's size before the clone
        self.device = device
        self.sector_size = logical_sector_size(fd) if is_block and fd >= 0 else 512
        #: this run created the (empty) file: removed again if nothing was written
        self.created = False
        self.prepared = False
        #: ranges the plan says no filesystem uses: never written, read back as zeros
        self.free = Extents()

    @classmethod
    def open(cls, path: str) -> Target:
        """Check ``path`` and open it, once, for the whole session.

        A block device is opened exclusively (``O_EXCL``: fails while it is mounted or
        held).  A file target is opened now too — created (mode 0600: it will hold a
        whole disk) if it does not exist — without following a symbolic link, so
        nothing placed at the path while the receiver waits for its sender can redirect
        the writes; a link given on the command line is followed only to a block device
        (``/dev/disk/by-id/...``).

        Raises:
            TargetError: the folder does not exist, it is a folder, a link to a file,
                read-only, or can't be opened.
            SafetyError: the block device is in use (mounted, swap, held), or the file
                is open elsewhere (a loop device's backing file, another program).
        """
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            if os.path.realpath(path).startswith("/dev/"):  # a mistyped disk: never a file there
                raise TargetError(missing("target", path)) from None
            return cls._create(path)
        except OSError as exc:
            raise TargetError(f"cannot open the target {path}: {exc.strerror}") from None
        if stat.S_ISLNK(lst.st_mode):
            real = os.path.realpath(path)
            try:
                is_block = stat.S_ISBLK(os.stat(path).st_mode)
            except OSError:
                is_block = False
            if not is_block:
                raise TargetError(
                    f"the target {path} is a symbolic link (to {real}): give the file's real path"
                )
            return cls._open_device(real)
        if stat.S_ISDIR(lst.st_mode):
            raise TargetError(f"the target {path} is a folder: give a disk or a file path")
        if stat.S_ISBLK(lst.st_mode):
            return cls._open_device(path)
        if not stat.S_ISREG(lst.st_mode):
            raise TargetError(f"the target {path} is neither a block device nor a regular file")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
        target = cls(path, fd, False, lst.st_size, None)
        try:
            target._check_file(lst)
        except BaseException:
            target.close()
            raise
        return target

    @classmethod
    def _create(cls, path: str) -> Target:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise TargetError(
                f"the folder {parent} for the target file does not exist: "
                "create it or choose another path"
            )
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            if exc.errno == errno.EACCES:
                raise TargetError(f"no permission to create a file in {parent}") from None
            raise _cannot_write(path, exc) from None
        target = cls(path, fd, False, 0, None)
        target.created = True
        return target

    def _check_file(self, lst: os.stat_result) -> None:
        st = os.fstat(self.fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
            raise TargetError(
                f"the target {self.path} changed while it was being opened: run again"
            )
        loop = loop_backing(st)
        if loop is not None:
            raise SafetyError(
                f"the target {self.path} is the backing file of {loop}: detach it first "
                f"(losetup -d {loop}) or choose another path; nothing was written"
            )
        if open_elsewhere(self.fd):
            raise SafetyError(
                f"the target {self.path} is open in another program: close it "
                "or choose another path; nothing was written"
            )

    @classmethod
    def _open_device(cls, path: str) -> Target:
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
            if exc.errno == errno.EBUSY:
                raise SafetyError(
                    f"the target {path} is busy (mounted or used by another program): "
                    "unmount it or choose another disk; nothing was written"
                ) from None
            raise _cannot_write(path, exc) from None
        if is_read_only(fd):
            os.close(fd)
            raise TargetError(
                f"the target {path} is read-only (blockdev --setro, or a write-protect "
                f"switch): make it writable (blockdev --setrw {path}) or choose another "
                "disk; nothing was written"
            )
        return cls(path, fd, True, block_size_bytes(fd), dev)

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

    def check_plan(self, source_size: int, source: dict[str, str | int]) -> int:
        """Refuse a plan this target can't hold, before anything is written; return
        where a smaller target cuts the source off (0: it holds all of it).

        A block device smaller than the source is accepted when the source's partition
        table (its ``layout`` and ``end<n>`` in the plan) has every partition end
        inside it, leaving room for a GPT's backup: beyond that the source has nothing
        any partition holds, and the backup is rebuilt at the new end.

        Raises:
            SafetyError: the block device is smaller than the source and a partition
                does not fit (or the source has no table), or its logical sector size
                differs from a block-device source's.
        """
        src_sector = source.get("sector")
        if self.is_block and isinstance(src_sector, int) and src_sector != self.sector_size:
            raise SafetyError(
                f"the source disk has {src_sector}-byte logical sectors and the target "
                f"{self.path} has {self.sector_size}-byte ones: its partition table would be "
                "wrong on the target; choose a target with the same sector size; "
                "nothing was written"
            )
        if not self.is_block or self.size >= source_size:
            return 0
        return self._cut(source_size, source)

    def _cut(self, source_size: int, source: dict[str, str | int]) -> int:
        held, needed = (human_bytes(n, small="bytes") for n in (self.size, source_size))
        layout = source.get("layout")
        ends = {k[3:]: v for k, v in source.items() if k.startswith("end") and isinstance(v, int)}
        if layout not in ("gpt", "mbr") or not ends:
            raise SafetyError(
                f"the target {self.path} holds {held} but the source is {needed} and has "
                "no partition table to fit onto it: choose a target at least as large; "
                "nothing was written"
            )
        # a GPT needs its backup array and header after the last partition
        reserve = (1 + -(-16384 // self.sector_size)) * self.sector_size if layout == "gpt" else 0
        room = self.size - reserve
        for number, end in sorted(ends.items(), key=lambda e: e[1], reverse=True):
            if end > room:
                raise SafetyError(
                    f"the target {self.path} holds {held}, but partition {number} of the "
                    f"source ends at byte {end}: the target needs at least "
                    f"{human_bytes(end + reserve, small='bytes')}, or partition {number} "
                    "must shrink on the source (the sender says how far it could); nothing "
                    "was written",
                    code="too-small",
                )
        return self.size

    def discard_free(self) -> int | None:
        """Discard the free ranges (``send``'s map; ``--discard``): bytes discarded, or
        None when this target cannot discard.

        Raises:
            TargetError: the device failed the request.
        """
        sector = self.sector_size
        done = 0
        for start, end in self.free.clip(0, self.size).shrink_to(sector):
            try:
                if not discard(self.fd, start, end - start, is_block=self.is_block):
                    return None
            except OSError as exc:
                raise TargetError(
                    f"discarding free space on {self.path} failed at byte {start}: {exc.strerror}"
                ) from None
            done += end - start
        return done

    def read_raw(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` as they are, free ranges included (a
        table being fitted, a partition being moved: disks/reshape.py)."""
        return self._read(offset, length)

    def write_raw(self, offset: int, data: bytes | memoryview) -> None:
        """Write at ``offset`` whatever the used map says (disks/reshape.py)."""
        self._write(offset, data)

    def filesystem_at(self, start: int, size: int) -> str:
        """The filesystem on the ``size`` bytes at ``start`` as written here ("ext4",
        "ntfs", … "" if none is recognised), read from the target itself."""
        return identify(lambda offset, length: self._read(start + offset, length), size)

    def _still_at_path(self) -> bool:
        """The path still names the file opened at the start (not a link put there since)."""
        try:
            st, lst = os.fstat(self.fd), os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (lst.st_dev, lst.st_ino)

    def prepare(self, source_size: int, *, keep_larger: bool = False) -> None:
        """Size a file target (block devices need nothing): the source's size, or its
        own when it is larger and ``keep_larger`` (a virtual machine's disk made larger
        for ``--grow``)."""
        self.prepared = True
        if self.is_block:
            return
        if not self._still_at_path():
            raise TargetError(
                f"the target {self.path} was removed or replaced while the receiver waited "
                "(it is not the file opened at the start): nothing was written; check who "
                "changed it and run again"
            )
        try:
            # The target must end up equal to the source, so a larger old file is
            # cut to the source's size; every byte below it is rewritten or punched
            # (with --grow the space past it is the disk's to grow into).
            if not (keep_larger and self.size > source_size):
                os.ftruncate(self.fd, source_size)
                self.size = source_size
        except OSError as exc:
            raise TargetError(f"cannot size the target {self.path}: {exc.strerror}") from None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset``, except over the free ranges (left untouched)."""
        if self.free:
            view = memoryview(data)
            for start, end in used_parts(self.free, offset, len(view)):
                self._write(start, view[start - offset : end - offset])
            return
        self._write(offset, data)

    def _write(self, offset: int, data: bytes | memoryview) -> None:
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as exc:
            hint = (
                ": free some space there and run the same commands again (the clone "
                "resumes where it stopped)"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else ""
            )
            raise TargetError(
                f"writing the target {self.path} failed at byte {offset}: {exc.strerror}{hint}"
            ) from None

    def space_shortfall(self, source_size: int) -> int:
        """How many bytes a file target's filesystem lacks to hold a fully written
        source (0 if enough, or if it can't tell).  Zero ranges stay holes and need
        nothing, so a sparse source may still fit."""
        if self.is_block:
            return 0
        try:
            vfs = os.fstatvfs(self.fd)
            held = os.fstat(self.fd).st_blocks * 512
        except OSError:
            return 0
        if not vfs.f_frsize:
            return 0
        return max(0, source_size - held - vfs.f_bavail * vfs.f_frsize)

    def reread_partitions(self) -> str | None:
        """A block device: have the kernel read its new partition table; why it could
        not, or None (also for a file)."""
        return reread_partitions(self.fd) if self.is_block else None

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros, except the free ranges."""
        for start, end in used_parts(self.free, offset, length):
            self._zero(start, end - start)

    def _zero(self, offset: int, length: int) -> None:
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
        """Read back, with the free ranges as zeros (not read): what was cloned."""
        return masked_read(self._read, self.free, offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise TargetError(
                f"reading back the target {self.path} failed at byte {offset}: {exc.strerror}"
            ) from None
        return data

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.created and not self.prepared and self._still_at_path():
            # Nothing was written: leave no empty file behind (only ours).
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1
