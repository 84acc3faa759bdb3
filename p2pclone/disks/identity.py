"""``--new-ids``: a written clone given its own identity, and the references to the old
one rewritten where that is safe.

1. Every filesystem gets a new UUID or serial from its own tool, run on a loop device
   over its partition (disks/tools.py): ``tune2fs -U random`` after ``e2fsck -f -p``,
   ``xfs_admin -U generate``, ``btrfstune -f -u``, ``fatlabel -i``, ``tune.exfat -I``,
   ``ntfslabel --new-serial``, ``swaplabel -U``.  ``blkid -p`` reads the ID before and
   after: what is reported is what the disk now says, not what a tool claimed.
2. The table gets a new GPT disk GUID and partition GUIDs, or a new MBR signature
   (volumes/identity.py).
3. The Linux references that name the old IDs are rewritten: ``/etc/fstab``,
   ``/etc/crypttab``, GRUB's ``grub.cfg`` (on the root or /boot filesystem and on the
   EFI system partition), systemd-boot entries, a Raspberry Pi's ``cmdline.txt``.  A
   Linux filesystem is mounted for this in a private temporary folder; a FAT one is
   edited with mtools (no kernel driver needed).  A file is replaced whole (written
   beside it, synced, renamed over it), and only where it names an old ID.
4. What still names the old IDs and cannot be rewritten safely is listed: other files
   under /etc, initramfs images, GRUB's boot image, Windows' boot configuration and
   drive letters, LUKS and LVM headers.

Blocking: run in a worker thread, after the clone is written and verified.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TargetError
from ..volumes.geometry import GeometryError
from ..volumes.identity import new_table_ids
from ..volumes.table import read_table
from .target import Target
from .tools import loop_over, run, said

#: filesystems whose references we rewrite by mounting them
_LINUX = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})
#: the files that name filesystems and partitions by ID, relative to a filesystem's root
#: (a root filesystem, a separate /boot, an EFI system partition); globs allowed
_REFERENCES = (
    "etc/fstab",
    "etc/crypttab",
    "etc/default/grub",
    "etc/initramfs-tools/conf.d/resume",
    "etc/kernel/cmdline",
    "boot/grub/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/loader/entries/*.conf",
    "boot/cmdline.txt",
    "boot/firmware/cmdline.txt",
    "grub/grub.cfg",
    "grub2/grub.cfg",
    "loader/entries/*.conf",
    "EFI/*/grub.cfg",
    "cmdline.txt",
    "extlinux/extlinux.conf",
    "boot/extlinux/extlinux.conf",
)
#: a file larger than this is not a configuration file
_MAX_FILE = 1 << 20
#: how many files under /etc are searched for old IDs left behind
_MAX_SCAN = 20000


@dataclass(slots=True)
class Renewed:
    """What ``--new-ids`` did, and what it left."""

    #: one phrase per change: "partition 2's ext4 (UUID 0f3c… → 9a1e…)"
    changed: list[str] = field(default_factory=list)
    #: one phrase per rewritten file: "partition 2's /etc/fstab"
    rewritten: list[str] = field(default_factory=list)
    #: one sentence per reference left naming an old ID, or ID that could not change
    left: list[str] = field(default_factory=list)
    #: old → new, as blkid spells them (UUIDs, serials, PARTUUIDs, the disk's)
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Volume:
    name: str  # "partition 2", or "the disk" (a filesystem with no table)
    start: int
    size: int


def renew_ids(target: Target) -> Renewed:
    """Give the clone written on ``target`` new IDs (see the module's docstring).

    Raises:
        TargetError: the partition table cannot be given new IDs (damaged); the clone
            itself is complete and verified.
    """
    out = Renewed()
    table = read_table(target.read_raw, target.size, target.sector_size)
    volumes = [_Volume(f"partition {p.number}", p.start, p.size) for p in table.partitions] or [
        _Volume("the disk", 0, target.size)
    ]
    kinds = {}
    for vol in volumes:
        kinds[vol] = target.filesystem_at(vol.start, vol.size)
        _renew_filesystem(target.path, vol, kinds[vol], out)
    try:
        ids = new_table_ids(target.read_raw, target.size, target.sector_size)
    except GeometryError as exc:
        raise TargetError(
            f"the partition table on {target.path} cannot be given new IDs ({exc}); the "
            "clone itself is complete and verified, its filesystems have new IDs"
        ) from None
    for offset, data in ids.writes:
        target.write_raw(offset, data)
    target.sync()
    if ids.said:
        out.changed.append(ids.said)
        out.renamed.update(ids.renamed)
    if not out.renamed:
        return out
    for vol in volumes:
        kind = kinds[vol]
        if kind in _LINUX:
            _linux_references(target.path, vol, kind, out)
        elif kind == "vfat":
            _fat_references(target.path, vol, out)
        elif kind == "ntfs":
            _windows(target.path, vol, out)
    if target.read_raw(0, 512).find(b"GRUB ") >= 0:
        out.left.append(
            "GRUB's boot code (in the first MiB, or a BIOS boot partition) names /boot's "
            "old UUID: if the disk stops at a grub rescue> prompt, boot it once from its "
            "menu or a rescue medium and run grub-install"
        )
    return out


# -- 1. filesystems ------------------------------------------------------------------------


def _tool(kind: str, dev: str) -> list[list[str]] | None:
    """The commands that give the filesystem ``kind`` on ``dev`` a new random ID."""
    serial = secrets.token_hex(4).upper()
    if kind in ("ext2", "ext3", "ext4"):
        return [["e2fsck", "-f", "-p", dev], ["tune2fs", "-U", "random", dev]]
    return {
        "xfs": [["xfs_admin", "-U", "generate", dev]],
        "btrfs": [["btrfstune", "-f", "-u", dev]],
        "vfat": [["fatlabel", "-i", dev, serial]],
        "exfat": [["tune.exfat", "-I", "0x" + serial, dev]],
        "ntfs": [["ntfslabel", "--new-serial", dev]],
        "swap": [["swaplabel", "-U", str(uuid.uuid4()), dev]],
    }.get(kind)


#: what to do about the volumes no tool of ours re-identifies
_LEFT = {
    "luks": "a LUKS container keeps its UUID: `cryptsetup luksUUID --uuid $(uuidgen) DEVICE` "
    "gives it a new one (then its line in /etc/crypttab)",
    "lvm": "an LVM physical volume keeps its UUIDs: `vgimportclone DEVICE` renames a cloned "
    "volume group with both disks attached",
    "bitlocker": "a BitLocker volume keeps its IDs (only Windows can change them)",
}


def _renew_filesystem(device: str, vol: _Volume, kind: str, out: Renewed) -> None:
    if not kind:
        return  # nothing we recognise: nothing to name it by
    if kind in _LEFT:
        out.left.append(f"{vol.name}: {_LEFT[kind]}")
        return
    try:
        with loop_over(device, vol.start, vol.size) as dev:
            steps = _tool(kind, dev)
            if steps is None:
                out.left.append(f"{vol.name}'s {kind} keeps its ID (no tool of ours changes it)")
                return
            old = _uuid(dev)
            for step in steps:
                done = run(step)
                # e2fsck -p exits 1 when it fixed something, which is fine before tune2fs
                if done.returncode not in ((0, 1) if step[0] == "e2fsck" else (0,)):
                    out.left.append(
                        f"{vol.name}'s {kind} keeps its ID {old}: {step[0]} said {said(done)!r}"
                    )
                    return
            new = _uuid(dev)
    except (OSError, FileNotFoundError) as exc:
        out.left.append(f"{vol.name}'s {kind} keeps its ID: {exc}")
        return
    if old and new and old != new:
        out.renamed[old] = new
        out.changed.append(f"{vol.name}'s {kind} ({old} → {new})")
    else:
        out.left.append(f"{vol.name}'s {kind} keeps its ID {old or '(none)'}")


def _uuid(dev: str) -> str:
    return run(["blkid", "-p", "-o", "value", "-s", "UUID", dev]).stdout.strip()


# -- 3. references ---------------------------------------------------------------------------


def _replace(text: str, renamed: dict[str, str]) -> tuple[str, int]:
    """``text`` with every old ID replaced by its new one (as written: upper or lower
    case), and how many were replaced."""
    count = 0
    for old, new in renamed.items():
        for o, n in {(old, new), (old.lower(), new.lower()), (old.upper(), new.upper())}:
            hits = text.count(o)
            if hits:
                text = text.replace(o, n)
                count += hits
    return text, count


def _mentions(data: bytes, renamed: dict[str, str]) -> bool:
    low = data.lower()
    return any(old.lower().encode() in low for old in renamed)


def _rewrite_file(path: Path, renamed: dict[str, str]) -> int:
    """Rewrite one configuration file in place (beside it, synced, renamed over it);
    return the references replaced (0: the file was not touched)."""
    if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_FILE:
        return 0
    data = path.read_bytes()
    if b"\0" in data or not _mentions(data, renamed):
        return 0
    text, count = _replace(data.decode("utf-8", "surrogateescape"), renamed)
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return count


@contextlib.contextmanager
def _mounted(dev: str, kind: str) -> Iterator[Path | str]:
    """The filesystem on ``dev`` mounted read-write in a private temporary folder, or
    the reason it could not be (a string)."""
    options = ["-o", "subvolid=5"] if kind == "btrfs" else []
    with tempfile.TemporaryDirectory(prefix="p2pclone-ids-") as mnt:
        done = run(["mount", "-t", kind, *options, dev, mnt])
        if done.returncode != 0:
            yield said(done)
            return
        try:
            yield Path(mnt)
        finally:
            run(["sync", "-f", mnt])
            run(["umount", mnt])


def _roots(top: Path, kind: str) -> list[Path]:
    """Where a system may live in the filesystem: its top, and (btrfs) each top-level
    subvolume that looks like one (``@``, ``@rootfs``, ``root``…)."""
    roots = [top]
    if kind == "btrfs":
        roots += sorted(
            d
            for d in top.iterdir()
            if d.is_dir()
            and not d.is_symlink()
            and any((d / x).is_dir() for x in ("etc", "boot", "grub"))
        )
    return roots


def _linux_references(device: str, vol: _Volume, kind: str, out: Renewed) -> None:
    try:
        with loop_over(device, vol.start, vol.size) as dev, _mounted(dev, kind) as top:
            if isinstance(top, str):
                out.left.append(
                    f"{vol.name}'s {kind} could not be mounted here ({top}): its /etc/fstab "
                    "and grub.cfg, if any, were not checked for the old IDs"
                )
                return
            for root in _roots(top, kind):
                where = f"{vol.name}'s /{root.relative_to(top)}".rstrip("/.")
                for name in _REFERENCES:
                    for path in sorted(root.glob(name)):
                        if _rewrite_file(path, out.renamed):
                            out.rewritten.append(f"{where}/{path.relative_to(root)}")
                _leftovers(root, where, out)
    except OSError as exc:
        out.left.append(f"{vol.name}'s references were not checked: {exc}")


def _leftovers(root: Path, where: str, out: Renewed) -> None:
    """Say which other files under /etc name an old ID, and the initramfs images that
    may (they are rebuilt by the system, not edited by us)."""
    etc = root / "etc"
    seen = 0
    named = []
    if etc.is_dir():
        for dirpath, dirs, files in os.walk(etc):
            dirs.sort()
            for f in sorted(files):
                seen += 1
                if seen > _MAX_SCAN:
                    break
                path = Path(dirpath, f)
                try:
                    if path.is_symlink() or path.stat().st_size > _MAX_FILE:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if b"\0" not in data and _mentions(data, out.renamed):
                    named.append("/" + str(path.relative_to(root)))
    if named:
        out.left.append(
            f"{where}: {', '.join(named[:8])}{' and more' if len(named) > 8 else ''} "
            "still name an old ID (not rewritten: check them)"
        )
    images = sorted(
        p.name for pat in ("boot/initrd.img-*", "boot/initramfs-*.img") for p in root.glob(pat)
    )
    if images:
        out.left.append(
            f"{where}: the initramfs images in /boot ({', '.join(images[:3])}) may name an "
            "old ID (resume=, root=): run `update-initramfs -u -k all` (or `dracut -f "
            "--regenerate-all`) once the clone runs"
        )


def _fat_references(device: str, vol: _Volume, out: Renewed) -> None:
    """An EFI system partition or /boot/firmware: GRUB's and systemd-boot's files and
    cmdline.txt, edited with mtools (no kernel FAT driver needed)."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = f"{device}@@{vol.start}"
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", image, "::/"], capture_output=True, text=True, env=env
    )
    if listing.returncode != 0:
        return
    names = [line[3:] for line in listing.stdout.splitlines() if line.startswith("::/")]
    wanted = [n for n in names if not n.endswith("/") and _is_reference(n)]
    with tempfile.TemporaryDirectory(prefix="p2pclone-ids-") as tmp:
        for name in wanted:
            local = Path(tmp, "file")
            got = subprocess.run(
                ["mcopy", "-n", "-o", "-i", image, "::/" + name, str(local)],
                capture_output=True, env=env,
            )  # fmt: skip
            if got.returncode != 0 or not _rewrite_file(local, out.renamed):
                continue
            put = subprocess.run(
                ["mcopy", "-o", "-i", image, str(local), "::/" + name],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            if put.returncode == 0:
                out.rewritten.append(f"{vol.name}'s /{name}")
            else:
                out.left.append(f"{vol.name}'s /{name} names an old ID: {said(put)}")
    if any(n.lower() == "efi/microsoft/boot/bcd" for n in names):
        out.left.append(_WINDOWS.format(where=f"{vol.name}'s /EFI/Microsoft/Boot/BCD"))


def _is_reference(name: str) -> bool:
    low = name.lower()
    return (
        low.endswith("/grub.cfg")
        or low == "grub.cfg"
        or (low.startswith("loader/entries/") and low.endswith(".conf"))
        or low in ("cmdline.txt", "extlinux/extlinux.conf", "syslinux.cfg")
    )


_WINDOWS = (
    "Windows' boot configuration ({where}) and its drive letters name the old disk and "
    "partition IDs: that Windows will not start until `bcdboot C:\\Windows` is run from "
    "its recovery console (leave --new-ids out for a disk that replaces its source)"
)


def _windows(device: str, vol: _Volume, out: Renewed) -> None:
    """An NTFS with Windows' boot files (a System Reserved partition, or C:): said."""
    try:
        with loop_over(device, vol.start, vol.size) as dev:
            boot = run(["ntfsls", "-p", "/Boot", dev])
            system = run(["ntfsls", "-p", "/Windows/System32/config", dev])
    except OSError:
        return
    if boot.returncode == 0 and "BCD" in boot.stdout.split():
        out.left.append(_WINDOWS.format(where=f"{vol.name}'s /Boot/BCD"))
    elif system.returncode == 0 and "SYSTEM" in system.stdout.split():
        out.left.append(
            f"{vol.name} holds Windows: its drive letters (the registry's MountedDevices) "
            "name the old disk and partition IDs; Windows assigns new ones at its next start"
        )


__all__ = ["Renewed", "renew_ids"]
