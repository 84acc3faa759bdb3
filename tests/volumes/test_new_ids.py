"""``--new-ids`` (issue 24, §2): a clone that stays in the same PC gets its own
identity — new GPT GUIDs or MBR signature, a new UUID or serial for every filesystem
(each by its own tool), the Linux references to them rewritten, the rest listed — on
real tables and filesystems (tests/volumes/builders.py), checked with blkid, sgdisk,
sfdisk and each filesystem's fsck."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .builders import MiB, make_disk, mounted_rw_ntfs, need, run
from .test_technician import clone, done_of

CLI = [sys.executable, "-m", "p2pclone"]
MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@contextlib.contextmanager
def partition(disk: str | Path, start: int, size: int) -> Iterator[str]:
    """A loop device over one partition of a disk (file or device)."""
    dev = run("losetup", "--find", "--show", "-o", str(start), "--sizelimit", str(size), disk)
    try:
        yield dev.strip()
    finally:
        subprocess.run(["losetup", "-d", dev.strip()], capture_output=True)


@contextlib.contextmanager
def mounted_part(disk: str | Path, start: int, size: int, ro: bool = False) -> Iterator[Path]:
    with partition(disk, start, size) as dev:
        where = Path(run("mktemp", "-d").strip())
        run("mount", *(["-o", "ro"] if ro else []), dev, where)
        try:
            yield where
        finally:
            run("umount", where)
            where.rmdir()


def uuid_of(disk: str | Path, start: int, size: int) -> str:
    with partition(disk, start, size) as dev:
        return run("blkid", "-p", "-o", "value", "-s", "UUID", dev).strip()


def fat_file(disk: str | Path, start: int, name: str, text: str | None = None) -> str:
    """Read (or write, with ``text``) a file on the FAT at byte ``start`` of ``disk``."""
    image = f"{disk}@@{start}"
    if text is None:
        return subprocess.run(
            ["mtype", "-i", image, "::/" + name], env=MTOOLS, capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip
    folders = name.split("/")[:-1]
    for k in range(1, len(folders) + 1):
        subprocess.run(
            ["mmd", "-i", image, "::/" + "/".join(folders[:k])], env=MTOOLS, capture_output=True
        )
    local = Path(run("mktemp").strip())
    local.write_text(text)
    subprocess.run(["mcopy", "-o", "-i", image, str(local), "::/" + name], env=MTOOLS, check=True)
    local.unlink()
    return text


def gpt_ids(disk: str) -> tuple[str, list[str]]:
    """The disk GUID and each partition's unique GUID, as sgdisk reads them."""
    head = run("sgdisk", "-p", disk)
    guid = re.search(r"Disk identifier \(GUID\): (\S+)", head).group(1).lower()  # type: ignore[union-attr]
    count = len(re.findall(r"^\s+\d+\s+\d+\s+\d+", head, re.M))
    parts = []
    for n in range(1, count + 1):
        info = run("sgdisk", "-i", str(n), disk)
        parts.append(re.search(r"unique GUID: (\S+)", info).group(1).lower())  # type: ignore[union-attr]
    return guid, parts


def renamed(text: str, new_ids: dict[str, str]) -> str:
    for old, new in new_ids.items():
        text = text.replace(old, new).replace(old.upper(), new.upper())
    return text


# -- a Linux disk: GPT, ESP + root + swap + XFS + btrfs -------------------------------------


