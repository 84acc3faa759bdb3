"""serial:// over real pty pairs: a relay between two ptys plays the cable, clean or noisy."""

from __future__ import annotations

import os
import random
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pclone.receiver import receive
from p2pclone.sender import send
from p2pclone.session import Done
from tests.conftest import MiB, write_layout


@asynccontextmanager
async def cable(
    *, noise: float = 0.0, garbage: float = 0.0, rate: int = 0, seed: int = 1
) -> AsyncIterator[tuple[str, str]]:
    """Two pty pairs joined master to master by a relay; yields the two slave paths.

    ``noise``: probability per byte of a flipped bit or a dropped byte; ``garbage``:
    probability per chunk of an inserted burst of random bytes; ``rate``: bytes/s
    (0 = as fast as the ptys go).
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


async def clone_over(a: str, b: str, source: Path, target: Path) -> tuple[Done, Done]:
    out: dict[str, Done] = {}
    async with trio.open_nursery() as nursery:

        async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
            out["rx"] = await receive(
                str(target), f"serial://{b}?baud=921600", code="6-s-t", task_status=task_status
            )

        await nursery.start(rx)
        out["tx"] = await send(
            str(source), f"serial://{a}?baud=921600", code="6-s-t", chunk_size=65536
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
    import transports.seriallink
    from transports.serial import SerialTransport

    # The checks close one end and wait for the other to notice: a shorter dead-peer
    # timeout keeps that wait short (the mechanism is the same).
    monkeypatch.setattr(transports.seriallink, "DEAD_AFTER", 2.0)

    async with trio.open_nursery() as cables:

        async def pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
            a, b = await cables.start(run_cable)
            return (
                await SerialTransport(f"serial://{a}").connect(),
                await SerialTransport(f"serial://{b}").connect(),
            )

        with trio.fail_after(120):
            await trio.testing.check_two_way_stream(pair, None)
        cables.cancel_scope.cancel()


async def run_cable(task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with cable() as paths:
        task_status.started(paths)
        await trio.sleep_forever()
