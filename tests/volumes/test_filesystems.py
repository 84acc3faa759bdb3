"""Used-block maps never call a used block free, checked against tools that are not ours.

Each filesystem is built and filled through its real driver or tool (builders.py) over
dirty free space; the oracle (partclone's domain map, dumpe2fs, mtools) says which
bytes are used.  Every test asserts two things: nothing the oracle calls used is in our
free map (a lost block would be a corrupt clone), and our map is not lazily "all used"
(the used total is within a few blocks of the oracle's, so the speed-up is real).

Negative controls (each tried once): ignoring the flex_bg metadata (other groups'
bitmaps and inode tables) that BLOCK_UNINIT groups hold trips ext.py's own check
("group 3's free count disagrees with its layout": copied whole, the test fails on
``whole``); with that check removed too, the partclone oracle reports the inode tables
as "blocks in use were mapped free".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from p2pclone.volumes import map_volume, ntfs
from p2pclone.volumes.extents import Extents

from .builders import (
    MiB,
    btrfs_used,
    dumpe2fs_used,
    make_btrfs,
    make_exfat,
    make_ext,
    make_fat,
    make_ntfs,
    make_xfs,
    mounted_xfs_shut_down,
    mtools_used,
    need,
    partclone_used,
    run,
    wrongly_free,
)


def reader(path: Path):
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    return (lambda off, n: os.pread(fd, n, off)), size


EXT_CASES = {
    "ext4 default (flex_bg, uninit groups, 4 KiB)": ("ext4", 160 * MiB, ()),
    "ext4 without flex_bg": ("ext4", 96 * MiB, ("-O", "^flex_bg")),
    "ext4 meta_bg": ("ext4", 96 * MiB, ("-O", "meta_bg,^resize_inode")),
    "ext4 64-bit, 1 KiB blocks": ("ext4", 96 * MiB, ("-O", "64bit", "-b", "1024")),
    "ext4 sparse_super2": ("ext4", 96 * MiB, ("-O", "sparse_super2")),
    "ext4 no group checksums": ("ext4", 96 * MiB, ("-O", "^metadata_csum,^uninit_bg")),
    "ext3": ("ext3", 96 * MiB, ("-t", "ext3")),
    "ext2": ("ext2", 96 * MiB, ("-t", "ext2")),
}


@pytest.mark.parametrize("case", list(EXT_CASES))
def test_ext_free_blocks_are_free_for_partclone_too(tmp_path: Path, case: str) -> None:
    kind, size, opts = EXT_CASES[case]
    image = tmp_path / "fs.img"
    make_ext(image, size, *opts)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "", got.whole
    assert got.fs == kind
    oracle = partclone_used(kind, image)
    assert not wrongly_free(got.free, oracle), "blocks in use were mapped free"
    used = length - got.free.total
    assert used <= oracle.total + 64 * 1024, (used, oracle.total)


def test_ext_near_full_with_many_small_files(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    make_ext(image, 64 * MiB, "-b", "4096", full=True)
    read, length = reader(image)
    got = map_volume(read, length)
    oracle = partclone_used("ext4", image)
    assert got.whole == "" and not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 64 * 1024
    assert got.free.total < length // 8  # it is nearly full


def test_ext4_bigalloc_matches_e2fsprogs(tmp_path: Path) -> None:
    """partclone cannot map bigalloc at all; e2fsprogs' own free list is the oracle."""
    image = tmp_path / "fs.img"
    make_ext(image, 128 * MiB, "-O", "bigalloc", "-C", "16384")
    read, length = reader(image)
    got = map_volume(read, length)
    oracle = dumpe2fs_used(image)
    assert got.whole == "" and not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 16384


def test_ext_with_a_journal_to_recover_is_copied_whole(tmp_path: Path) -> None:
    need("debugfs")
    image = tmp_path / "fs.img"
    make_ext(image, 32 * MiB)
    run("debugfs", "-w", "-R", "feature needs_recovery", image)
    got = map_volume(*reader(image))
    assert "journal that needs recovery" in got.whole and not got.free


