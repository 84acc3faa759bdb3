"""Shared fixtures: disk images with a known layout, loop devices, helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MiB = 1 << 20


def write_layout(path: Path, size: int, seed: int = 1) -> bytes:
    """Write a source with every kind of chunk; return its bytes.

    Layout (1 MiB chunks): compressible text, random (incompressible) data, an
    explicit zero chunk, a hole of several chunks (sparse), data sharing a chunk
    with zeros, and a short last chunk when ``size`` is not a multiple of 1 MiB.
    """
    import random

    rng = random.Random(seed)
    buf = bytearray(size)
    text = b"the quick brown fox jumps over the lazy dog %d\n"
    pos = 0
    while pos < min(size, MiB + 12345):
        line = text % rng.randint(0, 10**6)
        buf[pos : pos + len(line)] = line
        pos += len(line)
    if size > 3 * MiB:
        buf[2 * MiB : 3 * MiB] = rng.randbytes(MiB)  # incompressible
    if size > 9 * MiB:
        buf[8 * MiB + 4096 : 8 * MiB + 8192] = b"\xab" * 4096  # mostly-zero chunk
    if size > 2 * MiB:
        tail = size - (size % MiB or MiB)
        buf[tail:size] = rng.randbytes(size - tail)  # last (maybe short) chunk
    data = bytes(buf)
    with open(path, "wb") as f:
        f.truncate(size)
        # All-zero chunks stay holes (sparse); everything else is written.
        for off in range(0, size, MiB):
            piece = data[off : off + MiB]
            if piece.count(0) != len(piece):
                f.seek(off)
                f.write(piece)
    return data


@pytest.fixture
def layout_source(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "source.img"
    return path, write_layout(path, 12 * MiB + 5000)


def random_file(path: Path, size: int, seed: int = 99) -> bytes:
    import random

    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def can_loop() -> str | None:
    """Why loop devices can't be used here, or None if they can."""
    if os.geteuid() != 0:
        return "loop devices need root"
    if shutil.which("losetup") is None:
        return "losetup (util-linux) is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "this kernel or container has no /dev/loop-control"
    return None


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int, bytes | None], str]]:
    """Factory: attach a backing file of ``size`` bytes (optional content) as /dev/loopN."""
    reason = can_loop()
    if reason:
        pytest.skip(reason)
    attached: list[str] = []

    def make(size: int, content: bytes | None = None) -> str:
        backing = tmp_path / f"loop{len(attached)}.img"
        with open(backing, "wb") as f:
            if content is not None:
                f.write(content)
            f.truncate(size)
        dev = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        attached.append(dev)
        return dev

    yield make
    for dev in attached:
        subprocess.run(["umount", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def read_dev(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own resume-journal directory (never /var/lib/p2pclone)."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("P2PCLONE_STATE_DIR", str(path))
    return path


# One Samba server for the whole session, whichever folder's tests use it (a conftest
# per folder would start one each).
from tests.samba import samba, smb_env  # noqa: E402, F401 - fixtures
