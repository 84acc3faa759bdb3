"""Filesystems and disks built the way real machines have them, and independent oracles.

Free space is dirty: every volume is first filled with pseudo-random bytes ("deleted
data"), then made with discards off, then filled through the real filesystem (ext
mounted through a loop device; FAT written with mtools, since this kernel has no vfat
driver) with files of every size, some deleted again.

Oracles never ask p2pclone: ``partclone.<fs> -D`` (a ddrescue domain map of the used
blocks), ``dumpe2fs`` (bigalloc, which partclone cannot map) and ``mshowfat`` (the
clusters of every file, for FAT12, where partclone 0.3.23's map is wrong).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pclone.volumes.extents import Extents

MiB = 1 << 20


def need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("building filesystems needs root (loop mounts)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs it)")


def run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def dirty(path: Path, size: int, seed: int) -> None:
    """A file of ``size`` bytes of old, deleted data (what free space holds on real disks)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
        f.truncate(size)


@contextlib.contextmanager
def mounted(image: Path, how: str = "loop") -> Iterator[Path]:
    """``image`` mounted (through a loop device, ``how`` its mount options: "loop",
    or "loop,nouuid" for a second XFS of the same UUID; ``how="ntfs-3g"``: by FUSE)."""
    where = Path(tempfile.mkdtemp(prefix="p2pclone-mnt-"))
    if how == "ntfs-3g":
        run("ntfs-3g", "-o", "ro", image, where)
    else:
        run("mount", "-o", how, image, where)
    try:
        yield where
    finally:
        run("umount", where)
        where.rmdir()


