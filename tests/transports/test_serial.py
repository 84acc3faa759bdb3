"""serial:// over real pty pairs: a relay between two ptys plays the cable, clean or noisy."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import Done, Progress
from p2pclone.transports import Dial
from tests.conftest import MiB, random_file, write_layout


@asynccontextmanager
async def cable(
    *,
    noise: float = 0.0,
    garbage: float = 0.0,
    rate: int = 0,
    seed: int = 1,
    pulled: trio.Event | None = None,
) -> AsyncIterator[tuple[str, str]]:
    """Two pty pairs joined master to master by a relay; yields the two slave paths.

    ``noise``: probability per byte of a flipped bit or a dropped byte; ``garbage``:
    probability per chunk of an inserted burst of random bytes; ``rate``: bytes/s
    (0 = as fast as the ptys go); once ``pulled`` is set the line carries nothing
    (the ports stay open, as when a cable is pulled out of the adapter).
    """
    rng = random.Random(seed)
    pairs = [os.openpty() for _ in range(2)]
    for master, _slave in pairs:
        tty.setraw(master)
        os.set_blocking(master, False)

    async def pump(src: int, dst: int) -> None:
        while True:
            await trio.lowlevel.wait_readable(src)
            try:
                data = bytearray(os.read(src, 4096))
            except BlockingIOError:
                continue
            except OSError:
                await trio.sleep(0.01)
                continue
            if pulled is not None and pulled.is_set():
                continue
            if noise:
                for i in range(len(data)):
                    if rng.random() < noise:
                        data[i] ^= 1 << rng.randrange(8)
                if rng.random() < noise * len(data):
                    del data[rng.randrange(len(data))]
            if garbage and rng.random() < garbage:
                data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randrange(1, 64))
            view = memoryview(bytes(data))
            while view:
                await trio.lowlevel.wait_writable(dst)
                try:
                    n = os.write(dst, view)
                except BlockingIOError:
                    continue
                view = view[n:]
            if rate:
                await trio.sleep(len(data) / rate)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, pairs[0][0], pairs[1][0])
        nursery.start_soon(pump, pairs[1][0], pairs[0][0])
        try:
            yield os.ttyname(pairs[0][1]), os.ttyname(pairs[1][1])
        finally:
            nursery.cancel_scope.cancel()
    for master, slave in pairs:
        os.close(master)
        os.close(slave)


async def clone_over(
    a: str, b: str, source: Path, target: Path, progress: list[Progress] | None = None
) -> tuple[Done, Done]:
    """Receive on ``b``, send from ``a``; ``progress``: the sender's progress reports."""
    out: dict[str, Done] = {}

    def report(what: object) -> None:
        if progress is not None and isinstance(what, Progress):
            progress.append(what)

    async with trio.open_nursery() as nursery:

        async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
            out["rx"] = await receive(
                str(target),
                f"serial://{b}?baud=921600",
                ReceiveOptions(code="6-s-t"),
                task_status=task_status,
            )

        await nursery.start(rx)
        out["tx"] = await send(
            str(source),
            f"serial://{a}?baud=921600",
            SendOptions(code="6-s-t", chunk_size=65536),
            report=report,
        )
    return out["tx"], out["rx"]


@pytest.mark.parametrize(("noise", "garbage"), [(0.0, 0.0), (1e-5, 0.0), (2e-4, 0.01)])
async def test_clone_over_a_pty_cable(tmp_path: Path, noise: float, garbage: float) -> None:
    source = tmp_path / "s.img"
    data = write_layout(source, 3 * MiB + 1234)
    target = tmp_path / "t.img"
    with trio.fail_after(120):
        async with cable(noise=noise, garbage=garbage) as (a, b):
            tx, rx = await clone_over(a, b, source, target)
    assert target.read_bytes() == data
    assert tx.digest == rx.digest