def test_ext_unknown_incompat_flag_and_bad_counts_copy_whole(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    make_ext(image, 32 * MiB)
    raw = bytearray(image.read_bytes())
    raw[1024 + 0x60 + 3] |= 0x40  # incompat bit 30: no such feature
    unknown = tmp_path / "unknown.img"
    unknown.write_bytes(raw)
    got = map_volume(*reader(unknown))
    assert "unknown feature flags" in got.whole and not got.free
    # A group whose free count disagrees with its bitmap: the volume is copied whole.
    bs = 1024 << int.from_bytes(raw[1024 + 0x18 : 1024 + 0x1C], "little")
    raw = bytearray(image.read_bytes())
    desc_at = (1 if bs > 1024 else 2) * bs
    raw[desc_at + 0x0C] ^= 0x01  # group 0's free count, off by one
    bad = tmp_path / "bad.img"
    bad.write_bytes(raw)
    got = map_volume(*reader(bad))
    assert "disagrees" in got.whole and not got.free


@pytest.mark.parametrize("bits,size", [(16, 64 * MiB), (32, 300 * MiB)])
def test_fat_free_clusters_are_free_for_partclone_too(tmp_path: Path, bits: int, size: int) -> None:
    image = tmp_path / "fat.img"
    make_fat(image, size, bits)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "" and got.fs == f"fat{bits}"
    oracle = partclone_used("fat", image)
    assert not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 64 * 1024


def test_fat12_free_clusters_hold_no_file(tmp_path: Path) -> None:
    """FAT12: partclone 0.3.23 maps it wrongly (both ways), so the oracle is mtools'
    list of every file's clusters."""
    image = tmp_path / "fat.img"
    make_fat(image, 8 * MiB, 12)
    read, length = reader(image)
    got = map_volume(read, length)
    oracle = mtools_used(image)
    assert got.whole == "" and got.fs == "fat12"
    assert not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 64 * 1024


def test_fat_marked_dirty_is_copied_whole(tmp_path: Path) -> None:
    image = tmp_path / "fat.img"
    make_fat(image, 64 * MiB, 16)
    raw = bytearray(image.read_bytes())
    reserved = int.from_bytes(raw[14:16], "little")
    fat_sectors = int.from_bytes(raw[22:24], "little")
    for copy in range(raw[16]):
        at = (reserved + copy * fat_sectors) * 512 + 3  # entry 1, high byte
        raw[at] &= 0x7F  # clear the "cleanly unmounted" bit
    image.write_bytes(raw)
    got = map_volume(*reader(image))
    assert "not cleanly unmounted" in got.whole and not got.free


def test_fat32_whose_fsinfo_count_disagrees_is_copied_whole(tmp_path: Path) -> None:
    """FSInfo's free-cluster count, as mtools left it, is the count the FAT gives (so the
    check runs on real volumes); one off, fsck.vfat reports it too and the volume is
    copied whole.  Negative control (tried): without the check the volume is mapped."""
    need("fsck.vfat")
    image = tmp_path / "fat.img"
    make_fat(image, 300 * MiB, 32)
    raw = bytearray(image.read_bytes())
    at = int.from_bytes(raw[48:50], "little") * 512 + 488
    count = int.from_bytes(raw[at : at + 4], "little")
    got = map_volume(*reader(image))
    cluster = raw[13] * 512
    assert got.whole == "" and count * cluster == pytest.approx(got.free.total, abs=cluster)
    raw[at : at + 4] = (count - 1).to_bytes(4, "little")
    image.write_bytes(raw)
    check = subprocess.run(["fsck.vfat", "-n", str(image)], capture_output=True, text=True)
    assert "free cluster summary wrong" in (check.stdout + check.stderr).lower()
    got = map_volume(*reader(image))
    assert "FSInfo says" in got.whole and not got.free


def test_swap_keeps_only_its_header(tmp_path: Path) -> None:
    need("mkswap")
    image = tmp_path / "swap.img"
    image.write_bytes(os.urandom(8 * MiB))
    run("mkswap", image)
    got = map_volume(*reader(image))
    assert got.fs == "swap" and got.free == Extents(((4096, 8 * MiB),))
    # A hibernation image in the swap area is not swap: copied whole.
    raw = bytearray(image.read_bytes())
    raw[4086:4096] = b"S1SUSPEND\0"
    image.write_bytes(raw)
    assert map_volume(*reader(image)).whole
    assert map_volume(*reader(image)).whole


def test_ntfs_free_clusters_are_free_for_partclone_too(tmp_path: Path) -> None:
    image = tmp_path / "ntfs.img"
    make_ntfs(image, 160 * MiB)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "" and got.fs == "ntfs"
    oracle = partclone_used("ntfs", image)
    assert not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 64 * 1024


def _volume_flags_offsets(image: Path) -> list[int]:
    """Where $Volume's flags lie (record 3's $VOLUME_INFORMATION value + 10), in the
    MFT and in its mirror."""
    read, _ = reader(image)
    boot = ntfs._Boot(read(0, 512))
    mirror = int.from_bytes(read(56, 8), "little")
    record = ntfs._record(read, boot, 3)
    for kind, _nonres, attr in ntfs._attributes(record):
        if kind == 0x70:
            at = record.index(attr) + int.from_bytes(attr[20:22], "little") + 10
            return [lcn * boot.cluster + 3 * boot.record + at for lcn in (boot.mft_lcn, mirror)]
    raise AssertionError("no volume information")


def test_ntfs_marked_dirty_is_copied_whole(tmp_path: Path) -> None:
    """The dirty bit is set where ntfs-3g's own ntfsfix then reports it (an oracle
    that the flag we set is the one Windows and ntfs-3g read)."""
    need("ntfsfix")
    image = tmp_path / "ntfs.img"
    make_ntfs(image, 64 * MiB)
    with open(image, "r+b") as f:
        for at in _volume_flags_offsets(image):
            f.seek(at)
            f.write(b"\x01")
    fix = subprocess.run(["ntfsfix", "-n", str(image)], capture_output=True, text=True)
    assert "dirty" in (fix.stdout + fix.stderr).lower()
    got = map_volume(*reader(image))
    assert "marked dirty" in got.whole and not got.free


def restart_page(in_use: int, flags: int) -> bytes:
    """A $LogFile restart page laid out as ntfs-3g's layout.h describes it (RSTR header,
    update sequence over 4 KiB, restart area at 0x30) -- ntfs-3g itself always leaves
    the log emptied, so a live one must be built."""
    page = bytearray(4096)
    page[0:4] = b"RSTR"
    page[4:8] = (0x1E).to_bytes(2, "little") + (9).to_bytes(2, "little")
    page[16:20] = (4096).to_bytes(4, "little")
    page[20:24] = (4096).to_bytes(4, "little")
    page[24:26] = (0x30).to_bytes(2, "little")
    page[0x30 + 12 : 0x30 + 16] = in_use.to_bytes(2, "little") + flags.to_bytes(2, "little")
    usn = b"\x01\x00"
    page[0x1E:0x20] = usn
    for k in range(1, 9):  # move each sector's last two bytes into the array
        page[0x1E + 2 * k : 0x20 + 2 * k] = page[k * 512 - 2 : k * 512]
        page[k * 512 - 2 : k * 512] = usn
    return bytes(page)


@pytest.mark.parametrize("in_use,flags,clean", [(0, 0, False), (0xFFFF, 0, True), (0, 2, True)])
def test_ntfs_with_an_unclean_log_is_copied_whole(
    tmp_path: Path, in_use: int, flags: int, clean: bool
) -> None:
    """A log with a client in use and no "clean" flag (Windows crashed or hibernated)
    means changes not yet in the bitmap: copied whole."""
    image = tmp_path / "ntfs.img"
    make_ntfs(image, 64 * MiB)
    read, _ = reader(image)
    boot = ntfs._Boot(read(0, 512))
    runs, _ = ntfs._data_runs(ntfs._record(read, boot, 2), boot, "$LogFile")
    with open(image, "r+b") as f:
        f.seek(runs[0][0] * boot.cluster)
        f.write(restart_page(in_use, flags))
    got = map_volume(*reader(image))
    if clean:
        assert got.whole == "" and got.free
    else:
        assert "$LogFile" in got.whole and not got.free


def test_ntfs_bitmap_calling_the_mft_free_is_copied_whole(tmp_path: Path) -> None:
    """$Bitmap's bit for the MFT's first cluster cleared: a bitmap that disagrees with
    the volume's own metadata is not trusted."""
    image = tmp_path / "ntfs.img"
    make_ntfs(image, 64 * MiB)
    read, _ = reader(image)
    boot = ntfs._Boot(read(0, 512))
    runs, _ = ntfs._data_runs(ntfs._record(read, boot, 6), boot, "$Bitmap")
    at = runs[0][0] * boot.cluster + boot.mft_lcn // 8
    with open(image, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte & ~(1 << boot.mft_lcn % 8)]))
    got = map_volume(*reader(image))
    assert "calls its own metadata free" in got.whole and not got.free


