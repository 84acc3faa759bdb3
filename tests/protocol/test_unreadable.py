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


def root_of(digests: list[bytes]) -> bytes:
    return blake3.blake3(b"".join(digests)).digest()


def test_chunks_left_for_later_come_after_the_first_pass_and_the_root_is_in_order() -> None:
    """LATER covers chunks 1..2 on the first pass; they come as CHUNKs after chunk 3,
    in any order; the root is BLAKE3 over the digests in chunk order on both ends, as if
    they had come in place."""
    from p2pclone.protocol import End, Later

    pair, _plan = ready()
    s, r = pair.conns[Role.SENDER], pair.conns[Role.RECEIVER]
    assert s.peer_takes_later and r.peer_takes_later
    pair.send(Role.SENDER, chunk(0, ()))
    pair.send(Role.SENDER, Later(index=1, count=2))
    pair.send(Role.SENDER, chunk(3, ()))
    assert r.later == {1, 2}
    pair.send(Role.SENDER, chunk(2, ((2 * MiB, 2 * MiB + 512),)))
    pair.send(Role.SENDER, chunk(1, ()))
    assert not r.later
    digest = chunk(0, ()).digest
    assert s.root_digest() == r.root_digest() == root_of([digest] * 4)
    pair.send(Role.SENDER, End(chunk_count=4, root=s.root_digest()))


def test_later_chunks_cannot_come_early_twice_or_be_skipped() -> None:
    from p2pclone.protocol import End, Later

    def forge(*events) -> None:
        pair, _plan = ready()
        r = pair.conns[Role.RECEIVER]
        for event in events:
            r.receive_data(pair.forge(Role.SENDER, event))
            r.next_event()

    forge(Later(index=0, count=2), chunk(2, ()), chunk(3, ()), chunk(0, ()))  # fine
    with pytest.raises(RemoteProtocolError, match="before the first pass ended"):
        forge(Later(index=0, count=2), chunk(0, ()))
    with pytest.raises(RemoteProtocolError, match="arrived where chunk 4 was due"):
        forge(Later(index=0, count=1), chunk(1, ()), chunk(2, ()), chunk(3, ()), chunk(0, ()),
              chunk(0, ()))  # fmt: skip
    with pytest.raises(RemoteProtocolError, match="left for later, came"):
        forge(Later(index=0, count=1), chunk(1, ()), chunk(2, ()), chunk(3, ()),
              End(chunk_count=4, root=bytes(32)))  # fmt: skip
