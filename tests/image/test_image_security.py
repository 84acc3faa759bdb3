"""Issue 12: what someone who can write to the share can do to an image, and cannot.

An unencrypted (plain) image, a header asking for absurd KDF costs, a forged footer or
index, and a file cut back to before a re-save's last records: each is refused with one
sentence and its exit code, before the target is touched, unless the user opts in by
name on the image URL (``?plain=1``, ``?salvage=1``).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import blake3
import msgpack
import pytest
import trio

from p2pclone.errors import (
    AuthenticationError,
    ExitCode,
    IntegrityError,
    P2PCloneError,
    UsageError,
)
from p2pclone.image import format as fmt
from p2pclone.image import tools
from p2pclone.jobs import send
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import pick_error
from tests.conftest import MiB, random_file
from tests.image.test_image import CODE, records, restore, run, save

CHUNK = 256 * 1024


def plain_image(path: Path, data: bytes) -> None:
    """Write ``data`` as an unencrypted image, as anyone can without a passphrase: its
    header check, record digests and index checksum are plain BLAKE3."""
    header = fmt.Header(
        source_size=len(data),
        chunk_size=CHUNK,
        source={"name": "/dev/sda", "model": "planted", "serial": "X", "kind": "disk"},
        encryption=None,
        generator="not p2pclone",
    )
    codec = fmt.Codec(header, None)
    out = bytearray(fmt.encode_header(header, None))
    offsets, hashes = [], b""
    for i in range(header.chunk_count):
        chunk = data[i * CHUNK : (i + 1) * CHUNK]
        digest = blake3.blake3(chunk).digest()
        offsets.append(len(out))
        out += b"".join(codec.chunk(i, len(chunk), digest, fmt.RAW, chunk))
        hashes += digest
    at = len(out)
    index = codec.index(offsets, hashes, blake3.blake3(hashes).digest())
    out += index + fmt.encode_footer(at, len(index))
    path.write_bytes(bytes(out))


def rewrite_header(path: Path, change: dict[str, Any]) -> None:
    """Alter the header map of an image (its check is left as it was: nobody without
    the passphrase can compute the new one)."""
    raw = path.read_bytes()
    end = fmt.header_length(raw, "x")
    m = msgpack.unpackb(raw[fmt.PREAMBLE_SIZE : end - fmt.CHECK_SIZE], raw=False)
    for key, value in change.items():
        m["encryption"][key] = value
    body = msgpack.packb(m, use_bin_type=True)
    preamble = struct.pack("<8sHHI", fmt.MAGIC, fmt.FORMAT_VERSION, 0, len(body))
    path.write_bytes(preamble + body + raw[end - fmt.CHECK_SIZE :])


async def test_a_planted_plain_image_is_refused_even_with_a_passphrase(tmp_path: Path) -> None:
    """Catches the downgrade: someone with write access to the share replaces an image
    with an unencrypted one holding any disk they like; restore and ``image verify``
    used to accept it although the user gave a passphrase (exit 0, planted disk
    written).  Now exit 3 with one sentence, target untouched; ``?plain=1`` opts in."""
    source = tmp_path / "disk.img"
    random_file(source, 2 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    planted = random_file(tmp_path / "evil.img", 2 * MiB)
    plain_image(tmp_path / "pc1.p2pc", planted)

    target = tmp_path / "t.img"
    target.write_bytes(b"keep me" * 1000)
    with pytest.raises(AuthenticationError, match=r"not encrypted.*\?plain=1") as refused:
        await restore(target, url)
    assert refused.value.exit_code == ExitCode.AUTH
    assert target.read_bytes() == b"keep me" * 1000
    with pytest.raises(AuthenticationError, match="not encrypted"):
        await tools.verify(url, CODE)
    assert "?plain=1" in tools.describe(tools.info(url))[5]  # image info says so too

    cli = run("receive", str(target), url, "--passphrase", CODE, "--yes")
    assert cli.returncode == 3, cli.stderr
    assert b"?plain=1" in cli.stderr and b"Traceback" not in cli.stderr
    assert target.read_bytes() == b"keep me" * 1000

    # Asked for by name, it is read (the user vouches for it).
    await tools.verify(url + "?plain=1", "")
    await restore(target, url + "?plain=1")
    assert target.read_bytes() == planted


async def test_image_url_options_are_checked(tmp_path: Path) -> None:
    """Catches a typo'd or misplaced opt-in silently doing nothing: an unknown option
    is a usage error, and a save refuses the reading options."""
    source = tmp_path / "disk.img"
    random_file(source, MiB)
    with pytest.raises(UsageError, match="unknown image URL option"):
        await restore(tmp_path / "t.img", f"file://{tmp_path}/pc1.p2pc?plian=1")
    with pytest.raises(UsageError, match="for reading an image"):
        await save(source, f"file://{tmp_path}/pc1.p2pc?plain=1")
    assert not (tmp_path / "pc1.p2pc").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"memory_kib": 64 << 20},  # 64 GiB
        {"iterations": 1_000_000},
        {"lanes": 1 << 20},
        {"lanes": "4"},
        {"salt": 7},
    ],
)
async def test_kdf_costs_in_the_header_are_bounded_before_argon2_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    """Catches a header altered to make Argon2id allocate gigabytes or run for hours:
    its costs are used before the header can be authenticated (the MAC key is what
    they give), so they used to reach Argon2id as written (or crash it with a
    traceback).  Now refused, exit 3, before the KDF runs; the real Argon2id is never
    called with anything out of bounds (a spy fails the test if it is)."""
    source = tmp_path / "disk.img"
    random_file(source, MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    rewrite_header(tmp_path / "pc1.p2pc", change)

    real = fmt.Argon2id

    def spy(**kw: Any) -> Any:
        assert kw["memory_cost"] <= 1 << 20 and kw["iterations"] <= 10 and kw["lanes"] <= 16, (
            f"Argon2id ran with the altered header's costs {kw}"
        )
        return real(**kw)

    monkeypatch.setattr(fmt, "Argon2id", spy)
    target = tmp_path / "t.img"
    target.write_bytes(b"keep me")
    with pytest.raises(AuthenticationError, match="key-derivation costs") as refused:
        await restore(target, url)
    assert refused.value.exit_code == ExitCode.AUTH
    assert target.read_bytes() == b"keep me"


def test_index_decompression_is_bounded_by_the_chunk_count() -> None:
    """Catches a zlib bomb in an index (an unsealed image's index has only a BLAKE3
    anyone can compute): it used to be inflated whole (256 MiB here) before its size
    was looked at.  Now inflation stops at what the chunk count allows."""
    header = fmt.Header(source_size=8 * CHUNK, chunk_size=CHUNK, source={})
    packer = zlib.compressobj(9)
    bomb = b"".join(packer.compress(bytes(MiB)) for _ in range(256)) + packer.flush()
    body = blake3.blake3(bomb).digest() + bomb
    head = fmt.RecordHead(fmt.INDEX, fmt.RAW, 0, 0, 8, 0, len(body), b"")
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            fmt.Codec(header, None).open_index(head, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"inflating the index took {peak} bytes"


@pytest.mark.parametrize(
    "ranges,ok",
    [
        ([(4096, 512), (2 * CHUNK, 1024)], True),
        ([(2 * CHUNK, 1024), (4096, 512)], False),  # out of order
        ([(4096, 512), (4096 + 256, 512)], False),  # overlapping
        ([(8 * CHUNK - 512, 1024)], False),  # past the source's end
        ([(k * 1024, 512) for k in range(9)], False),  # more than one per chunk
    ],
)
def test_the_index_lists_unreadable_ranges_only_when_they_fit(
    ranges: list[tuple[int, int]], ok: bool
) -> None:
    """An image of a failing disk lists the source's unreadable ranges in its index: a
    list that is out of order, overlapping, past the source or longer than the chunk
    count makes the index count as damaged (a restore would trust it to say what is
    missing)."""
    header = fmt.Header(source_size=8 * CHUNK, chunk_size=CHUNK, source={})
    codec = fmt.Codec(header, None)
    record = codec.index([0] * 8, bytes(32 * 8), bytes(32), ranges)
    head = fmt.decode_record_head(record)
    assert head is not None
    if ok:
        assert codec.open_index(head, record[fmt.RECORD_HEADER_SIZE :])[3] == ranges
    else:
        with pytest.raises(IntegrityError):
            codec.open_index(head, record[fmt.RECORD_HEADER_SIZE :])


def test_fit_ranges_joins_the_closest_neighbours() -> None:
    from p2pclone.image.recorder import fit_ranges

    got = fit_ranges([[0, 10], [100, 10], [115, 5], [300, 1]], 3)
    assert got == [(0, 10), (100, 20), (300, 1)]  # never claims less than was given


async def test_a_forged_footer_cannot_size_a_read(tmp_path: Path) -> None:
    """Catches a footer (only CRC-protected) claiming a 1 PiB index: the reader used to
    read that many bytes (MemoryError and a traceback).  Now the index counts as
    missing: exit 6 naming it, target untouched."""
    source = tmp_path / "disk.img"
    random_file(source, MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    image = tmp_path / "pc1.p2pc"
    raw = image.read_bytes()
    at, _ = fmt.decode_footer(raw[-fmt.FOOTER_SIZE :]) or (0, 0)
    image.write_bytes(raw[: -fmt.FOOTER_SIZE] + fmt.encode_footer(at, 1 << 50))
    target = tmp_path / "t.img"
    target.write_bytes(b"keep me")
    with pytest.raises(IntegrityError, match="no intact index"):
        await restore(target, url)
    assert target.read_bytes() == b"keep me"


async def test_a_rolled_back_image_is_not_restored_unless_salvaged(tmp_path: Path) -> None:
    """Catches a rollback: a re-saved image cut back to before the re-save's records
    (so its older record of a chunk is the last one left) used to be restored from a
    record scan, writing the *old* chunk and exiting 0 (``image export`` too).  Now a
    restore needs the intact index and root: exit 6 naming what is missing, target
    untouched.  With ``?salvage=1`` it writes what the records hold and still ends
    with exit 6, saying it salvaged (never a success)."""
    source = tmp_path / "disk.img"
    old = random_file(source, 2 * MiB)
    url = f"file://{tmp_path}/pc1.p2pc"
    await save(source, url)
    with open(source, "r+b") as f:
        f.seek(3 * CHUNK + 100)
        f.write(b"new version" * 100)
    await save(source, url)  # appends chunk 3's new record and a new index
    image = tmp_path / "pc1.p2pc"
    *_, (pos, last) = [(p, h) for p, h in records(image) if h.type == fmt.CHUNK]
    assert last.index == 3
    with open(image, "r+b") as f:
        f.truncate(pos)  # as if the re-save had never happened

    target = tmp_path / "t.img"
    target.write_bytes(b"keep me" * 1000)
    with pytest.raises(IntegrityError, match=r"no intact index.*\?salvage=1") as refused:
        await restore(target, url)
    assert refused.value.exit_code == ExitCode.INTEGRITY
    assert target.read_bytes() == b"keep me" * 1000
    with open(tmp_path / "raw.img", "wb") as out, pytest.raises(IntegrityError, match="no intact"):
        await tools.export(url, CODE, out)
    with pytest.raises(IntegrityError, match="no intact index"):  # nor a live clone from it
        await send(url, "memory://img-rolled-back", SendOptions(code="7-pair", passphrase=CODE))
    cli = run("receive", str(target), url, "--passphrase", CODE, "--yes")
    assert cli.returncode == 6, cli.stderr
    assert b"no intact index" in cli.stderr and b"Traceback" not in cli.stderr
    assert target.read_bytes() == b"keep me" * 1000

    with pytest.raises(IntegrityError, match="salvaged from") as salvaged:
        await restore(target, url + "?salvage=1")
    assert salvaged.value.code == "salvaged"
    assert target.read_bytes() == old  # what the records hold: the older save
    cli = run("receive", str(target), url + "?salvage=1", "--passphrase", CODE, "--yes", "--json")
    assert cli.returncode == 6, cli.stderr
    assert b'"code": "salvaged"' in cli.stdout


async def test_a_live_clone_from_a_salvaged_image_is_not_done_on_either_side(
    tmp_path: Path,
) -> None:
    """``send IMAGE?salvage=1 tcp://…``: the sender ends in exit 6 "salvaged", and so
    must the receiver on the other machine, whose operator would otherwise see Done.
    Negative control: the receiver returned Done while only the sender exited 6 (this
    test failed)."""
    from p2pclone.jobs import receive

    source = tmp_path / "disk.img"
    random_file(source, 2 * MiB)
    url = f"file://{tmp_path}/pc2.p2pc"
    await save(source, url)
    image = tmp_path / "pc2.p2pc"
    *_, (pos, _last) = [(p, h) for p, h in records(image) if h.type == fmt.CHUNK]
    with open(image, "r+b") as f:
        f.truncate(pos)  # no index any more: only salvage reads it
    out: dict[str, BaseException | object] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def rx(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    out["rx"] = await receive(
                        str(tmp_path / "t.img"),
                        "tcp://127.0.0.1:0",
                        ReceiveOptions(code="7-pair"),
                        task_status=task_status,
                    )
                except BaseException as exc:  # noqa: BLE001
                    out["rx"] = pick_error(exc)

            link = await nursery.start(rx)
            try:
                out["tx"] = await send(
                    url + "?salvage=1", link, SendOptions(code="7-pair", passphrase=CODE)
                )
            except BaseException as exc:  # noqa: BLE001
                out["tx"] = pick_error(exc)
    for side in ("tx", "rx"):
        err = out[side]
        assert isinstance(err, P2PCloneError) and err.exit_code == ExitCode.INTEGRITY, out
        assert "salvaged from" in str(err)