def test_exfat_free_clusters_are_free_for_partclone_too(tmp_path: Path) -> None:
    image = tmp_path / "exfat.img"
    make_exfat(image, 96 * MiB)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "" and got.fs == "exfat"
    assert map_volume(read, length).fs == "exfat"  # found by its signature too
    oracle = partclone_used("exfat", image)
    assert not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 64 * 1024
    assert got.free.total > 20 * MiB


def test_exfat_marked_dirty_is_copied_whole(tmp_path: Path) -> None:
    image = tmp_path / "exfat.img"
    make_exfat(image, 32 * MiB)
    with open(image, "r+b") as f:  # VolumeFlags (not covered by the boot checksum)
        f.seek(106)
        flags = int.from_bytes(f.read(2), "little")
        f.seek(106)
        f.write((flags | 0x0002).to_bytes(2, "little"))
    got = map_volume(*reader(image))
    assert "not cleanly unmounted" in got.whole and not got.free


def test_exfat_whose_percent_in_use_disagrees_is_copied_whole(tmp_path: Path) -> None:
    """PercentInUse (outside the boot checksum, like the flags) 40 points off the
    bitmap's count: doubtful, copied whole."""
    image = tmp_path / "exfat.img"
    make_exfat(image, 32 * MiB)
    with open(image, "r+b") as f:
        f.seek(112)
        percent = f.read(1)[0]
        assert percent <= 100  # the field is kept: the check runs on real volumes
        f.seek(112)
        f.write(bytes([(percent + 40) % 100]))
    got = map_volume(*reader(image))
    assert "where the boot sector says" in got.whole and not got.free


