"""``p2pclone demo``: a real clone with no spare disk and no second machine.

Builds a small ext4 disk image (``mkfs.ext4 -d``, no root or mount needed) holding a
realistic mix — compressible text and logs, copies of real program files,
incompressible random "media" — and free space; then clones it to a second file
(which starts full of random bytes, like a used disk) over a real TCP connection on
loopback, with ``--verify``, and checks that every byte the filesystem uses is
identical while the free space was neither sent nor written.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import trio

from ..errors import IntegrityError, P2PCloneError, UsageError
from ..jobs import receive, send
from ..options import ReceiveOptions, SendOptions
from ..session import Done, pick_error
from ..volumes import scan


def _find_mkfs() -> str | None:
    return shutil.which("mkfs.ext4") or next(
        (p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4") if os.path.exists(p)), None
    )


def populate(root: Path, budget: int, seed: int = 7) -> tuple[int, int]:
    """Fill ``root`` with about ``budget`` bytes of mixed files; return (files, bytes)."""
    rng = random.Random(seed)
    words = resources.files("p2pclone").joinpath("wordlist.txt").read_text().split()
    files = written = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal files, written
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files += 1
        written += len(data)

    # About 40%: documents and logs (compress 3-4x).
    i = 0
    while written < budget * 0.4:
        lines = [" ".join(rng.choices(words, k=rng.randint(6, 14))) for _ in range(4000)]
        put(f"home/user/documents/note-{i:03}.txt", "\n".join(lines).encode())
        log = "\n".join(
            f"2026-11-{rng.randint(1, 28):02} {rng.randint(0, 23):02}:"
            f"{rng.randint(0, 59):02} host{rng.randint(1, 9)} "
            f"service[{rng.randint(100, 999)}]: "
            f"{rng.choice(words)} {rng.choice(words)} status={rng.randint(0, 5)}"
            for _ in range(6000)
        )
        put(f"var/log/app-{i:03}.log", log.encode())
        i += 1
    # About 30%: real program files, as an installed system would have.
    lib = Path(os.__file__).parent
    for src in sorted(lib.rglob("*.py")):
        if written >= budget * 0.7:
            break
        try:
            put(f"usr/lib/python/{src.relative_to(lib)}", src.read_bytes())
        except OSError:
            continue
    # The rest: incompressible media and archives.
    i = 0
    while written < budget:
        put(f"home/user/pictures/img-{i:03}.jpg", rng.randbytes(min(2 << 20, budget - written)))
        i += 1
    return files, written


def build_disk(path: Path, size: int, staging: Path) -> str:
    """Create the demo disk at ``path``; return a one-line description."""
    files, used = populate(staging, int(size * 0.45))
    mkfs = _find_mkfs()
    if mkfs is not None:
        subprocess.run(
            [mkfs, "-q", "-F", "-L", "p2pdemo", "-d", str(staging), str(path), f"{size // 1024}k"],
            check=True,
            capture_output=True,
        )
        return (
            f"an ext4 filesystem of {size >> 20} MiB with {files} files "
            f"({used >> 20} MiB of text, logs, program files and random media) and free space"
        )
    # Without e2fsprogs: lay the same files end to end with zero gaps, like a disk.
    with open(path, "wb") as out:
        out.truncate(size)
        offset = 4096
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            data = f.read_bytes()
            if offset + len(data) > size:
                break
            out.seek(offset)
            out.write(data)
            offset += -(-(len(data) + 65536) // 4096) * 4096
    return (
        f"a {size >> 20} MiB disk image holding {files} files laid out with gaps "
        "(mkfs.ext4 was not found, so there is no real filesystem)"
    )


def _same_where_used(source: Path, target: Path) -> tuple[bool, int]:
    """Whether the two files agree on every byte the source's filesystem uses (its used
    map, read again here), and how many bytes are free."""
    with open(source, "rb") as s, open(target, "rb") as t:
        size = os.fstat(s.fileno()).st_size
        disk = scan(lambda o, n: os.pread(s.fileno(), n, o), size)
        for start, end in disk.free.invert(0, size):
            for pos in range(start, end, 1 << 22):
                n = min(1 << 22, end - pos)
                if os.pread(s.fileno(), n, pos) != os.pread(t.fileno(), n, pos):
                    return False, disk.free.total
    return True, disk.free.total


async def _clone_over_loopback(source: Path, target: Path) -> tuple[Done, Done]:
    """Receiver and sender in this process, over a real TCP connection on loopback."""
    results: dict[str, Done] = {}
    async with trio.open_nursery() as nursery:

        async def rx(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            results["rx"] = await receive(
                str(target),
                "tcp://127.0.0.1:0",
                ReceiveOptions(code="demo", verify=True),
                task_status=task_status,
            )

        url = await nursery.start(rx)
        print(f"2/3 Receiver listening on {url}; sending {source.name} to it …", flush=True)
        results["tx"] = await send(str(source), url, SendOptions(code="demo"))
    return results["tx"], results["rx"]


def run_demo(*, size_mib: int = 256, workdir: str | None = None, debug: bool = False) -> int:
    """The demo, told step by step on stdout; 0 when the clone came out right.

    Raises:
        P2PCloneError: the demo could not run, or its clone differs (exit 6).
    """
    if size_mib < 16:
        raise UsageError("the demo disk needs at least 16 MiB (--size 16 or more)")
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="p2pclone-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    source, target, staging = base / "source.img", base / "target.img", base / "files"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        target.unlink(missing_ok=True)
        print(f"1/3 Building a demo disk in {base} …", flush=True)
        what = build_disk(source, size_mib << 20, staging)
        shutil.rmtree(staging, ignore_errors=True)
        print(f"    {what}.", flush=True)
        # The target starts full of random bytes, like a used disk: zero ranges must
        # really come out zero.
        with open(target, "wb") as t:
            for _ in range(size_mib):
                t.write(os.urandom(1 << 20))

        try:
            tx, rx = trio.run(_clone_over_loopback, source, target)
        except KeyboardInterrupt:
            raise P2PCloneError("the demo was interrupted") from None
        except BaseException as exc:
            raise pick_error(exc) from None
        rate = tx.source_bytes / tx.seconds / 1e6 if tx.seconds else 0.0
        print(
            f"    {tx.source_bytes >> 20} MiB cloned in {tx.seconds:.2f} s ({rate:.0f} MB/s): "
            f"{tx.wire_bytes / 1e6:.1f} MB on the wire ({tx.wire_bytes / tx.source_bytes:.0%} "
            f"of the disk), {tx.zero_chunks} of {tx.chunks} chunks were zero and not sent.",
            flush=True,
        )
        print("3/3 Checking …", flush=True)
        same, free = _same_where_used(source, target)
        if not (same and rx.verified and rx.digest == tx.digest):
            raise IntegrityError(f"the demo's target differs from its source (in {base})")
        print(
            f"    The receiver re-read the target and checked every chunk (root "
            f"{rx.digest[:16]}…): target.img holds every block source.img's filesystem "
            f"uses, byte for byte; the {free >> 20} MiB it does not use were neither sent "
            "nor written."
        )
        print(
            "\nOn two real machines:  p2pclone receive /dev/sdX   (on the target)\n"
            "                       p2pclone send /dev/sdY     (type its code: it finds the "
            "receiver)"
        )
        return 0
    except P2PCloneError:
        raise
    except (OSError, subprocess.CalledProcessError) as exc:
        if debug:
            raise
        raise P2PCloneError(f"the demo failed: {exc}") from None
    finally:
        if not workdir:
            shutil.rmtree(base, ignore_errors=True)
