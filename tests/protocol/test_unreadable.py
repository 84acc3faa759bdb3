"""CHUNK ``u``: the unreadable ranges of a chunk travel with it, and nothing a peer
sends can name bytes outside the chunk or out of order."""

from __future__ import annotations

import blake3
import pytest

from p2pclone.errors import LocalProtocolError, RemoteProtocolError
from p2pclone.protocol import Accept, Chunk, Encoding, Plan, Role
from p2pclone.protocol.messages import Chunk as ChunkMessage

from .test_connection import MiB, Pair


def ready() -> tuple[Pair, Plan]:
    pair = Pair()
    pair.handshake()
    plan = Plan(source_size=4 * MiB, chunk_size=MiB)
    pair.send(Role.SENDER, plan)
    pair.send(Role.RECEIVER, Accept())
    return pair, plan


def chunk(index: int, unreadable: tuple[tuple[int, int], ...]) -> Chunk:
    data = bytes(MiB)
    return Chunk(
        index=index, length=MiB, digest=blake3.blake3(data).digest(), encoding=Encoding.RAW,
        body=data, unreadable=unreadable,
    )  # fmt: skip


def test_unreadable_ranges_arrive_with_their_chunk() -> None:
    pair, _plan = ready()
    ranges = ((4096, 8192), (MiB - 512, MiB))
    [got] = pair.send(Role.SENDER, chunk(0, ranges))
    assert got.unreadable == ranges


def test_ranges_outside_the_chunk_are_refused_on_both_ends() -> None:
    pair, _plan = ready()
    with pytest.raises(LocalProtocolError, match="outside itself"):
        pair.send(Role.SENDER, chunk(0, ((MiB, MiB + 512),)))
    pair, _plan = ready()
    with pytest.raises(RemoteProtocolError, match="outside itself"):
        pair.conns[Role.RECEIVER].receive_data(pair.forge(Role.SENDER, chunk(0, ((MiB, 2 * MiB),))))
        pair.conns[Role.RECEIVER].next_event()


def test_unsorted_or_overlapping_ranges_are_refused() -> None:
    meta = chunk(0, ()).to_meta() | {"u": [[4096, 8192], [0, 512]]}
    with pytest.raises(RemoteProtocolError, match="not sorted"):
        ChunkMessage.from_frame(meta, bytes(MiB))
    meta["u"] = [[0, "x"]]
    with pytest.raises(RemoteProtocolError, match="malformed"):
        ChunkMessage.from_frame(meta, bytes(MiB))
