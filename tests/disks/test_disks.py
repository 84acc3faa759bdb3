"""Sources and targets on real files and loop devices."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from p2pclone.disks import Source, Target, device_info, list_block_devices
from p2pclone.errors import SourceError, TargetError
from p2pclone.pipeline import is_zero
from tests.conftest import MiB, random_file, read_dev


def test_sparse_source_reports_holes_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(40 * MiB)
        f.write(b"x")
    with Source.open(str(path)) as src:
        assert src.size == 64 * MiB
        assert 0 < src.next_data(0) <= 40 * MiB  # the first 40 MiB are one hole
        assert src.next_data(41 * MiB) == 64 * MiB  # nothing after the data


def test_zero_detection() -> None:
    assert is_zero(bytes(MiB)) and is_zero(bytes(5)) and is_zero(bytes(3 * MiB))
    assert not is_zero(bytes(MiB - 1) + b"\1")
    assert not is_zero(b"\1" + bytes(10))


def test_source_errors_are_sentences(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory"):
        Source.open(str(tmp_path))
    with pytest.raises(SourceError, match="does not exist"):
        Source.open(str(tmp_path / "x"))


def test_file_target_zero_punches_a_hole_over_old_data(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    path.write_bytes(random.Random(1).randbytes(4 * MiB))
    t = Target.open(str(path))
    t.prepare(4 * MiB)
    t.zero(MiB, 2 * MiB)
    t.sync()
    t.close()
    data = path.read_bytes()
    assert data[MiB : 3 * MiB] == bytes(2 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.lseek(fd, MiB, os.SEEK_DATA) >= 3 * MiB  # a real hole, not written zeros
    finally:
        os.close(fd)


def test_file_target_is_opened_at_once_and_left_behind_only_if_prepared(tmp_path: Path) -> None:
    """A new file target is created at open, 0600 (it will hold a whole disk), and
    removed again if the session ends before anything was to be written."""
    t = Target.open(str(tmp_path / "new.img"))
    assert (tmp_path / "new.img").stat().st_mode & 0o777 == 0o600
    t.close()
    assert not (tmp_path / "new.img").exists()
    t = Target.open(str(tmp_path / "new.img"))
    t.prepare(10)
    t.close()
    assert (tmp_path / "new.img").stat().st_size == 10
    with pytest.raises(TargetError, match="does not exist"):
        Target.open(str(tmp_path / "missing" / "t.img"))


def test_block_target_zero_really_zeroes(loop_device) -> None:
    junk = random.Random(2).randbytes(8 * MiB)
    dev = loop_device(8 * MiB, junk)
    t = Target.open(dev)
    assert t.is_block and t.size == 8 * MiB
    t.zero(MiB, 3 * MiB)
    t.zero(5 * MiB + 512, 1000)  # unaligned: falls back to writing zeros
    t.sync()
    t.close()
    got = read_dev(dev, 8 * MiB)
    assert got[MiB : 4 * MiB] == bytes(3 * MiB)
    assert got[5 * MiB + 512 : 5 * MiB + 1512] == bytes(1000)
    assert got[:MiB] == junk[:MiB] and got[4 * MiB : 5 * MiB] == junk[4 * MiB : 5 * MiB]


def test_block_target_is_held_exclusively(loop_device) -> None:
    dev = loop_device(4 * MiB, None)
    t = Target.open(dev)
    try:
        with pytest.raises(OSError):  # nobody else can claim it meanwhile
            os.close(os.open(dev, os.O_RDWR | os.O_EXCL))
    finally:
        t.close()


def test_loop_device_appears_in_the_listing(loop_device, tmp_path: Path) -> None:
    dev = loop_device(4 * MiB, None)
    info = device_info(dev)
    assert info.size == 4 * MiB and info.kind == "loop" and not info.in_use
    assert info.model.endswith(".img")  # a loop device shows its backing file
    assert dev in [d.path for d in list_block_devices()]


def test_mounted_device_is_reported_in_use(loop_device, tmp_path: Path) -> None:
    dev = loop_device(32 * MiB, None)
    if subprocess.run(["mkfs.ext4", "-q", dev], capture_output=True).returncode:
        pytest.skip("mkfs.ext4 is not available")
    mnt = tmp_path / "m"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", dev, str(mnt)], check=True)
    try:
        info = device_info(dev)
        assert info.in_use and str(mnt) in info.mountpoints
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_swap_device_is_refused(loop_device) -> None:
    from p2pclone.errors import SafetyError

    dev = loop_device(16 * MiB, None)
    if subprocess.run(["mkswap", dev], capture_output=True).returncode:
        pytest.skip("mkswap is not available")
    if subprocess.run(["swapon", dev], capture_output=True).returncode:
        pytest.skip("swapon is not permitted here")
    try:
        with pytest.raises(SafetyError, match="used as swap"):
            Target.open(dev)
    finally:
        subprocess.run(["swapoff", dev], check=False)


def test_device_held_by_device_mapper_is_refused(loop_device) -> None:
    import shutil

    from p2pclone.errors import SafetyError

    if shutil.which("dmsetup") is None:
        pytest.skip("dmsetup (device-mapper) is not installed")
    dev = loop_device(8 * MiB, None)
    name = f"p2pclone-test-{os.getpid()}"
    made = subprocess.run(
        ["dmsetup", "create", name, "--table", f"0 {8 * MiB // 512} linear {dev} 0"],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"device-mapper is not usable here: {made.stderr.strip()}")
    try:
        with pytest.raises(SafetyError, match="held by dm-"):
            Target.open(dev)
    finally:
        subprocess.run(["dmsetup", "remove", name], check=False)


def test_a_media_error_is_not_read_again_by_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails at one sector inside a chunk: ``Source.read`` raises
    UnreadableError for the read's range at once, without reading into the failing
    area again (each read there can take seconds and make a dying disk worse); the
    narrowing is ``rescue()``'s, once per sector (tests/disks/test_rescue.py,
    test_failing_source.py).  Negative control: the old narrowing re-read the chunk
    in 64 KiB, 4 KiB and 512-byte pieces: 3 failed reads here instead of 1."""
    import errno

    from p2pclone.errors import UnreadableError

    path = tmp_path / "failing.img"
    random_file(path, 3 * MiB)
    bad = MiB + 300 * 1024 + 1536  # a 512-byte sector inside chunk 1
    real_pread = os.pread
    failed = []

    def failing_pread(fd: int, n: int, off: int) -> bytes:
        if off <= bad < off + n:
            failed.append(off)
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, n, off)

    with Source.open(str(path)) as src:
        monkeypatch.setattr(os, "pread", failing_pread)
        with pytest.raises(UnreadableError, match="failed between bytes 1048576 and") as err:
            src.read(MiB, MiB)
    assert (err.value.offset, err.value.length) == (MiB, MiB)
    assert failed == [MiB]
