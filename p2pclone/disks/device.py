"""Linux block-device facts: sizes by ioctl, identity and use from sysfs and /proc.

Everything here is synchronous and cheap; the drivers call it from worker threads
or before the event loop starts.  On a system without sysfs the descriptive fields
are simply empty: only the ioctls are needed to clone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

# <linux/fs.h>
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKSSZGET = 0x1268  # _IO(0x12, 104): logical sector size
BLKZEROOUT = 0x127F  # _IO(0x12, 127): write zeroes to a byte range
BLKROGET = 0x125E  # _IO(0x12, 94): is the device read-only (blockdev --setro)
BLKRRPART = 0x125F  # _IO(0x12, 95): re-read the partition table
# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

SYS_BLOCK = Path("/sys/class/block")

SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int) -> None:
    """Start writing dirty pages back now, without waiting for them.

    Without this the kernel holds up to dirty_background_ratio of RAM (gigabytes)
    before writing anything, and the final fsync then waits for all of it.
    """
    _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # best effort: errors surface at fsync


def is_block_device(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def block_size_bytes(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return int(struct.unpack("<Q", buf)[0])


def is_read_only(fd: int) -> bool:
    """The block device refuses writes (``blockdev --setro``, a write-protect switch)."""
    try:
        buf = fcntl.ioctl(fd, BLKROGET, b"\0" * 4)
    except OSError:
        return False
    flag: int = struct.unpack("<i", buf)[0]
    return flag != 0


def loop_backing(st: os.stat_result) -> str | None:
    """The loop device (``/dev/loopN``) whose backing file is this file, if any."""
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        name = _read(backing).removesuffix(" (deleted)")
        try:
            other = os.stat(name)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return f"/dev/{backing.parent.parent.name}"
    return None


def open_elsewhere(fd: int) -> bool:
    """Another open file (any process, or the kernel's loop driver) holds this file.

    A write lease is granted only while nobody else has the file open; it is dropped
    at once.  Where leases are not supported (some network filesystems) or not
    allowed (a file of another user), this says False: it cannot tell.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def reread_partitions(fd: int) -> str | None:
    """Ask the kernel to re-read the partition table (BLKRRPART); why not, or None."""
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def logical_sector_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
    return int(struct.unpack("<i", buf)[0])


def zero_out(fd: int, offset: int, length: int) -> None:
    """Make the device really read zeros over [offset, offset+length).

    BLKZEROOUT, not discard: a discard does not promise zeros.  Falls back to
    writing zeros where the range is unaligned or the driver lacks the ioctl.
    """
    aligned = offset % 512 == 0 and length % 512 == 0
    if aligned:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("<QQ", offset, length))
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                raise
    write_zeros(fd, offset, length)


BLKDISCARD = 0x1277  # _IO(0x12, 119): tell the device a byte range holds nothing


