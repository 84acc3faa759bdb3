"""Hostile bytes against the decoder and the handshake: only protocol errors, bounded memory.

Hypothesis drives arbitrary byte strings and well-framed frames with arbitrary metas
into connections in every handshake state.  Whatever arrives must end in a
P2PCloneError (or be accepted as a valid event), never another exception, and the
decoder never holds more than the input it was given.
"""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pclone.errors import P2PCloneError
from p2pclone.protocol import CLOSED, NEED_DATA, Connection, FrameType, Role, encode_frame

INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
VALUES = st.recursive(
    st.one_of(INTS, st.binary(max_size=64), st.text(max_size=16), st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
METAS = st.dictionaries(
    st.sampled_from(
        [
            "role",
            "sw",
            "feat",
            "msg",
            "mac",
            "size",
            "chunk",
            "count",
            "hash",
            "src",
            "code",
            "exit",
            "x",
        ]
    ),
    VALUES,
    max_size=6,
)


def drain(conn: Connection) -> None:
    try:
        for _ in range(100):
            if conn.next_event() in (NEED_DATA, CLOSED):
                return
    except P2PCloneError:
        return


def fresh(role: Role, steps: int) -> tuple[Connection, Connection]:
    """A connection of ``role`` after ``steps`` legal handshake frames, and its peer."""
    s, r = Connection(Role.SENDER, code="1-a-b"), Connection(Role.RECEIVER, code="1-a-b")
    order = [
        (s, r, lambda: s.hello("t")),
        (r, s, lambda: r.hello("t")),
        (s, r, s.pake),
        (r, s, r.pake),
    ]
    for src, dst, make in order[:steps]:
        dst.receive_data(b"".join(bytes(b) for b in src.send(make())))
        assert dst.next_event() not in (NEED_DATA, CLOSED)
    return (s, r) if role is Role.SENDER else (r, s)


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(list(Role)), steps=st.integers(0, 4), data=st.binary(max_size=4096))
def test_random_bytes_in_any_handshake_state(role: Role, steps: int, data: bytes) -> None:
    conn, _ = fresh(role, steps if role is Role.RECEIVER else steps - steps % 2)
    conn.receive_data(data)
    drain(conn)
    assert conn._decoder.buffered <= len(data)


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(list(Role)),
    steps=st.integers(0, 4),
    ftype=st.sampled_from(list(FrameType)),
    meta=METAS,
    body=st.binary(max_size=64),
)
def test_well_framed_garbage_in_any_handshake_state(role, steps, ftype, meta, body) -> None:
    conn, peer = fresh(role, steps if role is Role.RECEIVER else steps - steps % 2)
    seq = peer._send_seq
    conn.receive_data(
        b"".join(bytes(b) for b in encode_frame(ftype, seq, msgpack.packb(meta), body))
    )
    drain(conn)