def fill_tree(root: Path, seed: int, *, small: int = 300, full: bool = False) -> None:
    """Files of every size, some deleted again, some grown in turns (fragmented)."""
    rng = random.Random(seed)
    st = os.statvfs(root)
    biggest = st.f_bavail * st.f_frsize // 60  # the random files fill about 40 %
    for i in range(24):
        (root / f"f{i}").write_bytes(rng.randbytes(rng.randint(1, biggest)))
    (root / "many").mkdir()
    for i in range(small):
        (root / "many" / f"s{i}").write_bytes(b"%d\n" % i * rng.randint(1, 50))
    with open(root / "frag1", "wb") as a, open(root / "frag2", "wb") as b:
        for _ in range(64):  # interleaved appends: fragmented files
            a.write(rng.randbytes(16384))
            a.flush()
            os.fsync(a.fileno())
            b.write(rng.randbytes(16384))
            b.flush()
            os.fsync(b.fileno())
    for i in range(0, 24, 3):
        (root / f"f{i}").unlink()
    if full:
        with open(root / "filler", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(rng.randbytes(MiB))
        (root / "f1").unlink()


def make_ext(path: Path, size: int, *mkfs: str, seed: int = 1, full: bool = False) -> None:
    need("mkfs.ext4", "mount")
    dirty(path, size, seed)
    run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", *mkfs, path)
    with mounted(path) as root:
        fill_tree(root, seed, full=full)


def make_fat(path: Path, size: int, bits: int, seed: int = 1) -> None:
    need("mkfs.fat", "mcopy")
    dirty(path, size, seed)
    run("mkfs.fat", "-F", str(bits), path)
    rng = random.Random(seed)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        budget = size // 3
        for i in range(30):
            n = min(budget, rng.randint(1, size // 20))
            budget -= n
            src = Path(tmp) / f"F{i}.BIN"
            src.write_bytes(rng.randbytes(n))
            names.append(src.name)
            subprocess.run(
                ["mcopy", "-i", str(path), str(src), f"::/{src.name}"], env=env, check=True
            )
        for name in names[::4]:
            subprocess.run(["mdel", "-i", str(path), f"::/{name}"], env=env, check=True)


def make_xfs(path: Path, size: int, *mkfs: str, seed: int = 1, fill: bool = True) -> None:
    need("mkfs.xfs", "mount")
    dirty(path, size, seed)
    run("mkfs.xfs", "-q", "-f", "-K", *mkfs, path)
    if fill:
        with mounted(path) as root:
            fill_tree(root, seed)


@contextlib.contextmanager
def mounted_xfs_shut_down(path: Path) -> Iterator[Path]:
    """Mounted; on leaving, writes are synced to the log but the filesystem is shut
    down before the log is written back (``xfs_io -x -c shutdown``), then unmounted:
    the log stays dirty, as after a crash."""
    where = Path(tempfile.mkdtemp(prefix="p2pclone-xfs-"))
    run("mount", "-o", "loop", path, where)
    try:
        yield where
        subprocess.run(["sync"], check=True)
        run("xfs_io", "-x", "-c", "shutdown", where)
    finally:
        run("umount", where)
        where.rmdir()


def make_btrfs(path: Path, size: int, seed: int = 1, mkfs: tuple[str, ...] = ()) -> None:
    need("mkfs.btrfs", "mount")
    dirty(path, size, seed)
    run("mkfs.btrfs", "-q", "-f", "-K", *mkfs, path)
    with mounted(path) as root:
        fill_tree(root, seed)


def make_ntfs(path: Path, size: int, seed: int = 1) -> None:
    """NTFS made by mkntfs and filled through ntfs-3g (FUSE)."""
    need("mkntfs", "ntfs-3g")
    dirty(path, size, seed)
    run("mkntfs", "-Q", "-F", "-q", path)
    with mounted_rw_ntfs(path) as where:
        fill_tree(where, seed, small=200)


@contextlib.contextmanager
def mounted_rw_ntfs(path: Path) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="p2pclone-ntfs-"))
    run("ntfs-3g", path, where)
    try:
        yield where
    finally:
        run("umount", where)
        where.rmdir()


def make_exfat(path: Path, size: int, seed: int = 1) -> None:
    """exFAT made by mkfs.exfat and filled through exfat-fuse (on a loop device: it
    mounts block devices only)."""
    need("mkfs.exfat", "mount.exfat-fuse", "losetup")
    dirty(path, size, seed)
    run("mkfs.exfat", path)
    dev = run("losetup", "--find", "--show", path).strip()
    where = Path(tempfile.mkdtemp(prefix="p2pclone-exfat-"))
    try:
        run("mount.exfat-fuse", dev, where)
        try:
            fill_tree(where, seed, small=200)
        finally:
            run("umount", where)
    finally:
        run("losetup", "-d", dev)
        where.rmdir()


def partclone_used(kind: str, path: Path) -> Extents:
    """partclone's used map of the filesystem in ``path`` (``kind``: ext4, fat, ...)."""
    need(f"partclone.{kind}")
    out = path.with_suffix(".domain")
    out.unlink(missing_ok=True)  # partclone resumes an existing domain file: never reuse one
    subprocess.run(
        [f"partclone.{kind}", "-D", "-s", str(path), "-o", str(out), "-L", os.devnull],
        check=True,
        capture_output=True,
    )
    used = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#") and parts[2] == "+":
            start = int(parts[0], 16)
            used.append((start, start + int(parts[1], 16)))
    return Extents.of(used)


def dumpe2fs_used(path: Path) -> Extents:
    """e2fsprogs' own used map (cluster-exact, which partclone lacks for bigalloc)."""
    text = run("dumpe2fs", path)
    block = int(re.search(r"Block size:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    cluster = int(m.group(1)) if (m := re.search(r"Cluster size:\s+(\d+)", text)) else block
    total = int(re.search(r"Block count:\s+(\d+)", text).group(1)) * block  # type: ignore[union-attr]
    free = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Free blocks:"):
            for part in filter(None, (p.strip() for p in line[12:].split(","))):
                first, _, last = part.partition("-")
                free.append((int(first) * block, int(last or first) * block + cluster))
    return Extents.of(free).invert(0, total)


def btrfs_used(path: Path) -> Extents:
    """btrfs-progs' own view (``btrfs inspect-internal dump-tree``): every extent and
    tree block of the extent tree, mapped through the chunk tree to every stripe.

    partclone is no oracle for btrfs: its btrfsclone.c marks file extents' *logical*
    addresses as device offsets (measured: a data chunk at logical 63963136 lives at
    device offset 105906176, and partclone marks 63963136.., inside a metadata chunk),
    and tree blocks that no current tree reaches."""
    need("btrfs")
    nodesize = int(
        re.search(r"nodesize\s+(\d+)", run("btrfs", "inspect-internal", "dump-super", path)).group(
            1
        )
    )  # type: ignore[union-attr]
    chunks: list[tuple[int, int, list[int]]] = []
    for line in run("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", path).splitlines():
        if m := re.search(r"CHUNK_ITEM (\d+)\)", line):
            chunks.append((int(m.group(1)), 0, []))
        elif (m := re.search(r"^\s+length (\d+) owner", line)) and chunks:
            chunks[-1] = (chunks[-1][0], int(m.group(1)), chunks[-1][2])
        elif (m := re.search(r"stripe \d+ devid \d+ offset (\d+)", line)) and chunks:
            chunks[-1][2].append(int(m.group(1)))
    used = []
    extent_tree = run("btrfs", "inspect-internal", "dump-tree", "-t", "extent", path)
    for m in re.finditer(r"item \d+ key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)", extent_tree):
        start = int(m.group(1))
        length = int(m.group(3)) if m.group(2) == "EXTENT_ITEM" else nodesize
        logical, _, stripes = next(c for c in chunks if c[0] <= start < c[0] + c[1])
        used += [(s + start - logical, s + start - logical + length) for s in stripes]
    return Extents.of(used)


def mtools_used(path: Path) -> Extents:
    """The clusters of every file and directory, from mtools (FAT: no partclone)."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-i", str(path), "-/", "-b", "::/"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    head = path.read_bytes()[:64]
    bps, spc, reserved, nfats, root_entries = (
        int.from_bytes(head[11:13], "little"), head[13], int.from_bytes(head[14:16], "little"),
        head[16], int.from_bytes(head[17:19], "little"),
    )  # fmt: skip
    fat_sectors = int.from_bytes(head[22:24], "little") or int.from_bytes(head[36:40], "little")
    first_data = (reserved + nfats * fat_sectors + -(-root_entries * 32 // bps)) * bps
    used = [(0, first_data)]
    for name in listing:
        shown = subprocess.run(
            ["mshowfat", "-i", str(path), name], env=env, check=True, capture_output=True, text=True
        ).stdout
        if "<" not in shown:
            continue  # an empty file: no cluster
        for m in re.finditer(r"(\d+)(?:-(\d+))?", shown.split("<", 1)[1]):
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            used.append((first_data + (a - 2) * spc * bps, first_data + (b - 1) * spc * bps))
    return Extents.of(used)


def wrongly_free(free: Extents, oracle_used: Extents) -> Extents:
    """What the oracle says is used but our map calls free (must be empty)."""
    return Extents.of(r for a, b in free for r in oracle_used.clip(a, b))


# -- whole disks ------------------------------------------------------------------------

#: sgdisk type codes / sfdisk MBR types of the volume kinds below
_GPT_CODES = {"fat32": "ef00", "ext4": "8300", "swap": "8200", "raw": "8300", "fat16": "0700"}
_GPT_CODES.update(ntfs="0700", msr="0c01", recovery="2700", xfs="8300", btrfs="8300")
_GPT_CODES.update(exfat="0700")
_MBR_CODES = {"fat32": "c", "ext4": "83", "swap": "82", "raw": "83", "fat16": "e", "ntfs": "7"}
_MBR_CODES.update(recovery="27", xfs="83", btrfs="83", exfat="7")


def make_volume(path: Path, kind: str, size: int, seed: int) -> Extents:
    """Build one volume; return the oracle's used map of it (relative)."""
    if kind == "ext4":
        make_ext(path, size, seed=seed)
        return partclone_used("ext4", path)
    if kind in ("fat16", "fat32"):
        make_fat(path, size, int(kind[3:]), seed=seed)
        return partclone_used("fat", path)
    if kind in ("ntfs", "recovery"):  # a Windows recovery partition is an NTFS
        make_ntfs(path, size, seed=seed)
        return partclone_used("ntfs", path)
    if kind == "exfat":
        make_exfat(path, size, seed=seed)
        return partclone_used("exfat", path)
    if kind == "msr":  # Microsoft reserved: no filesystem, zeros
        with open(path, "wb") as f:
            f.truncate(size)
        return Extents(((0, size),))
    if kind == "xfs":
        make_xfs(path, size, seed=seed)
        return partclone_used("xfs", path)
    if kind == "btrfs":
        make_btrfs(path, size, seed=seed)
        return btrfs_used(path)
    if kind == "swap":
        dirty(path, size, seed)
        run("mkswap", path)
        return Extents(((0, 4096),))
    dirty(path, size, seed)  # "raw": a volume nobody can read, copied whole
    return Extents(((0, size),))


def make_disk(
    path: Path, size: int, volumes: list[tuple[str, int]], *, scheme: str = "gpt", seed: int = 7
) -> list[tuple[int, int, Extents]]:
    """A disk with a partition table and these volumes, free space dirty everywhere.

    Returns ``(start, size, oracle used map, absolute)`` of each partition, in order.
    MBR disks put every volume after the first into an extended partition (logicals).
    """
    need("sgdisk", "sfdisk")
    dirty(path, size, seed)
    if scheme == "gpt":
        args = []
        for k, (kind, vsize) in enumerate(volumes, 1):
            args += ["-n", f"{k}:0:+{vsize // 1024}K", "-t", f"{k}:{_GPT_CODES[kind]}"]
        run("sgdisk", *args, path)
    else:
        lines = [f"size={volumes[0][1] // 512}, type={_MBR_CODES[volumes[0][0]]}"]
        if len(volumes) > 1:
            lines.append("type=5")
            lines += [f"size={v // 512}, type={_MBR_CODES[k]}" for k, v in volumes[1:]]
        subprocess.run(
            ["sfdisk", "--quiet", "--label", "dos", str(path)],
            input="\n".join(lines) + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
    dump = run("sfdisk", "-d", path)
    starts = [
        (int(m.group(1)) * 512, int(m.group(2)) * 512)
        for m in re.finditer(r"start=\s*(\d+), size=\s*(\d+), type=(\w+)", dump)
        if m.group(3) not in ("5", "f", "85")  # the extended partition itself
    ]
    out = []
    with open(path, "r+b") as disk:
        for k, ((kind, vsize), (start, length)) in enumerate(zip(volumes, starts, strict=True)):
            vol = path.with_name(f"{path.stem}.p{k + 1}")
            used = make_volume(vol, kind, length, seed + k + 1)
            assert length >= vsize - MiB
            disk.seek(start)
            disk.write(vol.read_bytes())
            vol.unlink()
            out.append((start, length, used.shift(start)))
    return out


def zero_tail(path: Path, parts: list[tuple[int, int, Extents]]) -> None:
    """Zeros between the last partition's end and the disk's end (a GPT's backup, in
    the last 33 sectors, kept): unpartitioned space as a new disk has it, which a
    smaller target may then cut off."""
    end = max(start + size for start, size, _ in parts)
    total = path.stat().st_size
    with open(path, "r+b") as f:
        head = f.read(1024)
        stop = total - 33 * 512 if head[512:520] == b"EFI PART" else total
        f.seek(end)
        f.write(bytes(stop - end))