def linux_disk(path: Path) -> tuple[list[tuple[int, int, object]], dict[str, str]]:
    """A GPT disk as a Linux installer leaves it: an EFI system partition with GRUB's
    grub.cfg, an ext4 root with /etc/fstab and /boot/grub/grub.cfg naming every
    filesystem by UUID (one by PARTUUID), swap, an XFS /srv and a btrfs /data; a systemd
    mount unit and an initramfs that also name old IDs (which we list, not rewrite)."""
    need("sgdisk", "mkfs.xfs", "mkfs.btrfs", "mkswap", "mcopy")
    parts = make_disk(
        path,
        720 * MiB,
        [("fat32", 64 * MiB), ("ext4", 96 * MiB), ("swap", 16 * MiB),
         ("xfs", 320 * MiB), ("btrfs", 200 * MiB)],
    )  # fmt: skip
    ids = {
        name: uuid_of(path, start, size)
        for name, (start, size, _) in zip(
            ("esp", "root", "swap", "srv", "data"), parts, strict=True
        )
    }
    _disk_guid, partuuids = gpt_ids(str(path))
    ids["data-part"] = partuuids[4]
    fstab = (
        f"UUID={ids['root']} / ext4 errors=remount-ro 0 1\n"
        f"UUID={ids['esp']} /boot/efi vfat umask=0077 0 1\n"
        f"UUID={ids['swap']} none swap sw 0 0\n"
        f"UUID={ids['srv']} /srv xfs defaults 0 2\n"
        f"PARTUUID={ids['data-part']} /data btrfs defaults 0 2\n"
    )
    grub = (
        f"search --no-floppy --fs-uuid --set=root {ids['root']}\n"
        f"linux /boot/vmlinuz-6.1.0-amd64 root=UUID={ids['root']} ro resume=UUID={ids['swap']}\n"
    )
    start, size, _ = parts[1]
    with mounted_part(path, start, size) as root:
        (root / "etc/systemd/system").mkdir(parents=True)
        (root / "boot/grub").mkdir(parents=True)
        (root / "etc/fstab").write_text(fstab)
        os.chmod(root / "etc/fstab", 0o640)
        (root / "boot/grub/grub.cfg").write_text(grub)
        (root / "etc/systemd/system/data.mount").write_text(
            f"[Mount]\nWhat=/dev/disk/by-uuid/{ids['data']}\nWhere=/data\n"
        )
        (root / "boot/initrd.img-6.1.0-amd64").write_bytes(b"\x1f\x8b" + os.urandom(4096))
    fat_file(
        path, parts[0][0], "EFI/debian/grub.cfg",
        f"search.fs_uuid {ids['root']} root hd0,gpt2\nset prefix=($root)'/boot/grub'\n"
        "configfile $prefix/grub.cfg\n",
    )  # fmt: skip
    return parts, ids


