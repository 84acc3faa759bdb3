"""Cloning disks built like real machines' (builders.py): GPT or MBR, FAT32 + ext4 +
swap + a volume nobody can read, free space full of deleted data.

What a user checks after such a clone, and so do these tests: every filesystem passes
its own fsck on the target, its files are the source's, everything outside the
filesystems (tables, gaps, the unreadable volume, swap's header) is byte-identical;
and what the map calls free was neither sent nor written (the target still holds
its own old bytes there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import Done, Mapped
from p2pclone.volumes import scan
from p2pclone.volumes.extents import Extents

from .builders import MiB, make_disk, mounted, need, run

LAYOUT = [
    ("fat32", 40 * MiB),
    ("ntfs", 64 * MiB),
    ("ext4", 96 * MiB),
    ("swap", 8 * MiB),
    ("raw", 8 * MiB),
]
SIZE = 224 * MiB
OLD = b"\xa5"  # what the target held before: must survive in the free ranges


def reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    return (lambda off, n: os.pread(fd, n, off)), os.fstat(fd).st_size


def old_target(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(OLD * MiB)


async def clone(source: Path, target: Path, **send_options: Any) -> tuple[Done, Done, list]:
    url = f"memory://disk{os.getpid()}{id(target)}"
    out: dict[str, Done] = {}
    events: list = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
                out["rx"] = await receive(
                    str(target),
                    url,
                    ReceiveOptions(code="1-test-code", verify=True),
                    task_status=task_status,
                )

            real = await nursery.start(rx)
            options = SendOptions(code="1-test-code", **send_options)
            out["tx"] = await send(str(source), real, options, report=events.append)
    return out["tx"], out["rx"], events


def part(disk: Path, start: int, size: int, name: Path) -> Path:
    with open(disk, "rb") as f:
        f.seek(start)
        name.write_bytes(f.read(size))
    return name


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def fat_tree(image: Path) -> dict[str, bytes]:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    names = subprocess.run(
        ["mdir", "-i", str(image), "-/", "-b", "::/"], env=env, check=True,
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return {
        n: subprocess.run(
            ["mtype", "-i", str(image), n], env=env, check=True, capture_output=True
        ).stdout
        for n in names
    }


@pytest.mark.parametrize("scheme", ["gpt", "mbr"])
def test_a_real_disk_is_cloned_by_its_used_blocks(tmp_path: Path, scheme: str) -> None:
    need("e2fsck", "fsck.vfat", "mtype", "ntfsfix")
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    parts = make_disk(source, SIZE, LAYOUT, scheme=scheme)
    old_target(target, SIZE)
    tx, rx, events = trio.run(clone, source, target)
    disk = scan(*reader(source))
    assert disk.free.total > 80 * MiB
    assert tx.free_bytes == rx.free_bytes == disk.free.total
    assert tx.digest == rx.digest and rx.verified
    # Only used blocks travel: far less than the disk, and less than its used bytes
    # would cost raw (the dirty free space is random: sent, it could not compress).
    assert tx.wire_bytes < (SIZE - disk.free.total) * 1.05
    mapped = [e for e in events if isinstance(e, Mapped)]
    assert [v["fs"] for v in mapped[0].volumes] == ["fat32", "ntfs", "ext4", "swap", ""]

    src, dst = source.read_bytes(), target.read_bytes()
    # Not written: every free range still holds the target's old bytes.
    for a, b in disk.free:
        assert dst[a:b] == OLD * (b - a)
    # Byte-identical outside the free ranges: tables, gaps, swap's header, the raw volume.
    for a, b in disk.free.invert(0, SIZE):
        assert dst[a:b] == src[a:b], f"bytes {a}-{b} differ"
    (fat_start, fat_size, _), (nt_start, nt_size, _), (ext_start, ext_size, _) = parts[:3]
    s_fat = part(source, fat_start, fat_size, tmp_path / "s.fat")
    t_fat = part(target, fat_start, fat_size, tmp_path / "t.fat")
    run("fsck.vfat", "-n", t_fat)
    assert fat_tree(t_fat) == fat_tree(s_fat)
    s_ext = part(source, ext_start, ext_size, tmp_path / "s.ext")
    t_ext = part(target, ext_start, ext_size, tmp_path / "t.ext")
    run("e2fsck", "-fn", t_ext)
    with mounted(s_ext) as a, mounted(t_ext) as b:
        assert tree(a) == tree(b)
    s_nt = part(source, nt_start, nt_size, tmp_path / "s.ntfs")
    t_nt = part(target, nt_start, nt_size, tmp_path / "t.ntfs")
    run("ntfsfix", "-n", t_nt)
    with mounted(s_nt, "ntfs-3g") as a, mounted(t_nt, "ntfs-3g") as b:
        assert tree(a) == tree(b)


def test_exact_copies_every_byte(tmp_path: Path) -> None:
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    make_disk(source, 96 * MiB, [("fat32", 40 * MiB), ("ext4", 48 * MiB)])
    old_target(target, 96 * MiB)
    tx, rx, events = trio.run(lambda: clone(source, target, exact=True))
    assert tx.free_bytes == rx.free_bytes == 0
    assert target.read_bytes() == source.read_bytes()
    assert [e.scheme for e in events if isinstance(e, Mapped)] == ["exact"]


def test_the_plan_names_each_partition_over_tcp(tmp_path: Path) -> None:
    """The CLI, over real loopback TCP: the plan lines name partitions and filesystems,
    and --json's done lines carry free_bytes on both sides."""
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    make_disk(source, 96 * MiB, [("fat32", 40 * MiB), ("raw", 8 * MiB)])
    env = {**os.environ, "P2PCLONE_CODE": "4-plan-lines"}
    rx = subprocess.Popen(
        [sys.executable, "-m", "p2pclone", "receive", str(target), "tcp://127.0.0.1:0",
         "--yes", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert rx.stdout is not None
    listening = json.loads(rx.stdout.readline())
    tx = subprocess.run(
        [sys.executable, "-m", "p2pclone", "send", str(source), listening["url"]],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    out, err = rx.communicate(timeout=60)
    assert tx.returncode == 0 and rx.returncode == 0, tx.stderr + err.decode()
    text = tx.stdout + tx.stderr
    assert "Source layout: GPT" in text
    assert "EFI system" in text and "fat32" in text and "only used blocks" in text
    assert "copied whole: no filesystem recognised" in text
    done = json.loads(out.decode().strip().splitlines()[-1])
    assert done["event"] == "done" and done["free_bytes"] > 20 * MiB
    free = scan(*reader(source)).free
    assert done["free_bytes"] == free.total
    src, dst = source.read_bytes(), target.read_bytes()
    assert all(dst[a:b] == src[a:b] for a, b in Extents.invert(free, 0, len(src)))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pclone", *args],
        capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_clone_on_one_machine_and_through_an_image(tmp_path: Path) -> None:
    """`p2pclone clone` onto a disk file holding old data, then SOURCE -> image -> disk:
    every route gives the same used bytes, checked by the filesystems' own fsck."""
    need("e2fsck")
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    parts = make_disk(source, SIZE, LAYOUT)
    old_target(target, SIZE)
    done = cli("clone", str(source), str(target), "--yes", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["event"] == "map" and [v["fs"] for v in lines[0]["volumes"]][:3] == [
        "fat32", "ntfs", "ext4",
    ]  # fmt: skip
    last = lines[-1]
    free = scan(*reader(source)).free
    assert last["event"] == "done" and last["verified"] and last["free_bytes"] == free.total
    src = source.read_bytes()
    dst = target.read_bytes()
    assert all(dst[a:b] == src[a:b] for a, b in free.invert(0, SIZE))
    assert all(dst[a:b] == OLD * (b - a) for a, b in free)

    # Through an image: it holds only used blocks, and a restore writes only them.
    image = tmp_path / "disk.p2pc"
    env = {"P2PCLONE_PASSPHRASE": "image-pass-phrase"}
    saved = cli("clone", str(source), f"file://{image}", "--json", env=env)
    assert saved.returncode == 0, saved.stderr
    assert image.stat().st_size < (SIZE - free.total) * 1.05
    info = cli("image", "info", f"file://{image}")
    assert "Layout:     GPT" in info.stdout and "EFI system, fat32" in info.stdout
    again = tmp_path / "again.img"
    old_target(again, SIZE)
    restored = cli("clone", f"file://{image}", str(again), "--yes", "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout.splitlines()[-1])["free_bytes"] == free.total
    back = again.read_bytes()
    assert all(back[a:b] == src[a:b] for a, b in free.invert(0, SIZE))
    assert all(back[a:b] == OLD * (b - a) for a, b in free)
    ext_start, ext_size, _ = parts[2]
    run("e2fsck", "-fn", part(again, ext_start, ext_size, tmp_path / "t.ext"))


def test_clone_refuses_a_disk_onto_itself(tmp_path: Path) -> None:
    source = tmp_path / "source.img"
    source.write_bytes(os.urandom(MiB))
    done = cli("clone", str(source), str(source), "--yes")
    assert done.returncode == 4
    assert "are the same file" in done.stderr
    link = tmp_path / "link.img"
    link.symlink_to(source)
    assert cli("clone", str(link), str(source), "--yes").returncode == 4


async def clone_delta(source: Path, target: Path) -> tuple[Done, Done]:
    url = f"memory://delta{os.getpid()}{id(target)}"
    out: dict[str, Done] = {}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
                out["rx"] = await receive(
                    str(target),
                    url,
                    ReceiveOptions(code="1-test-code", delta=True, verify=True, fresh=True),
                    task_status=task_status,
                )

            real = await nursery.start(rx)
            out["tx"] = await send(str(source), real, SendOptions(code="1-test-code"))
    return out["tx"], out["rx"]


def test_delta_after_a_change_through_the_filesystem(tmp_path: Path) -> None:
    """A clone, then a file changed and one deleted through ext4 on the source, then
    --delta: most chunks are already there, little travels, and every byte the new map
    calls used is the new source's (masked hashes agree across the two maps)."""
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    parts = make_disk(source, SIZE, LAYOUT)
    old_target(target, SIZE)
    trio.run(clone, source, target)
    ext_start, ext_size, _ = parts[2]
    ext = part(source, ext_start, ext_size, tmp_path / "ext.img")
    with mounted(ext) as root:  # change it through ext4, then put it back in the disk
        (root / "f4").write_bytes(os.urandom(300 * 1024))
        (root / "f5").unlink()
    with open(source, "r+b") as f:
        f.seek(ext_start)
        f.write(ext.read_bytes())
    tx, rx = trio.run(clone_delta, source, target)
    assert tx.digest == rx.digest and rx.verified
    assert tx.same_chunks > tx.chunks // 2  # most chunks were already there
    assert tx.wire_bytes < 8 * MiB
    free = scan(*reader(source)).free
    src, dst = source.read_bytes(), target.read_bytes()
    assert all(dst[a:b] == src[a:b] for a, b in free.invert(0, SIZE))


def test_an_xfs_volume_clones_and_passes_xfs_repair(tmp_path: Path) -> None:
    """A whole-disk XFS (mkfs.xfs refuses under 300 MB, so it is not in LAYOUT): only
    its used blocks travel, xfs_repair -n finds nothing on the target, the trees agree."""
    from .builders import make_xfs

    need("xfs_repair")
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    make_xfs(source, 320 * MiB)
    old_target(target, 320 * MiB)
    done = cli("clone", str(source), str(target), "--yes", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["free_bytes"] > 100 * MiB
    run("xfs_repair", "-n", target)
    with mounted(source) as a, mounted(target, "loop,nouuid,ro") as b:
        assert tree(a) == tree(b)


def test_a_btrfs_volume_clones_and_passes_btrfs_check(tmp_path: Path) -> None:
    """A whole-disk btrfs: only its extents and tree blocks travel; btrfs check finds
    nothing on the target, and every data block's checksum matches (--check-data-csum:
    the target held other data, so a data block left behind would be found); the trees
    agree (mounted one after the other: two mounted copies would share their fsid)."""
    from .builders import make_btrfs

    need("btrfs")
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    make_btrfs(source, 400 * MiB)
    old_target(target, 400 * MiB)
    done = cli("clone", str(source), str(target), "--yes", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["free_bytes"] > 300 * MiB
    run("btrfs", "check", "--readonly", "--check-data-csum", target)
    with mounted(source) as a:
        before = tree(a)
    with mounted(target, "loop,ro") as b:
        assert tree(b) == before
