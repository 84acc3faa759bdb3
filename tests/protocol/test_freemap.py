"""The used map in the PLAN body: what the receiver will never write must be exactly
what the sender meant, and nothing a peer sends can widen it past the source."""

from __future__ import annotations

import random

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pclone.errors import RemoteProtocolError
from p2pclone.protocol import Plan, Role
from p2pclone.protocol.freemap import MAX_PLAN_BODY, decode_free, encode_free, fit_free
from p2pclone.volumes.extents import Extents

from .test_connection import MiB, Pair

SIZE = 64 * MiB


@st.composite
def free_maps(draw) -> Extents:
    cuts = sorted(set(draw(st.lists(st.integers(0, SIZE // 512), max_size=40))))
    return Extents.of((a * 512, b * 512) for a, b in zip(cuts[::2], cuts[1::2], strict=False))


@settings(max_examples=200)
@given(free_maps())
def test_any_map_survives_the_wire(free: Extents) -> None:
    assert decode_free(encode_free(free), SIZE, len(free)) == free


def test_a_plan_carries_its_map_through_a_sealed_session() -> None:
    pair = Pair()
    pair.handshake()
    free = Extents(((4096, 3 * MiB), (5 * MiB, 9 * MiB + 512)))
    plan = Plan(source_size=SIZE, chunk_size=MiB, free=free)
    [got] = pair.send(Role.SENDER, plan)
    assert got.free == free and got == plan


def body(flat: list[int]) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(msgpack.packb(flat))


@pytest.mark.parametrize(
    "flat,count,why",
    [
        ([0, 8, 0, 8], 2, "empty or touching"),  # touching ranges
        ([0, 0], 1, "empty or touching"),  # an empty range
        ([0, SIZE // 512 + 1], 1, "beyond the source"),
        ([0, 8], 2, "not a list of range sizes"),  # count disagrees
        ([0, -8], 1, "not a list of range sizes"),
        ([0, "8"], 1, "not a list of range sizes"),
    ],
)
def test_a_malformed_map_is_refused(flat: list, count: int, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode_free(body(flat), SIZE, count)


def test_a_map_declaring_a_huge_size_is_refused_before_decompressing() -> None:
    """A zstd frame can declare gigabytes of output in a few bytes: the declared size is
    checked first (zstandard would allocate it)."""
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(MAX_PLAN_BODY + 1))
    with pytest.raises(RemoteProtocolError, match="oversized"):
        decode_free(bomb, SIZE, 1)
    with pytest.raises(RemoteProtocolError, match="carries none"):
        decode_free(b"", SIZE, 3)


def test_the_byte_count_must_agree_with_the_map() -> None:
    pair = Pair()
    pair.handshake()
    plan = Plan(source_size=SIZE, chunk_size=MiB, free=Extents(((0, MiB),)))
    meta = {**plan.to_meta(), "freeb": MiB + 512}
    with pytest.raises(RemoteProtocolError, match="free byte count"):
        Plan.from_frame(meta, plan.body)


def test_a_map_too_big_for_an_image_header_keeps_its_largest_ranges() -> None:
    rng = random.Random(5)
    free = Extents.of((k * 4096, k * 4096 + 512 * rng.randint(1, 7)) for k in range(20000))
    fitted = fit_free(free, 4096)
    assert 0 < len(fitted) < len(free) and len(encode_free(fitted)) <= 4096
    assert all(free.clip(a, b).total == b - a for a, b in fitted)  # a subset, never more