async def test_serial_stream_passes_trios_two_way_stream_checks(monkeypatch) -> None:
    import p2pclone.transports.seriallink
    from p2pclone.transports.serial import SerialTransport

    # The checks close one end and wait for the other to notice: a shorter dead-peer
    # timeout keeps that wait short (the mechanism is the same).
    monkeypatch.setattr(p2pclone.transports.seriallink, "DEAD_AFTER", 2.0)

    async with trio.open_nursery() as cables:

        async def pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
            a, b = await cables.start(run_cable)
            return (
                await SerialTransport(f"serial://{a}").connect(Dial()),
                await SerialTransport(f"serial://{b}").connect(Dial()),
            )

        with trio.fail_after(120):
            await trio.testing.check_two_way_stream(pair, None)
        cables.cancel_scope.cancel()


async def run_cable(task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with cable() as paths:
        task_status.started(paths)
        await trio.sleep_forever()


CLI = [sys.executable, "-m", "p2pclone"]


async def json_events(proc: trio.Process) -> AsyncIterator[dict]:
    """The JSON lines a CLI process prints, as they come."""
    assert proc.stdout is not None
    buf = b""
    async for data in proc.stdout:
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield json.loads(line)


async def cli_clone(
    source: Path,
    target: Path,
    *,
    pull_at: float | None = None,
    noise: float = 0.0,
    rate: int = 100_000,
) -> tuple[int, int, list[dict], list[dict]]:
    """Receiver and sender as two CLI processes on the two ends of a pty cable; the
    cable is pulled once the receiver reports ``pull_at`` of the disk done.  Each
    event gets ``"at"``: when it was read (trio's clock)."""
    pulled = trio.Event()
    events: dict[str, list[dict]] = {"rx": [], "tx": []}
    async with cable(rate=rate, noise=noise, pulled=pulled) as (a, b), trio.open_nursery() as n:
        rx = await trio.lowlevel.open_process(
            [*CLI, "receive", str(target), f"serial://{b}", "--code", "5-cli", "--yes", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        tx = await trio.lowlevel.open_process(
            [*CLI, "send", str(source), f"serial://{a}", "--code", "5-cli", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

        async def watch(name: str, proc: trio.Process) -> None:
            async for event in json_events(proc):
                event["at"] = trio.current_time()
                events[name].append(event)
                if (
                    name == "rx"
                    and pull_at is not None
                    and event["event"] == "progress"
                    and event["done_bytes"] >= pull_at * event["total_bytes"]
                ):
                    pulled.set()

        n.start_soon(watch, "rx", rx)
        n.start_soon(watch, "tx", tx)
        codes = (await tx.wait(), await rx.wait())
    return codes[0], codes[1], events["tx"], events["rx"]


async def test_cli_over_serial_survives_a_pulled_cable_and_resumes(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    data = random_file(source, MiB)
    target = tmp_path / "t.img"
    with trio.fail_after(90):
        tx_code, rx_code, _, rx_events = await cli_clone(source, target, pull_at=0.3, noise=1e-5)
    # Nothing more is heard: both sides give up with exit 5 (transport) and say so.
    assert (tx_code, rx_code) == (5, 5)
    assert rx_events[-1]["event"] == "error"
    assert "nothing heard from the other end" in rx_events[-1]["message"]
    assert target.read_bytes() != data

    # Plug in again: the same commands resume where the journal says, and finish.
    with trio.fail_after(90):
        tx_code, rx_code, tx_events, _ = await cli_clone(source, target)
    assert (tx_code, rx_code) == (0, 0)
    assert target.read_bytes() == data
    done = tx_events[-1]
    assert done["event"] == "done"
    assert done["wire_bytes"] < 0.8 * len(data)  # the chunks already there were not resent


async def test_progress_on_a_slow_cable_follows_what_the_far_end_has(tmp_path: Path) -> None:
    """Issue 24 §5 at 115200 baud (11.5 KB/s here): 192 KiB of random data, one chunk
    taking some 17 s to cross.  The sender's bar reaches the
    end only once the receiver has the data (before: "done" at once, counted when
    queued, for the whole crossing); the receiver's bar moves while the chunk arrives
    (before: 0 until done); both count the bytes to copy (used, not the disk).
    Negative controls tried: the sender counting what it handed to the link (its full
    bar came 7 s before the receiver's), the receiver counting whole chunks (no step).
    That the total is the used bytes: test_a_real_disk_over_a_pty_cable_sends_only_used_blocks."""
    source = tmp_path / "s.img"
    source.write_bytes(os.urandom(192 * 1024))
    target = tmp_path / "t.img"
    with trio.fail_after(90):
        tx_code, rx_code, tx, rx = await cli_clone(source, target, rate=11_520)
    assert (tx_code, rx_code) == (0, 0)
    tx_p = [e for e in tx if e["event"] == "progress"]
    rx_p = [e for e in rx if e["event"] == "progress"]
    total = tx_p[-1]["total_bytes"]
    assert rx_p[-1]["total_bytes"] == total == 192 * 1024
    tx_full = min(e["at"] for e in tx_p if e["done_bytes"] >= total)
    rx_full = min(e["at"] for e in rx_p if e["done_bytes"] >= total)
    assert tx_full >= rx_full - 2.0, (tx_full, rx_full)
    # Each bar moved along the way: at least five distinct values between 0 and the end.
    for events in (tx_p, rx_p):
        assert len({e["done_bytes"] for e in events if 0 < e["done_bytes"] < total}) >= 5
    assert target.read_bytes() == source.read_bytes()


async def test_a_real_disk_over_a_pty_cable_sends_only_used_blocks(tmp_path: Path) -> None:
    """Issue 14 on the slowest link: an ext4 disk whose free space holds old random
    data crosses the cable by its used blocks only; used bytes identical, free bytes of
    the target untouched."""
    from p2pclone.volumes import scan
    from tests.volumes.builders import make_ext

    source, target = tmp_path / "s.img", tmp_path / "t.img"
    make_ext(source, 24 * MiB)
    target.write_bytes(b"\x5a" * (24 * MiB))
    progress: list[Progress] = []
    with trio.fail_after(120):
        async with cable() as (a, b):
            tx, rx = await clone_over(a, b, source, target, progress)
    with open(source, "rb") as f:
        free = scan(lambda o, n: os.pread(f.fileno(), n, o), 24 * MiB).free
    assert rx.free_bytes == tx.free_bytes == free.total > 4 * MiB
    # The progress counts the bytes to copy: the used ones (issue 24 §5).
    assert progress[-1].done_bytes == progress[-1].total_bytes == 24 * MiB - free.total
    assert tx.wire_bytes < (24 * MiB - free.total) * 1.1
    src, dst = source.read_bytes(), target.read_bytes()
    assert all(dst[a:b] == src[a:b] for a, b in free.invert(0, 24 * MiB))
    assert all(dst[a:b] == b"\x5a" * (b - a) for a, b in free)


async def test_a_failing_disk_over_a_pty_cable(tmp_path: Path) -> None:
    """Issue 15 on the serial cable: a source with two unreadable areas (a FUSE file
    failing reads there): both sides finish and name the same ranges, which are zeros
    on the target; every other byte arrived."""
    from tests.disks.test_failing_source import need_fuse
    from tests.failing_disk import failing_disk

    need_fuse()
    image, target = tmp_path / "s.img", tmp_path / "t.img"
    data = write_layout(image, 2 * MiB)
    bad = [(100 * 1024, 512), (MiB + 4096, 4096)]
    with failing_disk(image, [(s, n, -1) for s, n in bad]) as (disk, _log):
        with trio.fail_after(120):
            async with cable() as (a, b):
                tx, rx = await clone_over(a, b, disk, target)
    assert tx.unreadable == rx.unreadable == [list(r) for r in bad]
    got = target.read_bytes()
    assert got[:102400] == data[:102400] and got[MiB + 8192 :] == data[MiB + 8192 :]
    assert got[102400:102912] == bytes(512)
