"""The frame codec, with no I/O: round trips, splits, and hostile bytes."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pclone.errors import RemoteProtocolError
from p2pclone.protocol import HEADER_SIZE, FrameDecoder, FrameType, encode_frame


def frame(ftype: FrameType, seq: int, meta: bytes, body: bytes = b"") -> bytes:
    return b"".join(bytes(b) for b in encode_frame(ftype, seq, meta, body))


def decode_all(data: bytes, *, max_body: int = 1 << 20, pieces: list[int] | None = None):
    dec = FrameDecoder(max_body=max_body)
    out = []
    cuts = sorted(set(pieces or [])) + [len(data)]
    start = 0
    for cut in cuts:
        dec.feed(data[start:cut])
        start = cut
        while (f := dec.next_frame()) is not None:
            out.append(f)
    return out, dec


def test_round_trip_whole_and_one_byte_at_a_time() -> None:
    wire = frame(FrameType.HELLO, 0, b"\x80") + frame(
        FrameType.CHUNK, 1, b"\x81\xa1i\x00", b"xyz" * 1000
    )
    for pieces in (None, list(range(1, len(wire)))):
        frames, dec = decode_all(wire, pieces=pieces)
        assert [(f.type, f.seq, f.meta, f.body) for f in frames] == [
            (FrameType.HELLO, 0, b"\x80", b""),
            (FrameType.CHUNK, 1, b"\x81\xa1i\x00", b"xyz" * 1000),
        ]
        assert dec.bytes_in == len(wire) and dec.buffered == 0


@settings(max_examples=200)
@given(
    bodies=st.lists(st.binary(max_size=5000), min_size=1, max_size=6),
    metas=st.lists(st.binary(max_size=300), min_size=6, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=40000), max_size=20),
)
def test_round_trip_at_random_split_points(bodies, metas, cuts) -> None:
    wire = b"".join(frame(FrameType.CHUNK, i, metas[i], b) for i, b in enumerate(bodies))
    frames, _ = decode_all(wire, pieces=[c for c in cuts if c < len(wire)])
    assert [f.body for f in frames] == bodies
    assert [f.meta for f in frames] == metas[: len(bodies)]


def test_huge_body_length_is_refused_from_the_header_alone() -> None:
    wire = frame(FrameType.CHUNK, 0, b"", b"x" * 100)
    dec = FrameDecoder(max_body=99)
    dec.feed(wire[:HEADER_SIZE])  # only the header: the body was never buffered
    with pytest.raises(RemoteProtocolError, match="limit here is 99"):
        dec.next_frame()


def test_forged_header_with_4gib_length_is_refused() -> None:
    head = struct.pack("<4sBBHIIQ", b"P2PC", 1, 4, 0, 0, 0xFFFFFFFF, 0)
    dec = FrameDecoder(max_body=1 << 20)
    dec.feed(head + struct.pack("<I", zlib.crc32(head)))
    with pytest.raises(RemoteProtocolError, match="4294967295 bytes"):
        dec.next_frame()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda w: b"GET / HTTP/1.1\r\n\r\n" + w, "looks like HTTP"),
        (lambda w: b"SSH-2.0-OpenSSH\r\n" + w, "looks like SSH"),
        (lambda w: w[:4] + b"\x02" + w[5:], "version 2"),
        (lambda w: w[:20] + bytes([w[20] ^ 1]) + w[21:], "CRC"),
        (lambda w: w[:-1] + bytes([w[-1] ^ 0x40]), "checksum"),
        (lambda w: w[:40] + bytes([w[40] ^ 1]) + w[41:], "checksum"),
    ],
)
def test_corrupt_or_foreign_bytes_are_named(mutate, message) -> None:
    wire = mutate(frame(FrameType.CHUNK, 0, b"\x80", b"payload" * 10))
    with pytest.raises(RemoteProtocolError, match=message):
        decode_all(wire)


def test_unknown_type_flags_and_sequence_gaps() -> None:
    def raw(ftype: int, flags: int, seq: int) -> bytes:
        head = struct.pack("<4sBBHIIQ", b"P2PC", 1, ftype, flags, 0, 0, seq)
        return head + struct.pack("<I", zlib.crc32(head))

    for data, msg in (
        (raw(99, 0, 0), "unknown frame type"),
        (raw(1, 4, 0), "flags"),
        (raw(1, 0, 5), "frame 5 arrived where frame 0"),
    ):
        dec = FrameDecoder()
        dec.feed(data)
        with pytest.raises(RemoteProtocolError, match=msg):
            dec.next_frame()
    # replayed frame: the same frame twice
    wire = frame(FrameType.HELLO, 0, b"\x80")
    with pytest.raises(RemoteProtocolError, match="frame 0 arrived where frame 1"):
        decode_all(wire + wire)


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_any_bytes_give_frames_or_a_protocol_error(data: bytes) -> None:
    dec = FrameDecoder(max_body=4096)
    dec.feed(data)
    try:
        while dec.next_frame() is not None:
            pass
    except RemoteProtocolError:
        pass
    # Nothing beyond the input (plus one frame's limit) is ever held.
    assert dec.buffered <= len(data)
