"""The session state machines, wired together in memory: no trio, no sockets."""

from __future__ import annotations

import contextlib
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
    Ack,
    Chunk,
    Confirm,
    Connection,
    Encoding,
    End,
    Error,
    Evict,
    FrameType,
    Group,
    Have,
    Hello,
    Later,
    Lost,
    Nak,
    Patch,
    Plan,
    Poll,
    Ref,
    Report,
    Result,
    Role,
    Same,
    State,
    Zero,
    encode_frame,
    zero_digest,
)
from p2pclone.protocol.messages import pack_meta

MiB = 1 << 20


class Pair:
    """A sender and a receiver connection wired back to back (after h11's ConnectionPair)."""

    def __init__(self, code: str = "7-test-code", receiver_code: str | None = None) -> None:
        self.conns = {
            Role.SENDER: Connection(Role.SENDER, code=code),
            Role.RECEIVER: Connection(Role.RECEIVER, code=receiver_code or code),
        }

    def forge(self, role: Role, event) -> bytes:
        """The frame ``role`` would send for ``event``, bypassing its checks (a hostile peer)."""
        c = self.conns[role]
        key = c.keys.send if c._sealing else None
        body = event.body if isinstance(event, Chunk) else b""
        raw = encode_frame(event.TYPE, c._send_seq, pack_meta(event), body, key)
        c._send_seq += 1
        return b"".join(bytes(b) for b in raw)

    def handshake(self) -> None:
        S, R = Role.SENDER, Role.RECEIVER
        s, r = self.conns[S], self.conns[R]
        self.send(S, s.hello("t"))
        self.send(R, r.hello("t"))
        self.send(S, s.pake())
        self.send(R, r.pake())
        self.send(S, s.confirmation())
        self.send(R, r.confirmation())

    def send(self, role: Role, event, *, split: int = 0) -> list:
        """Send from ``role``; deliver to the peer (in ``split``-byte pieces); return its events."""
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
    return Chunk(
        index=index,
        length=len(data),
        digest=blake3.blake3(data).digest(),
        encoding=Encoding.RAW,
        body=data,
    )


def run_session(split: int = 0) -> Pair:
    p = Pair()
    S, R = Role.SENDER, Role.RECEIVER
    hello = p.conns[S].hello("t")
    assert p.send(S, hello, split=split) == [hello]
    p.send(R, p.conns[R].hello("t"), split=split)
    p.send(S, p.conns[S].pake(), split=split)
    p.send(R, p.conns[R].pake(), split=split)
    p.send(S, p.conns[S].confirmation(), split=split)
    p.send(R, p.conns[R].confirmation(), split=split)
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
    hashes = [
        chunk(plan, 0, 1).digest,
        zero_digest(MiB),
        zero_digest(MiB),
        chunk(plan, 3, 3).digest,
        zero_digest(MiB),
        zero_digest(100),
    ]
    assert p.conns[Role.RECEIVER].root_digest() == blake3.blake3(b"".join(hashes)).digest()


def to_data_phase() -> tuple[Pair, Plan]:
    p = Pair()
    p.handshake()
    plan = Plan(source_size=3 * MiB, chunk_size=MiB)
    p.send(Role.SENDER, plan)
    p.send(Role.RECEIVER, Accept())
    return p, plan


@pytest.mark.parametrize(
    ("event_factory", "message"),
    [
        (lambda plan: chunk(plan, 1, 5), "chunk 1 arrived where chunk 0 was due"),
        (lambda plan: Zero(index=0, count=4), "exceed the plan"),
        (lambda plan: End(chunk_count=3, root=bytes(32)), "incomplete"),
        (
            lambda plan: Chunk(index=0, length=10, digest=bytes(32), encoding=0, body=b"x" * 10),
            "claims 10 bytes",
        ),
        (
            lambda plan: Plan(source_size=1, chunk_size=4096),
            "PLAN while the receiver was in state data",
        ),
    ],
)
def test_receiver_rejects_out_of_plan_events(event_factory, message) -> None:
    p, plan = to_data_phase()
    recv = p.conns[Role.RECEIVER]
    recv.receive_data(p.forge(Role.SENDER, event_factory(plan)))
    with pytest.raises(RemoteProtocolError, match=message):
        recv.next_event()
    assert recv.state is State.ERROR


def test_local_misuse_is_a_local_error() -> None:
    c = Connection(Role.SENDER, code="x")
    with pytest.raises(LocalProtocolError, match="PLAN while the sender was in state start"):
        c.send(Plan(source_size=1, chunk_size=4096))
    assert c.state is State.ERROR


