"""The session state machines, wired together in memory: no trio, no sockets."""

from __future__ import annotations

import subprocess
import sys

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pclone.errors import LocalProtocolError, RemoteProtocolError
from p2pclone.protocol import (
    CLOSED,
    NEED_DATA,
    TRANSITIONS,
    Accept,
    Chunk,
    Connection,
    Encoding,
    End,
    Error,
    FrameType,
    Hello,
    Plan,
    Result,
    Role,
    State,
    Zero,
    encode_frame,
    zero_digest,
)

MiB = 1 << 20


class Pair:
    """A sender and a receiver connection wired back to back (after h11's ConnectionPair)."""

    def __init__(self) -> None:
        self.conns = {Role.SENDER: Connection(Role.SENDER), Role.RECEIVER: Connection(Role.RECEIVER)}

    def send(self, role: Role, event, *, split: int = 0) -> list:
        """Send from ``role``; deliver to the other side (in ``split``-byte pieces); return its events."""
        wire = b"".join(bytes(b) for b in self.conns[role].send(event))
        peer = self.conns[role.peer]
        events = []
        pieces = [wire[i : i + split] for i in range(0, len(wire), split)] if split else [wire]
        for piece in pieces:
            peer.receive_data(piece)
            while (ev := peer.next_event()) not in (NEED_DATA, CLOSED):
                events.append(ev)
        return events


def chunk(plan: Plan, index: int, fill: int) -> Chunk:
    data = bytes([fill]) * plan.chunk_length(index)
    return Chunk(index=index, length=len(data), digest=blake3.blake3(data).digest(),
                 encoding=Encoding.RAW, body=data)


def run_session(split: int = 0) -> Pair:
    p = Pair()
    S, R = Role.SENDER, Role.RECEIVER
    assert p.send(S, Hello(role="sender", software="t"), split=split) == [Hello(role="sender", software="t")]
    p.send(R, Hello(role="receiver", software="t"), split=split)
    plan = Plan(source_size=5 * MiB + 100, chunk_size=MiB, source={"name": "x"})
    assert p.send(S, plan, split=split) == [plan]
    p.send(R, Accept(target={"name": "y"}), split=split)
    assert p.send(S, chunk(plan, 0, 1), split=split)[0].index == 0
    p.send(S, Zero(index=1, count=2), split=split)
    p.send(S, chunk(plan, 3, 3), split=split)
    p.send(S, Zero(index=4, count=2), split=split)  # includes the short last chunk
    root = p.conns[S].root_digest()
    [end] = p.send(S, End(chunk_count=6, root=root), split=split)
    assert end.root == p.conns[R].root_digest() == root
    p.send(R, Result(root=root, verified=True), split=split)
    return p


@pytest.mark.parametrize("split", [0, 1, 7])
def test_whole_session_reaches_done_on_both_sides(split: int) -> None:
    p = run_session(split)
    assert p.conns[Role.SENDER].state is State.DONE
    assert p.conns[Role.RECEIVER].state is State.DONE


def test_root_is_blake3_over_ordered_chunk_hashes() -> None:
    p = run_session()
    plan = p.conns[Role.RECEIVER].plan
    assert plan is not None
    hashes = [chunk(plan, 0, 1).digest, zero_digest(MiB), zero_digest(MiB), chunk(plan, 3, 3).digest,
              zero_digest(MiB), zero_digest(100)]
    assert p.conns[Role.RECEIVER].root_digest() == blake3.blake3(b"".join(hashes)).digest()


def to_data_phase() -> tuple[Pair, Plan]:
    p = Pair()
    p.send(Role.SENDER, Hello(role="sender", software="t"))
    p.send(Role.RECEIVER, Hello(role="receiver", software="t"))
    plan = Plan(source_size=3 * MiB, chunk_size=MiB)
    p.send(Role.SENDER, plan)
    p.send(Role.RECEIVER, Accept())
    return p, plan


def forge(conn: Connection, ftype: FrameType, meta: dict, body: bytes = b"", seq: int | None = None) -> None:
    """Feed ``conn`` a frame built by hand, as a hostile peer would."""
    seq = conn.bytes_in and None or seq
    raw = b"".join(bytes(b) for b in encode_frame(ftype, seq or 0, msgpack.packb(meta), body))
    conn.receive_data(raw)


@pytest.mark.parametrize(
    ("event_factory", "message"),
    [
        (lambda plan: chunk(plan, 1, 5), "chunk 1 arrived where chunk 0 was due"),
        (lambda plan: Zero(index=0, count=4), "exceed the plan"),
        (lambda plan: End(chunk_count=3, root=bytes(32)), "incomplete"),
        (lambda plan: Chunk(index=0, length=10, digest=bytes(32), encoding=0, body=b"x" * 10),
         "claims 10 bytes"),
        (lambda plan: Plan(source_size=1, chunk_size=4096), "PLAN while the receiver was in state data"),
    ],
)
def test_receiver_rejects_out_of_plan_events(event_factory, message) -> None:
    p, plan = to_data_phase()
    sender = Connection(Role.SENDER)
    # Bypass the sender's own checks: build the frame the way a hostile peer would.
    event = event_factory(plan)
    body = event.body if isinstance(event, Chunk) else b""
    from p2pclone.protocol.messages import pack_meta

    wire = b"".join(bytes(b) for b in encode_frame(event.TYPE, 2, pack_meta(event), body))
    recv = p.conns[Role.RECEIVER]
    recv.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match=message):
        recv.next_event()
    assert recv.state is State.ERROR
    del sender


