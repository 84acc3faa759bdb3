"""Images on a share: save, restore, image as a source, info/verify/export, damage, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pclone.errors import (
    AuthenticationError,
    ExitCode,
    IntegrityError,
    P2PCloneError,
    TransportError,
)
from p2pclone.image import format as fmt
from p2pclone.image import tools
from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions
from tests.conftest import MiB, random_file, write_layout
from tests.samba import Samba

CODE = "correct horse battery staple"
CLI = [sys.executable, "-m", "p2pclone"]


async def save(source: Path, url: str, code: str = CODE, **kw: Any) -> object:
    options = SendOptions(passphrase=code, chunk_size=256 * 1024, **kw)
    return await send(str(source), url, options)


async def restore(target: Path, url: str, code: str = CODE, **kw: Any) -> object:
    return await receive(str(target), url, ReceiveOptions(passphrase=code, **kw))


def layout(tmp_path: Path, size: int = 5 * MiB + 12345) -> tuple[Path, bytes]:
    source = tmp_path / "disk.img"
    return source, write_layout(source, size)


def records(path: Path) -> list[tuple[int, fmt.RecordHead]]:
    """(offset, header) of every record of an image file, walking from its header."""
    data = path.read_bytes()
    pos = fmt.header_length(data, "x")
    out = []
    while True:
        head = fmt.decode_record_head(data[pos:])
        if head is None:
            return out
        out.append((pos, head))
        pos += head.total


async def test_save_to_a_file_url_and_restore(tmp_path: Path) -> None:
    source, data = layout(tmp_path)
    url = f"file://{tmp_path}/nas/pc1/disk.p2pc"  # folders that do not exist yet
    saved = await save(source, url)
    image = tmp_path / "nas/pc1/disk.p2pc"
    assert image.stat().st_size < 0.6 * len(data)  # zeros are not stored, the rest compressed
    assert data[1 * MiB : 1 * MiB + 4096] not in image.read_bytes()  # encrypted

    facts = tools.info(url)  # no passphrase needed
    assert facts["source_bytes"] == len(data) and facts["encrypted"] and facts["complete"]
    assert facts["chunks"] == -(-len(data) // (256 * 1024))

    target = tmp_path / "restored.img"
    restored = await restore(target, url)
    assert target.read_bytes() == data
    assert restored.digest == saved.digest


async def test_save_and_restore_over_smb(tmp_path: Path, smb_env: Samba) -> None:
    source, data = layout(tmp_path)
    url = smb_env.url("lab/2026/pc1.p2pc")
    saved = await save(source, url)
    assert (smb_env.root / "lab/2026/pc1.p2pc").is_file()
    target = tmp_path / "restored.img"
    restored = await restore(target, url, verify=True)
    assert target.read_bytes() == data
    assert restored.digest == saved.digest and restored.verified


async def test_an_image_is_the_source_of_a_live_clone(tmp_path: Path) -> None:
    source, data = layout(tmp_path)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    target = tmp_path / "live.img"
    async with trio.open_nursery() as nursery:

        async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
            await receive(
                str(target),
                "memory://img-live",
                ReceiveOptions(code="7-pair"),
                task_status=task_status,
            )

        await nursery.start(rx)
        await send(url, "memory://img-live", SendOptions(code="7-pair", passphrase=CODE))
    assert target.read_bytes() == data


async def test_wrong_passphrase_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    source, _ = layout(tmp_path, 2 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    target = tmp_path / "t.img"
    target.write_bytes(b"keep me" * 1000)
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        await restore(target, url, code="wrong horse")
    assert target.read_bytes() == b"keep me" * 1000
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        await tools.verify(url, "wrong horse")
    # ...and a save to it with another passphrase does not touch it either.
    before = (tmp_path / "pc1.p2pc").read_bytes()
    with pytest.raises(AuthenticationError):
        await save(source, url, code="wrong horse")
    assert (tmp_path / "pc1.p2pc").read_bytes() == before


def flip_a_byte_of_chunk(image: Path, index: int) -> None:
    """Damage one byte inside the record of chunk ``index``."""
    pos, head = next((p, h) for p, h in records(image) if h.type == fmt.CHUNK and h.index == index)
    raw = bytearray(image.read_bytes())
    raw[pos + head.total - 100] ^= 0x10
    image.write_bytes(bytes(raw))


async def test_a_flipped_byte_is_found_and_named(tmp_path: Path) -> None:
    source, data = layout(tmp_path)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    image = tmp_path / "pc1.p2pc"
    flip_a_byte_of_chunk(image, 3)
    span = f"{3 * 256 * 1024}-{4 * 256 * 1024 - 1}"
    with pytest.raises(IntegrityError, match=span):
        await tools.verify(url, CODE)
    target = tmp_path / "t.img"
    with pytest.raises(IntegrityError, match=span):
        await restore(target, url)
    # Everything intact was written; the damaged chunk's range was not.
    got = target.read_bytes()
    lo, hi = 3 * 256 * 1024, 4 * 256 * 1024
    assert got[:lo] == data[:lo] and got[hi:] == data[hi:]
    assert got[lo:hi] != data[lo:hi]


async def test_a_truncated_image_is_found_and_named(tmp_path: Path) -> None:
    source, data = layout(tmp_path)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    image = tmp_path / "pc1.p2pc"
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 2)
    with pytest.raises(IntegrityError, match="bytes"):
        await tools.verify(url, CODE)
    assert not tools.info(url)["complete"]


async def test_an_interrupted_save_resumes_after_the_last_intact_record(tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    data = random_file(source, 4 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    image = tmp_path / "pc1.p2pc"
    recs = records(image)
    # As if the save had died while writing record 9: a torn tail, no index.
    pos, head = recs[9]
    with open(image, "r+b") as f:
        f.truncate(pos + head.total // 2)
    again = await save(source, url)
    assert again.same_chunks == 9  # the intact records were not sent again
    target = tmp_path / "t.img"
    await restore(target, url)
    assert target.read_bytes() == data
    assert tools.info(url)["complete"]


async def test_resume_resends_chunks_of_a_source_that_changed(tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    random_file(source, 2 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    with open(source, "r+b") as f:
        f.seek(300 * 1024)
        f.write(b"changed!" * 100)
    await save(source, url)  # complete image, changed source: the change is appended
    target = tmp_path / "t.img"
    await restore(target, url)
    assert target.read_bytes() == source.read_bytes()


async def test_a_save_never_mixes_two_sources(tmp_path: Path) -> None:
    a, _ = layout(tmp_path, 2 * MiB)
    b = tmp_path / "other.img"
    data_b = random_file(b, 3 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(a, url)
    before = (tmp_path / "pc1.p2pc").read_bytes()
    with pytest.raises(P2PCloneError, match="another source") as refused:
        await save(b, url)
    assert refused.value.exit_code == ExitCode.SAFETY
    assert (tmp_path / "pc1.p2pc").read_bytes() == before
    await save(b, url, fresh=True)
    target = tmp_path / "t.img"
    await restore(target, url)
    assert target.read_bytes() == data_b


async def test_missing_image_and_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="no image at"):
        await restore(tmp_path / "t.img", f"file://{tmp_path}/nope.p2pc")
    assert not (tmp_path / "t.img").exists() or (tmp_path / "t.img").stat().st_size == 0


async def test_smb_wrong_password_is_an_authentication_error(
    tmp_path: Path, samba: Samba, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PCLONE_SMB_PASSWORD", "not-the-password")
    source, _ = layout(tmp_path, MiB)
    with pytest.raises(AuthenticationError, match="P2PCLONE_SMB_PASSWORD"):
        await save(source, samba.url("x.p2pc"))


# -- the command line ---------------------------------------------------------------


def run(*args: str, stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args], stdout=stdout, stderr=subprocess.PIPE, timeout=120, stdin=subprocess.DEVNULL
    )


def test_cli_save_info_verify_export_restore(tmp_path: Path, smb_env: Samba) -> None:
    source, data = layout(tmp_path)
    url = smb_env.url("cli/pc1.p2pc")
    saved = run("send", str(source), url, "--passphrase", CODE, "--json")
    assert saved.returncode == 0, saved.stderr

    info = run("image", "info", url, "--json")
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["source_bytes"] == len(data) and facts["encrypted"] and facts["ratio"] < 0.6

    ok = run("image", "verify", url, "--passphrase", CODE)
    assert ok.returncode == 0, ok.stderr

    with open(tmp_path / "raw.img", "wb") as out:
        exported = run("image", "export", url, "--passphrase", CODE, stdout=out)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "raw.img").read_bytes() == data

    target = tmp_path / "t.img"
    restored = run("receive", str(target), url, "--passphrase", CODE, "--json", "--yes")
    assert restored.returncode == 0, restored.stderr
    assert target.read_bytes() == data
    assert CODE.encode() not in restored.stdout  # the passphrase is never shown


def test_cli_damaged_image_exits_6_and_wrong_passphrase_exits_3(tmp_path: Path) -> None:
    source, _ = layout(tmp_path, 2 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    assert run("send", str(source), url, "--passphrase", CODE).returncode == 0
    wrong = run("image", "verify", url, "--passphrase", "nope")
    assert wrong.returncode == 3 and b"wrong passphrase" in wrong.stderr
    image = tmp_path / "pc1.p2pc"
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size - 5000)
    bad = run("image", "verify", url, "--passphrase", CODE)
    assert bad.returncode == 6, bad.stderr
    assert b"bytes" in bad.stderr
    restored = run("receive", str(tmp_path / "t.img"), url, "--passphrase", CODE, "--yes")
    assert restored.returncode == 6, restored.stderr


def test_cli_save_killed_midway_resumes(tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    data = random_file(source, 48 * MiB)
    image = tmp_path / "pc1.p2pc"
    url = f"file://{image}"
    proc = subprocess.Popen(
        [*CLI, "send", str(source), url, "--passphrase", CODE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (image.exists() and image.stat().st_size > 16 * MiB):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = run("send", str(source), url, "--passphrase", CODE, "--json")
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert done["same_chunks"] > 0  # what was saved before the kill was kept
    with open(tmp_path / "raw.img", "wb") as out:
        assert run("image", "export", url, "--passphrase", CODE, stdout=out).returncode == 0
    assert (tmp_path / "raw.img").read_bytes() == data


def test_cli_password_in_the_url_is_used_and_never_shown(tmp_path: Path, samba: Samba) -> None:
    source, data = layout(tmp_path, MiB)
    url = samba.url("pw/pc1.p2pc").replace(f"{samba.user}@", f"{samba.user}:{samba.password}@")
    saved = run("send", str(source), url, "--passphrase", CODE, "--json")
    assert saved.returncode == 0, saved.stderr
    info = run("image", "info", url, "--json")
    assert info.returncode == 0, info.stderr
    missing = run("image", "info", url.replace("pc1", "nothing"))
    assert missing.returncode == 5 and b"no image at" in missing.stderr
    for out in (saved, info, missing):
        assert samba.password.encode() not in out.stdout + out.stderr


async def test_copying_a_damaged_image_is_never_a_success(tmp_path: Path) -> None:
    source, data = layout(tmp_path)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    image = tmp_path / "pc1.p2pc"
    flip_a_byte_of_chunk(image, 3)
    copy = f"file://{tmp_path}/copy.p2pc"
    with pytest.raises(P2PCloneError, match="could not provide") as failed:
        await send(url, copy, SendOptions(passphrase=CODE))
    assert failed.value.exit_code == ExitCode.INTEGRITY
    span = f"{3 * 256 * 1024}-{4 * 256 * 1024 - 1}"
    with pytest.raises(IntegrityError, match=span):  # the copy says what it lacks
        await tools.verify(copy, CODE)


def _smbd_children(samba: Samba) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(samba.pid)], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


def _cut_when(samba: Samba, grown: Path, proc: subprocess.Popen[bytes], before: set[int]) -> None:
    """Once ``grown`` holds 8 MiB, kill the smbd process serving ``proc``'s connection:
    the server goes away mid-transfer, as a NAS that reboots or loses power."""
    deadline = time.monotonic() + 60
    while not (grown.exists() and grown.stat().st_blocks * 512 > 8 * MiB):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    for pid in _smbd_children(samba) - before:
        os.kill(pid, signal.SIGKILL)


def test_cli_the_smb_server_going_away_ends_save_and_restore_with_exit_5_and_they_resume(
    tmp_path: Path, smb_env: Samba, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PCLONE_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "disk.img"
    data = random_file(source, 96 * MiB)
    url = smb_env.url("gone/pc1.p2pc")
    before = _smbd_children(smb_env)
    proc = subprocess.Popen(
        [*CLI, "send", str(source), url, "--passphrase", CODE],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _cut_when(smb_env, smb_env.root / "gone" / "pc1.p2pc", proc, before)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err.decode()
    assert b"the SMB server ended the connection" in err and b"Traceback" not in err
    again = run("send", str(source), url, "--passphrase", CODE, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["same_chunks"] > 0  # it resumed

    target = tmp_path / "target.img"
    before = _smbd_children(smb_env)
    proc = subprocess.Popen(
        [*CLI, "receive", str(target), url, "--passphrase", CODE, "--yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _cut_when(smb_env, target, proc, before)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err.decode()
    assert b"the SMB server ended the connection" in err and b"Traceback" not in err
    again = run("receive", str(target), url, "--passphrase", CODE, "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["same_chunks"] > 0  # it resumed
    assert target.read_bytes() == data


def test_the_smb_connection_notices_a_silent_server(tmp_path: Path, smb_env: Samba) -> None:
    """A NAS that loses power sends no reset: the connection's socket carries the TCP
    links' keepalive and user timeout, so a save or restore ends within about a minute
    (exit 5, as above) instead of waiting on smbprotocol's 20-minute echo."""
    import socket

    from p2pclone.image.urls import open_store

    store = open_store(smb_env.url("silent/pc1.p2pc"), create=True)
    try:
        socks = [conn.transport._sock for conn in store._cache.values()]  # type: ignore[attr-defined]
        assert socks
        for sock in socks:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
    finally:
        store.close()


