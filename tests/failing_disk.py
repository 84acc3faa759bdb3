"""A disk that fails like a dying one: a FUSE file whose reads touching chosen ranges
fail with EIO (optionally after a delay, optionally only the first N times).

    python tests/failing_disk.py IMAGE MOUNTPOINT [--bad START:LENGTH[:TIMES]]...
                                 [--hang START:LENGTH:SECONDS]... [--delay SECONDS]
                                 [--pace SECONDS] [--log FILE]

serves IMAGE as MOUNTPOINT/disk (read-only, direct I/O so that every read reaches us,
not the page cache); ``--pace`` makes every good read take that long (a slow disk,
so that a test can stop a clone half-way); ``--log`` appends one line per read,
"offset length ok|EIO", so a test can count the reads that went into a bad area.  A
loop device over the file makes it a failing block device.  ``failing_disk(...)`` in a
test starts it and unmounts it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

NAME = "disk"


def serve(
    image: str,
    mountpoint: str,
    bad: list[list[int]],
    delay: float,
    log: str,
    hang: list[list[int]] | None = None,
    pace: float = 0.0,
) -> None:
    """``hang``: reads touching [start, start+length) answer only after ``seconds``
    (a USB bridge stuck on a bad area)."""
    import mfusepy as fuse

    size = os.path.getsize(image)
    fd = os.open(image, os.O_RDONLY)
    lock = threading.Lock()
    out = open(log, "a", buffering=1) if log else None  # noqa: SIM115

    class Disk(fuse.Operations):
        def getattr(self, path: str, fh: int | None = None) -> dict:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == "/" + NAME:
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size}
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", NAME]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: int) -> bytes:
            end = min(offset + length, size)
            for start, n, seconds in hang or []:
                if offset < start + n and start < end:
                    if out:
                        out.write(f"{offset} {length} hang\n")
                    time.sleep(seconds)
            with lock:
                for entry in bad:
                    start, n, times = entry
                    if offset < start + n and start < end and times != 0:
                        entry[2] = times - 1 if times > 0 else times
                        if out:
                            out.write(f"{offset} {length} EIO\n")
                        if delay:
                            time.sleep(delay)
                        raise fuse.FuseOSError(errno.EIO)
                if out:
                    out.write(f"{offset} {length} ok\n")
            if pace:
                time.sleep(pace)
            return os.pread(fd, end - offset, offset)

    fuse.FUSE(Disk(), mountpoint, foreground=True, ro=True, direct_io=True, allow_other=True)


@contextlib.contextmanager
def failing_disk(
    image: Path,
    bad: list[tuple[int, int, int]],
    *,
    delay: float = 0.0,
    hang: list[tuple[int, int, int]] = (),  # type: ignore[assignment]
    pace: float = 0.0,
) -> Iterator[tuple[Path, Path]]:
    """Serve ``image`` with ``bad`` = [(start, length, times; -1: always)] failing;
    yield (the failing file, its read log)."""
    where = Path(tempfile.mkdtemp(prefix="p2pclone-failing-"))
    log = where.with_suffix(".log")
    argv = [sys.executable, __file__, str(image), str(where), "--log", str(log)]
    argv += [arg for s, n, t in bad for arg in ("--bad", f"{s}:{n}:{t}")]
    argv += [arg for s, n, t in hang for arg in ("--hang", f"{s}:{n}:{t}")]
    argv += ["--delay", str(delay), "--pace", str(pace)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (where / NAME).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the failing disk did not start: {proc.stderr.read()!r}")
            time.sleep(0.05)
        yield where / NAME, log
    finally:
        # lazily: a read still hanging in the server must not keep the mount busy
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        where.rmdir()


@contextlib.contextmanager
def as_block_device(path: Path, *, use: bool = True) -> Iterator[str]:
    """``path`` under a read-only loop device with direct I/O (512-byte sectors): a
    failing block device; with ``use`` false, ``path`` itself."""
    if not use:
        yield str(path)
        return
    loop = subprocess.run(
        ["losetup", "-r", "--find", "--show", "--direct-io=on", "--sector-size", "512",
         str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("mountpoint")
    ap.add_argument("--bad", action="append", default=[])
    ap.add_argument("--hang", action="append", default=[])
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--pace", type=float, default=0.0)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    bad = []
    for spec in args.bad:
        start, length, *times = (int(x) for x in spec.split(":"))
        bad.append([start, length, times[0] if times else -1])
    hang = [[int(x) for x in spec.split(":")] for spec in args.hang]
    serve(args.image, args.mountpoint, bad, args.delay, args.log, hang, args.pace)


if __name__ == "__main__":
    main()