def test_local_misuse_is_a_local_error() -> None:
    c = Connection(Role.SENDER)
    with pytest.raises(LocalProtocolError, match="PLAN while the sender was in state start"):
        c.send(Plan(source_size=1, chunk_size=4096))
    assert c.state is State.ERROR


def test_two_senders_are_told_to_run_receive() -> None:
    a, b = Connection(Role.SENDER), Connection(Role.SENDER)
    raw = b"".join(bytes(x) for x in a.send(Hello(role="sender", software="t")))
    # b is a sender too; make it act as if it were waiting for a receiver's HELLO
    b.send(Hello(role="sender", software="t"))
    b.receive_data(raw)
    with pytest.raises(RemoteProtocolError, match="also a sender: run `p2pclone receive`"):
        b.next_event()


def test_error_frame_ends_the_session_from_any_live_state() -> None:
    p, _ = to_data_phase()
    [err] = p.send(Role.RECEIVER, Error(code="safety", message="no", exit=4))
    assert err == Error(code="safety", message="no", exit=4)
    assert p.conns[Role.SENDER].state is State.ERROR
    assert p.conns[Role.RECEIVER].state is State.ERROR


def test_eof_is_reported_as_closed() -> None:
    c = Connection(Role.RECEIVER)
    c.receive_data(b"")
    from p2pclone.protocol import CLOSED

    assert c.next_event() is CLOSED


ALL_EVENTS = {
    FrameType.HELLO: lambda role: Hello(role=role.peer.value, software="t"),
    FrameType.PLAN: lambda role: Plan(source_size=MiB, chunk_size=MiB),
    FrameType.STATE: lambda role: Accept(),
    FrameType.CHUNK: lambda role: Chunk(index=0, length=MiB, digest=bytes(32), encoding=1, body=b"z"),
    FrameType.ZERO: lambda role: Zero(index=0, count=1),
    FrameType.END: lambda role: End(chunk_count=1, root=bytes(32)),
    FrameType.RESULT: lambda role: Result(root=bytes(32), verified=False),
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("ftype", list(ALL_EVENTS))
def test_every_received_frame_outside_the_table_is_an_error(role: Role, ftype: FrameType) -> None:
    """Drive a fresh connection into every reachable state, then offer ``ftype``."""
    for state in State:
        conn = reach(role, state)
        if conn is None:
            continue
        legal = (role, state, __import__("p2pclone.protocol", fromlist=["Direction"]).Direction.RECV, ftype) in TRANSITIONS
        event = ALL_EVENTS[ftype](role)
        body = event.body if isinstance(event, Chunk) else b""
        from p2pclone.protocol.messages import pack_meta

        seq = conn._decoder._next_seq
        conn._decoder.max_body = MiB
        conn.receive_data(b"".join(bytes(b) for b in encode_frame(ftype, seq, pack_meta(event), body)))
        if legal:
            continue  # legal edges are exercised by the full-session tests
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.state is State.ERROR


def reach(role: Role, target: State) -> Connection | None:
    """A connection of ``role`` brought to ``target`` by a legal exchange, if reachable."""
    p, _ = Pair(), None
    steps = [
        (Role.SENDER, lambda: Hello(role="sender", software="t")),
        (Role.RECEIVER, lambda: Hello(role="receiver", software="t")),
        (Role.SENDER, lambda: Plan(source_size=MiB, chunk_size=MiB)),
        (Role.RECEIVER, lambda: Accept()),
        (Role.SENDER, lambda: Zero(index=0, count=1)),
        (Role.SENDER, lambda: End(chunk_count=1, root=p.conns[Role.SENDER].root_digest())),
        (Role.RECEIVER, lambda: Result(root=bytes(32), verified=False)),
    ]
    for who, make in steps:
        if p.conns[role].state is target:
            return p.conns[role]
        p.send(who, make())
    return p.conns[role] if p.conns[role].state is target else None


INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry


@settings(max_examples=300)
@given(
    ftype=st.sampled_from([t for t in FrameType if t is not FrameType.CHUNK]),
    meta=st.dictionaries(st.text(max_size=6), st.one_of(
        INTS, st.text(max_size=10), st.binary(max_size=40), st.booleans(), st.none(),
        st.lists(INTS, max_size=3), st.dictionaries(st.text(max_size=3), INTS, max_size=3),
    ), max_size=6),
)
def test_malformed_meta_is_a_protocol_error_never_a_crash(ftype, meta) -> None:
    from p2pclone.protocol import RawFrame, decode_event

    try:
        decode_event(RawFrame(ftype, 0, msgpack.packb(meta), b""))
    except RemoteProtocolError:
        pass


def test_protocol_core_imports_neither_trio_nor_sockets() -> None:
    code = ("import sys, p2pclone.protocol; "
            "bad = [m for m in sys.modules if m in ('trio', 'socket', 'asyncio')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