@pytest.mark.parametrize(
    "opts,size,fill",
    [((), 320, True), (("-d", "agcount=8"), 640, True), (("-m", "crc=0"), 320, False)],
    ids=["v5", "8 AGs", "v4 (this kernel mounts no v4: left empty)"],
)
def test_xfs_free_extents_are_free_for_partclone_too(
    tmp_path: Path, opts: tuple, size: int, fill: bool
) -> None:
    """The bnobt's free extents, checked against partclone.xfs.  Ours keep the free
    list's (AGFL) blocks: a few KiB per allocation group more than partclone counts."""
    image = tmp_path / "xfs.img"
    make_xfs(image, size * MiB, *opts, fill=fill)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "" and got.fs == "xfs"
    oracle = partclone_used("xfs", image)
    assert not wrongly_free(got.free, oracle)
    assert length - got.free.total <= oracle.total + 256 * 1024
    assert got.free.total > 100 * MiB


def test_xfs_with_a_dirty_log_is_copied_whole(tmp_path: Path) -> None:
    """A filesystem shut down with changes still in its log (``xfs_io -x -c shutdown``,
    what a crash or power cut leaves); xfs_repair -n agrees the log needs replaying.
    Negative control (tried): skipping the log check maps it (``whole`` is empty)."""
    need("xfs_io", "xfs_repair")
    image = tmp_path / "xfs.img"
    make_xfs(image, 320 * MiB)
    with mounted_xfs_shut_down(image) as root:
        (root / "late").write_bytes(os.urandom(MiB))
    check = subprocess.run(["xfs_repair", "-n", str(image)], capture_output=True, text=True)
    assert "log" in (check.stdout + check.stderr).lower() and check.returncode != 0
    got = map_volume(*reader(image))
    assert "log with changes" in got.whole and not got.free


@pytest.mark.parametrize("opts", [(), ("-O", "^skinny-metadata", "-n", "4096")])
def test_btrfs_free_space_is_free_for_btrfs_progs_too(tmp_path: Path, opts: tuple) -> None:
    """An extent-level map: every extent and tree block btrfs-progs lists (mapped to
    both DUP copies) is used; the unused parts of chunks are free.  Also without skinny
    metadata (tree blocks as EXTENT_ITEMs).  Negative control (tried): mapping only a
    DUP chunk's first stripe leaves the second copies of the tree blocks "free"."""
    image = tmp_path / "btrfs.img"
    make_btrfs(image, 400 * MiB, mkfs=opts)
    read, length = reader(image)
    got = map_volume(read, length)
    assert got.whole == "" and got.fs == "btrfs"
    assert map_volume(read, length).fs == "btrfs"
    oracle = btrfs_used(image)
    assert not wrongly_free(got.free, oracle), "blocks in use were mapped free"
    # the first MiB, the superblocks and older generations' tree blocks are kept too
    assert length - got.free.total <= oracle.total + 4 * MiB, (
        length - got.free.total,
        oracle.total,
    )


def test_btrfs_extents_that_disagree_with_the_superblock_are_copied_whole(
    tmp_path: Path,
) -> None:
    """bytes_used one block more than the extent tree holds: doubtful, copied whole."""
    image = tmp_path / "btrfs.img"
    make_btrfs(image, 400 * MiB)
    with open(image, "r+b") as f:
        f.seek(0x10000 + 0x78)
        used = int.from_bytes(f.read(8), "little")
        f.seek(0x10000 + 0x78)
        f.write((used + 4096).to_bytes(8, "little"))
    got = map_volume(*reader(image))
    assert "extent tree that adds up to" in got.whole and not got.free


def test_btrfs_with_a_log_tree_to_replay_is_copied_whole(tmp_path: Path) -> None:
    """The superblock's log_root set (an fsync'd write not yet replayed after a crash):
    the extent and chunk trees may not be the whole truth."""
    image = tmp_path / "btrfs.img"
    make_btrfs(image, 400 * MiB)
    with open(image, "r+b") as f:
        f.seek(0x10000 + 0x60)
        f.write((0x1D00000).to_bytes(8, "little"))
    got = map_volume(*reader(image))
    assert "log tree" in got.whole and not got.free