def test_two_senders_are_told_to_run_receive() -> None:
    a, b = Connection(Role.SENDER, code="x"), Connection(Role.SENDER, code="x")
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
    c = Connection(Role.RECEIVER, code="x")
    c.receive_data(b"")
    from p2pclone.protocol import CLOSED

    assert c.next_event() is CLOSED


def all_events(p: Pair, role: Role) -> dict:
    """One well-formed event of every type, as ``role``'s peer would send it."""
    peer = p.conns[role.peer]
    return {
        FrameType.HELLO: Hello(role=role.peer.value, software="t"),
        FrameType.PAKE: peer.pake(),
        FrameType.CONFIRM: Confirm(mac=bytes(32)),
        FrameType.PLAN: Plan(source_size=MiB, chunk_size=MiB),
        FrameType.ACCEPT: Accept(),
        FrameType.CHUNK: Chunk(index=0, length=MiB, digest=bytes(32), encoding=1, body=b"z"),
        FrameType.ZERO: Zero(index=0, count=1),
        FrameType.LOST: Lost(index=0, count=1),
        FrameType.LATER: Later(index=0, count=1),
        FrameType.GROUP: Group(key=bytes(32), session=1),
        FrameType.REF: Ref(index=0, hashes=bytes(32), slice=0, fragments=1, length=100),
        FrameType.POLL: Poll(slice=0),
        FrameType.REPORT: Report(slice=0, missing=b""),
        FrameType.EVICT: Evict(reason="slow"),
        FrameType.END: End(chunk_count=1, root=bytes(32)),
        FrameType.RESULT: Result(root=bytes(32), verified=False),
        FrameType.HAVE: Have(index=0, hashes=bytes(32)),
        FrameType.SAME: Same(index=0, hashes=bytes(32)),
        FrameType.ACK: Ack(durable=1),
        FrameType.NAK: Nak(indices=(0,)),
        FrameType.PATCH: Patch(
            index=0, length=MiB, digest=bytes(32), encoding=1, changed=b"\x01", body=b"z"
        ),
    }


def reach(role: Role, target: State) -> Pair | None:
    """A pair whose ``role`` side was brought to ``target`` by a legal exchange, if reachable."""
    p = Pair()
    s, r = p.conns[Role.SENDER], p.conns[Role.RECEIVER]
    steps = [
        (Role.SENDER, lambda: s.hello("t")),
        (Role.RECEIVER, lambda: r.hello("t")),
        (Role.SENDER, s.pake),
        (Role.RECEIVER, r.pake),
        (Role.SENDER, s.confirmation),
        (Role.RECEIVER, r.confirmation),
        (Role.SENDER, lambda: Plan(source_size=MiB, chunk_size=MiB)),
        (Role.RECEIVER, lambda: Accept()),
        (Role.SENDER, lambda: Zero(index=0, count=1)),
        (Role.SENDER, lambda: End(chunk_count=1, root=s.root_digest())),
        (Role.RECEIVER, lambda: Result(root=bytes(32), verified=False)),
    ]
    for who, make in steps:
        if p.conns[role].state is target:
            return p
        p.send(who, make())
    return p if p.conns[role].state is target else None


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("ftype", [t for t in FrameType if t is not FrameType.ERROR])
def test_every_received_frame_outside_the_table_is_an_error(role: Role, ftype: FrameType) -> None:
    """Bring a connection into every reachable state, then offer it ``ftype``."""
    from p2pclone.errors import P2PCloneError
    from p2pclone.protocol import Direction

    reached = 0
    for state in State:
        p = reach(role, state)
        if p is None:
            continue
        reached += 1
        conn = p.conns[role]
        if (role, state, Direction.RECV, ftype) in TRANSITIONS:
            continue  # legal edges are exercised by the full-session tests
        conn._decoder.max_body = MiB
        conn.receive_data(p.forge(role.peer, all_events(p, role)[ftype]))
        with pytest.raises(P2PCloneError):
            conn.next_event()
        assert conn.state is State.ERROR
    assert reached >= 8


def test_wrong_code_fails_key_confirmation_and_nothing_else_is_accepted() -> None:
    from p2pclone.errors import AuthenticationError

    p = Pair(code="7-right-code", receiver_code="7-wrong-code")
    s, r = p.conns[Role.SENDER], p.conns[Role.RECEIVER]
    p.send(Role.SENDER, s.hello("t"))
    p.send(Role.RECEIVER, r.hello("t"))
    p.send(Role.SENDER, s.pake())
    p.send(Role.RECEIVER, r.pake())
    with pytest.raises(
        AuthenticationError, match=r"wrong code \(a typo\?\), or someone in the middle"
    ):
        p.send(Role.SENDER, s.confirmation())
    assert r.state is State.ERROR and r.keys is not None
    # The receiver may tell the sender why, once, in the clear (it never confirmed keys).
    [err] = p.send(Role.RECEIVER, Error(code="auth", message="wrong code", exit=3))
    assert err.exit == 3