def test_info_says_when_it_was_saved_and_its_root_and_verify_names_the_partition(
    tmp_path: Path,
) -> None:
    """Issue 24 §7: `image info` shows when the last save ended (in the footer, readable
    without the passphrase) and, given the passphrase, the root hash the save ended
    with; `image verify` of an image damaged inside partition 2 names that partition.
    Negative control (tried): with the footer's save time left 0, "saved" was None."""
    from tests.volumes.builders import make_disk

    disk = tmp_path / "disk.img"
    parts = make_disk(disk, 24 * MiB, [("ext4", 12 * MiB), ("raw", 8 * MiB)])
    url = f"file://{tmp_path}/two.p2pc"
    before = time.time()
    saved = run("send", str(disk), url, "--passphrase", CODE, "--json")
    assert saved.returncode == 0, saved.stderr
    digest = json.loads(saved.stdout.splitlines()[-1])["digest"]

    bare = json.loads(run("image", "info", url, "--json").stdout)
    assert bare["root"] is None  # in the encrypted index
    when = bare["saved"]
    assert when and int(before) - 1 <= datetime_seconds(when) <= time.time() + 1
    opened = json.loads(run("image", "info", url, "--json", "--passphrase", CODE).stdout)
    assert opened["root"] == digest
    text = run("image", "info", url, "--passphrase", CODE).stdout.decode()
    assert f"Root:       {digest}" in text and f"Saved:      {when}" in text

    from p2pclone.image.reader import ImageSource

    source = ImageSource.open(url, CODE)
    chunk = (parts[1][0] + 2 * MiB) // source.chunk_size  # well inside partition 2
    at = source.index.offsets[chunk]
    source.close()
    with open(tmp_path / "two.p2pc", "r+b") as f:  # its record, garbled
        f.seek(at + 200)
        f.write(os.urandom(4096))
    bad = run("image", "verify", url, "--passphrase", CODE)
    assert bad.returncode == 6, bad.stderr
    assert b"in partition 2" in bad.stderr, bad.stderr


def datetime_seconds(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso).timestamp()