def test_new_ids_on_a_linux_disk(tmp_path: Path, loop_device) -> None:
    """Every ID of the clone is new, checked by the tools a user would use (blkid,
    sgdisk), every filesystem still checks clean, and the references the system boots
    by (fstab, GRUB's grub.cfg on root and ESP) name the new IDs — the rest of those
    files and every other file unchanged; what is left (a systemd unit, the initramfs)
    is said.  Negative control (tried): without the references step, fstab still names
    the old UUIDs and the test fails on it."""
    source = tmp_path / "linux.img"
    parts, ids = linux_disk(source)
    dev = loop_device(720 * MiB, None)
    r = clone(source, dev, "--new-ids")
    assert r.returncode == 0, r.stderr
    done = done_of(r)
    new_ids: dict[str, str] = done["new_ids"]  # type: ignore[assignment]
    notices = [
        e["message"] for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "notice"
    ]
    # every filesystem: a new UUID, as blkid reads it on the target
    for name, (start, size, _) in zip(("esp", "root", "swap", "srv", "data"), parts, strict=True):
        now = uuid_of(dev, start, size)
        assert now != ids[name] and new_ids[ids[name]] == now, (name, now, ids[name])
    # the table: a new disk GUID and partition GUIDs, valid both copies (sgdisk -v)
    old_guid, old_parts = gpt_ids(str(source))
    new_guid, new_parts = gpt_ids(dev)
    assert new_guid != old_guid and new_ids[old_guid] == new_guid
    assert not set(new_parts) & set(old_parts)
    assert "No problems found" in run("sgdisk", "-v", dev)
    # each filesystem checks clean with its own tool
    with partition(dev, parts[0][0], parts[0][1]) as p:
        subprocess.run(["fsck.fat", "-n", p], check=True, capture_output=True)
    with partition(dev, parts[1][0], parts[1][1]) as p:
        subprocess.run(["e2fsck", "-fn", p], check=True, capture_output=True)
    with partition(dev, parts[3][0], parts[3][1]) as p:
        subprocess.run(["xfs_repair", "-n", p], check=True, capture_output=True)
    with partition(dev, parts[4][0], parts[4][1]) as p:
        subprocess.run(["btrfs", "check", "--readonly", p], check=True, capture_output=True)
    # the references: rewritten exactly (nothing else in those files changed)
    with (
        mounted_part(source, parts[1][0], parts[1][1], ro=True) as old,
        mounted_part(dev, parts[1][0], parts[1][1], ro=True) as new,
    ):
        for name in ("etc/fstab", "boot/grub/grub.cfg"):
            assert (new / name).read_text() == renamed((old / name).read_text(), new_ids), name
            assert not any(i in (new / name).read_text() for i in ids.values()), name
        assert (new / "etc/fstab").stat().st_mode & 0o777 == 0o640
        diff = subprocess.run(
            ["diff", "-r", "-q", "-x", "fstab", "-x", "grub.cfg", str(old), str(new)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert diff.returncode == 0, diff.stdout
    esp = fat_file(dev, parts[0][0], "EFI/debian/grub.cfg")
    assert f"search.fs_uuid {new_ids[ids['root']]} root" in esp
    said = " ".join(notices)
    assert "partition 2's /etc/fstab" in said and "partition 1's /EFI/debian/grub.cfg" in said
    assert "/etc/systemd/system/data.mount still name an old ID" in said, said
    assert "update-initramfs" in said, said


# -- an MBR disk: NTFS with Windows' boot files, FAT16, exFAT, ext4 in logicals -------------


def test_new_ids_on_an_mbr_disk_with_windows(tmp_path: Path, loop_device) -> None:
    """MBR: a new disk signature (sfdisk reads it), so every PARTUUID (SIGNATURE-NN)
    changes; a Raspberry Pi style cmdline.txt on the FAT and an fstab in a logical
    ext4 name the new ones; NTFS, FAT16 and exFAT get new serials and check clean; the
    NTFS's Windows boot configuration is said to need bcdboot.  Negative control
    (tried): with the MBR signature left alone, the PARTUUID assertions fail."""
    need("sfdisk", "mkntfs", "mkfs.exfat", "ntfsfix", "fsck.exfat")
    source = tmp_path / "mbr.img"
    parts = make_disk(
        source, 256 * MiB,
        [("ntfs", 64 * MiB), ("fat16", 40 * MiB), ("exfat", 40 * MiB), ("ext4", 64 * MiB)],
        scheme="mbr",
    )  # fmt: skip
    sig = run("sfdisk", "--disk-id", source).strip().lower().removeprefix("0x")
    with partition(source, parts[0][0], parts[0][1]) as p, mounted_rw_ntfs(Path(p)) as win:
        (win / "Boot").mkdir()
        (win / "Boot" / "BCD").write_bytes(b"regf" + os.urandom(4092))
    # logicals are numbered from 5: fat16 is 5, exfat 6, ext4 7
    fat_file(source, parts[1][0], "cmdline.txt", f"console=tty1 root=PARTUUID={sig}-07 rw\n")
    with mounted_part(source, parts[3][0], parts[3][1]) as root:
        (root / "etc").mkdir()
        (root / "etc/fstab").write_text(
            f"PARTUUID={sig}-07 / ext4 defaults 0 1\nPARTUUID={sig}-05 /boot vfat defaults 0 2\n"
        )
    before = [uuid_of(source, s, n) for s, n, _ in parts]
    dev = loop_device(256 * MiB, None)
    r = clone(source, dev, "--new-ids")
    assert r.returncode == 0, r.stderr
    new_ids: dict[str, str] = done_of(r)["new_ids"]  # type: ignore[assignment]
    new_sig = run("sfdisk", "--disk-id", dev).strip().lower().removeprefix("0x")
    assert new_sig != sig and new_ids[sig] == new_sig
    assert new_ids[f"{sig}-07"] == f"{new_sig}-07"
    after = [uuid_of(dev, s, n) for s, n, _ in parts]
    for old, new in zip(before, after, strict=True):
        assert old != new and new_ids[old] == new, (old, new)
    assert f"root=PARTUUID={new_sig}-07" in fat_file(dev, parts[1][0], "cmdline.txt")
    with mounted_part(dev, parts[3][0], parts[3][1], ro=True) as root:
        fstab = (root / "etc/fstab").read_text()
    assert f"PARTUUID={new_sig}-07 /" in fstab and f"PARTUUID={new_sig}-05 /boot" in fstab
    with partition(dev, parts[0][0], parts[0][1]) as p:
        subprocess.run(["ntfsfix", "--no-action", p], check=True, capture_output=True)
    with partition(dev, parts[1][0], parts[1][1]) as p:
        subprocess.run(["fsck.fat", "-n", p], check=True, capture_output=True)
    with partition(dev, parts[2][0], parts[2][1]) as p:
        subprocess.run(["fsck.exfat", "-n", p], check=True, capture_output=True)
    assert "partition 1's /Boot/BCD" in r.stdout and "bcdboot" in r.stdout, r.stdout
    verified = subprocess.run(["sfdisk", "--verify", dev], capture_output=True, text=True)
    assert verified.returncode == 0 and "No errors detected" in verified.stdout, verified.stdout


def test_a_disk_cloned_onto_a_disk_keeps_its_ids_and_says_so(tmp_path: Path, loop_device) -> None:
    """The default: the IDs are kept (the new disk usually replaces the old one, and
    Windows' boot configuration names them), and a disk-to-disk clone in one machine
    says that both disks now share them and what to do.  Negative control (tried):
    without the notice, the "same disk and filesystem IDs" assertion fails."""
    need("sgdisk")
    image = tmp_path / "src.img"
    parts = make_disk(image, 64 * MiB, [("ext4", 40 * MiB)])
    src = loop_device(64 * MiB, image.read_bytes())
    dev = loop_device(64 * MiB, None)
    r = clone(src, dev)
    assert r.returncode == 0, r.stderr
    assert "has the same disk and filesystem IDs as" in r.stdout and "--new-ids" in r.stdout
    assert gpt_ids(dev) == gpt_ids(src)
    start, size, _ = parts[0]
    assert uuid_of(dev, start, size) == uuid_of(src, start, size)
    assert done_of(r)["new_ids"] == {}
    # a file target is not a second disk in this machine: nothing to say
    r = clone(src, str(tmp_path / "copy.img"))
    assert r.returncode == 0 and "same disk and filesystem IDs" not in r.stdout


def test_new_ids_on_a_filesystem_with_no_table(tmp_path: Path) -> None:
    """A filesystem on the whole disk (a partition image, a USB stick): its UUID is new,
    nothing else is written."""
    from .builders import make_ext

    source = tmp_path / "fs.img"
    make_ext(source, 48 * MiB)
    target = tmp_path / "copy.img"
    r = clone(source, str(target), "--new-ids")
    assert r.returncode == 0, r.stderr
    old = run("blkid", "-p", "-o", "value", "-s", "UUID", source).strip()
    new = run("blkid", "-p", "-o", "value", "-s", "UUID", target).strip()
    assert old != new and done_of(r)["new_ids"] == {old: new}
    subprocess.run(["e2fsck", "-fn", str(target)], check=True, capture_output=True)