def test_codes_are_compared_without_case_or_spacing() -> None:
    p = Pair(code="7-Guitar-Remind", receiver_code=" 7 guitar remind ")
    p.handshake()
    assert p.conns[Role.SENDER].state is State.PLAN


def test_after_pairing_every_frame_is_sealed_and_tamper_evident() -> None:
    from p2pclone.errors import AuthenticationError

    p, plan = to_data_phase()
    wire = p.forge(Role.SENDER, chunk(plan, 0, 9))
    assert b"\x09" * 64 not in wire  # the chunk's bytes are not in the clear
    recv = p.conns[Role.RECEIVER]
    flipped = wire[:100] + bytes([wire[100] ^ 1]) + wire[101:]
    recv.receive_data(flipped)
    with pytest.raises(AuthenticationError, match="failed authentication"):
        recv.next_event()


def test_replayed_record_is_refused() -> None:
    p, plan = to_data_phase()
    wire = p.forge(Role.SENDER, chunk(plan, 0, 9))
    recv = p.conns[Role.RECEIVER]
    recv.receive_data(wire + wire)
    assert isinstance(recv.next_event(), Chunk)
    with pytest.raises(RemoteProtocolError, match="frame .* arrived where frame"):
        recv.next_event()


def test_cipher_follows_the_cpus() -> None:
    for aes_s, aes_r, cipher in ((True, True, "aes-256-gcm"), (True, False, "chacha20-poly1305")):
        p = Pair()
        p.conns[Role.SENDER]._aes, p.conns[Role.RECEIVER]._aes = aes_s, aes_r
        p.handshake()
        assert p.conns[Role.SENDER].cipher == p.conns[Role.RECEIVER].cipher == cipher


def test_rekey_keeps_both_directions_in_step(monkeypatch) -> None:
    import p2pclone.crypto as crypto

    monkeypatch.setattr(crypto, "REKEY_RECORDS", 3)
    p, plan = to_data_phase()
    p.send(Role.SENDER, chunk(plan, 0, 1))
    p.send(Role.SENDER, chunk(plan, 1, 2))
    p.send(Role.SENDER, chunk(plan, 2, 3))
    assert p.conns[Role.SENDER].keys.send.generation >= 1
    assert p.conns[Role.RECEIVER].keys.recv.generation == p.conns[Role.SENDER].keys.send.generation


INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry


@settings(max_examples=300)
@given(
    ftype=st.sampled_from([t for t in FrameType if t is not FrameType.CHUNK]),
    meta=st.dictionaries(
        st.text(max_size=6),
        st.one_of(
            INTS,
            st.text(max_size=10),
            st.binary(max_size=40),
            st.booleans(),
            st.none(),
            st.lists(INTS, max_size=3),
            st.dictionaries(st.text(max_size=3), INTS, max_size=3),
        ),
        max_size=6,
    ),
)
def test_malformed_meta_is_a_protocol_error_never_a_crash(ftype, meta) -> None:
    from p2pclone.protocol import RawFrame, decode_event

    with contextlib.suppress(RemoteProtocolError):
        decode_event(RawFrame(ftype, 0, msgpack.packb(meta), b""))


def test_protocol_core_imports_neither_trio_nor_sockets() -> None:
    code = (
        "import sys, p2pclone.protocol; "
        "bad = [m for m in sys.modules if m in ('trio', 'socket', 'asyncio')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lost_ranges_count_for_coverage_and_as_zero_digests_in_the_root() -> None:
    p = Pair()
    p.handshake()
    S, R = Role.SENDER, Role.RECEIVER
    p.send(S, Plan(source_size=3 * MiB, chunk_size=MiB))
    p.send(R, Accept())
    data = b"x" * MiB
    digest = blake3.blake3(data).digest()
    p.send(S, Chunk(index=0, length=MiB, digest=digest, encoding=Encoding.RAW, body=data))
    (lost,) = p.send(S, Lost(index=1, count=2))
    assert lost == Lost(index=1, count=2)
    root = blake3.blake3(digest + bytes(64)).digest()
    assert p.conns[S].root_digest() == p.conns[R].root_digest() == root
    p.send(S, End(chunk_count=3, root=root))  # coverage is complete: END is accepted
    with pytest.raises(RemoteProtocolError, match="empty LOST"):
        Lost.from_meta({"i": 0, "c": 0})