def discard(fd: int, offset: int, length: int, *, is_block: bool) -> bool:
    """Tell the medium that [offset, offset+length) holds nothing (a device: BLKDISCARD;
    a file: a punched hole); False when it cannot.  Unlike ``zero_out``, what the range
    reads afterwards is not promised."""
    if is_block:
        try:
            fcntl.ioctl(fd, BLKDISCARD, struct.pack("<QQ", offset, length))
            return True
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                return False
            raise
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a file range so it reads as zeros (a hole); write zeros if unsupported."""
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err))
    write_zeros(fd, offset, length)


_ZEROS = bytes(1 << 20)


def write_zeros(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - offset)], offset)
        offset += n


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# -- identity and use ---------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@dataclass
class DeviceInfo:
    """What a person needs to recognise a disk, and what uses it right now."""

    path: str
    name: str
    size: int = 0
    model: str = ""
    serial: str = ""
    sector_size: int = 512
    removable: bool = False
    read_only: bool = False
    kind: str = "disk"
    mountpoints: list[str] = field(default_factory=list)
    rw_mountpoints: list[str] = field(default_factory=list)  # the subset mounted read-write
    swap: bool = False
    holders: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)

    @property
    def in_use(self) -> bool:
        return bool(self.mountpoints or self.swap or self.holders)

    @property
    def holds_running_system(self) -> bool:
        return any(m in SYSTEM_MOUNTS for m in self.mountpoints)

    def describe_use(self) -> str:
        uses = []
        if self.mountpoints:
            uses.append("mounted at " + ", ".join(self.mountpoints))
        if self.swap:
            uses.append("used as swap")
        if self.holders:
            uses.append("held by " + ", ".join(self.holders))
        return "; ".join(uses)


SYSTEM_MOUNTS = frozenset({"/", "/boot", "/boot/efi", "/usr", "/var"})


def _mounts_by_devno() -> dict[int, list[tuple[str, bool]]]:
    """st_rdev -> [(mount point, read-write?)], from /proc/self/mountinfo.

    Field 3 is major:minor, field 5 the mount point, field 6 the per-mount options.
    """
    out: dict[int, list[tuple[str, bool]]] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        major, _, minor = parts[2].partition(":")
        try:
            devno = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        mnt = parts[4].replace("\\040", " ")
        out.setdefault(devno, []).append((mnt, parts[5].split(",")[0] == "rw"))
    return out


def _swap_paths() -> set[str]:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {os.path.realpath(line.split()[0]) for line in lines if line.split()}


def _sysfs_dir(path: str) -> Path | None:
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return None
    d = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    return d if d.exists() else None


def device_info(path: str) -> DeviceInfo:
    """Describe the block device at ``path`` (a whole disk, partition or loop device)."""
    real = os.path.realpath(path)
    info = DeviceInfo(path=real, name=os.path.basename(real))
    sysdir = _sysfs_dir(real)
    mounts = _mounts_by_devno()
    swaps = _swap_paths()
    if sysdir is not None:
        sysdir = sysdir.resolve()
        info.name = sysdir.name
        info.size = int(_read(sysdir / "size") or 0) * 512
        info.removable = _read(sysdir / "removable") == "1"
        info.read_only = _read(sysdir / "ro") == "1"
        info.sector_size = int(_read(sysdir / "queue/logical_block_size") or 512)
        disk_dir = sysdir if (sysdir / "queue").exists() else sysdir.parent
        info.model = _read(disk_dir / "device/model") or _read(disk_dir / "loop/backing_file")
        info.serial = _read(disk_dir / "device/serial") or _read(disk_dir / "serial")
        info.kind = (
            "loop"
            if info.name.startswith("loop")
            else ("partition" if (sysdir / "partition").exists() else "disk")
        )
        # The device and each of its partitions count: a mounted /dev/sdb1 makes
        # /dev/sdb unsafe to overwrite.
        members = [sysdir] + sorted(p for p in sysdir.iterdir() if (p / "partition").exists())
        for member in members:
            if member is not sysdir:
                info.partitions.append(member.name)
            devno_text = _read(member / "dev")
            if devno_text:
                major, _, minor = devno_text.partition(":")
                for mnt, rw in mounts.get(os.makedev(int(major), int(minor)), []):
                    info.mountpoints.append(mnt)
                    if rw:
                        info.rw_mountpoints.append(mnt)
            if f"/dev/{member.name}" in swaps:
                info.swap = True
            holders = member / "holders"
            if holders.exists():
                info.holders += sorted(h.name for h in holders.iterdir())
    else:
        with contextlib.suppress(OSError):
            for mnt, rw in mounts.get(os.stat(real).st_rdev, []):
                info.mountpoints.append(mnt)
                if rw:
                    info.rw_mountpoints.append(mnt)
    return info


def list_block_devices() -> list[DeviceInfo]:
    """Every whole disk with a non-zero size (partitions appear inside their disk)."""
    out: list[DeviceInfo] = []
    base = Path("/sys/block")
    if not base.exists():
        return out
    for entry in sorted(base.iterdir()):
        if _read(entry / "size") in ("", "0"):
            continue
        dev = Path("/dev") / entry.name
        if not dev.exists():
            continue
        out.append(device_info(str(dev)))
    return out
