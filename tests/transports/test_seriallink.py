"""The serial link layer over a simulated noisy line: whatever the noise, the bytes
arrive complete and in order, and a dead line is noticed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pclone.transports.seriallink import DEAD_AFTER, MAX_PAYLOAD, MIN_PAYLOAD, Link, LinkDead


def noisy(data: bytes, rng: random.Random, flip: float, drop: float, garbage: float) -> bytes:
    out = bytearray()
    for b in data:
        r = rng.random()
        if r < drop:
            continue
        if r < drop + flip:
            b ^= 1 << rng.randrange(8)
        out.append(b)
        if rng.random() < garbage:
            out += rng.randbytes(rng.randrange(1, 40))
    return bytes(out)


def run(
    payload: bytes,
    *,
    seed: int,
    flip: float = 0.0,
    drop: float = 0.0,
    garbage: float = 0.0,
    back: bytes = b"",
    rate: int = 11520,
) -> tuple[Link, Link, float]:
    """Send ``payload`` a->b (and ``back`` b->a) over a line of ``rate`` bytes/s."""
    rng = random.Random(seed)
    a, b = Link(), Link()
    a.send(payload)
    a.finish()
    b.send(back)
    b.finish()
    now, step = 0.0, 0.01
    lines = {id(a): bytearray(), id(b): bytearray()}  # bytes on their way, per direction
    for _ in range(400_000):
        for src, dst in ((a, b), (b, a)):
            line = lines[id(src)]
            if len(line) < rate * step * 2:  # the driver writes only when the port drains
                line += src.data_to_send(now)
            n = int(rate * step)
            dst.receive_line(noisy(bytes(line[:n]), rng, flip, drop, garbage), now)
            del line[:n]
        a.read()
        b.read()
        if a.idle and b.idle and a.eof and b.eof:
            break
        now += step
    return a, b, now


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 60_000),
    seed=st.integers(0, 2**32),
    flip=st.sampled_from([0.0, 1e-5, 1e-3]),
    drop=st.sampled_from([0.0, 1e-4, 1e-3]),
    garbage=st.sampled_from([0.0, 1e-4]),
)
def test_bytes_arrive_whole_and_in_order(size, seed, flip, drop, garbage) -> None:
    data = random.Random(seed).randbytes(size)
    back = random.Random(seed + 1).randbytes(size // 7)
    rng = random.Random(seed)
    a, b = Link(), Link()
    a.send(data)
    a.finish()
    b.send(back)
    b.finish()
    now, got_b, got_a = 0.0, bytearray(), bytearray()
    for _ in range(100_000):
        for src, dst in ((a, b), (b, a)):
            dst.receive_line(noisy(src.data_to_send(now), rng, flip, drop, garbage), now)
        got_b += b.read()
        got_a += a.read()
        if a.eof and b.eof and a.idle and b.idle:
            break
        now += 0.01
    assert bytes(got_b) == data and bytes(got_a) == back
    assert a.eof and b.eof


def test_clean_line_is_efficient() -> None:
    """Incompressible payload on a clean line: >= 95% of line bytes are payload."""
    data = random.Random(1).randbytes(500_000)
    a, b, _ = run(data, seed=1)
    assert a.stats.retransmits == 0
    assert len(data) / a.stats.wire_sent >= 0.95, a.stats


def test_frames_shrink_on_noise_and_grow_back() -> None:
    a = Link(payload=MAX_PAYLOAD)
    a._lost()
    a._lost()
    assert a.payload == MAX_PAYLOAD // 4
    for _ in range(10):
        a._lost()
    assert a.payload == MIN_PAYLOAD
    data = random.Random(2).randbytes(300_000)
    a2, _, _ = run(data, seed=2)
    assert a2.payload == MAX_PAYLOAD  # a clean line ends at the largest frames


def test_a_silent_line_is_declared_dead() -> None:
    a = Link()
    a.send(b"hello")
    a.data_to_send(0.0)
    with pytest.raises(LinkDead, match="nothing heard"):
        a.data_to_send(DEAD_AFTER + 0.1)


def test_garbage_between_frames_is_skipped() -> None:
    a, b = Link(), Link()
    a.send(b"x" * 5000)
    wire = a.data_to_send(0.0)
    b.receive_line(b"\xff\xfe garbage \x00\x07junk\x00" + wire, 0.0)
    assert b.read() == b"x" * 5000
    assert b.stats.frames_bad >= 1
