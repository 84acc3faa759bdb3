"""Men in the middle that speak the protocol: attacks a checksum cannot catch.

Each test runs a real sender and a real receiver over trio memory streams with a relay
between them that cuts the byte streams into frames and rewrites them *well-formed*:
header CRC recomputed, the xxh3 trailer of a handshake frame recomputed, the header
sequence numbers kept gapless.  So the framing layer sees nothing wrong, and what stops
each attack is the defence the test names.

Each docstring names a negative control that was run once by hand: the defence patched
out of ``p2pclone/``, the test run and seen failing, the patch reverted.  A test that
still passed without its defence would be testing nothing.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing

from p2pclone.disks import Source, Target
from p2pclone.errors import AuthenticationError, ExitCode, PeerError
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.protocol import FrameDecoder, FrameType, encode_frame
from p2pclone.protocol.frames import FLAG_SEALED, HEADER_SIZE, TRAILER_SIZE
from p2pclone.receiver import receive_stream
from p2pclone.sender import send_stream
from p2pclone.session import Done, pick_error

CODE = "4-hostile-relay"
CHUNK = 16 * 1024  # small chunks: many sealed records from a small source
TAG_SIZE = 16
_HEAD = struct.Struct("<4sBBHIIQ")  # the header before its CRC (frames.py draws it)

#: Incompressible marker data (a fixed seed): unlike text, zstd cannot hide it, so an
#: unsealed chunk carrying it shows it on the wire byte for byte.
MARKER = random.Random(0x5EC).randbytes(CHUNK)

Edit = Callable[[bytes], list[bytes]]  # one frame in -> the frames to forward instead


def keep(frame: bytes) -> list[bytes]:
    return [frame]


# -- frames as a man in the middle sees them -------------------------------------------


def header_fields(frame: bytes) -> tuple[FrameType, int, int, int, int]:
    """(type, flags, meta_len, body_len, seq) of a frame."""
    _, _, ftype, flags, meta_len, body_len, seq = _HEAD.unpack_from(frame)
    return FrameType(ftype), flags, meta_len, body_len, seq


def take_frames(buf: bytearray) -> Iterator[bytes]:
    """Pop every complete frame off the front of ``buf``."""
    while len(buf) >= HEADER_SIZE:
        _, flags, meta_len, body_len, _ = header_fields(bytes(buf[:HEADER_SIZE]))
        trailer = TAG_SIZE if flags & FLAG_SEALED else TRAILER_SIZE
        total = HEADER_SIZE + meta_len + body_len + trailer
        if len(buf) < total:
            return
        frame = bytes(buf[:total])
        del buf[:total]
        yield frame


def with_seq(frame: bytes, seq: int) -> bytes:
    """``frame`` renumbered ``seq``, its header CRC recomputed; the rest untouched."""
    head = bytearray(frame[: _HEAD.size])
    struct.pack_into("<Q", head, 16, seq)
    return bytes(head) + struct.pack("<I", zlib.crc32(head)) + frame[HEADER_SIZE:]


def renumbering(edit: Callable[[bytes, int], list[bytes]]) -> Edit:
    """Wrap ``edit(frame, seq)`` so that whatever it forwards is numbered without gaps."""
    out_seq = 0

    def fn(frame: bytes) -> list[bytes]:
        nonlocal out_seq
        forwarded = []
        for f in edit(frame, header_fields(frame)[4]):
            forwarded.append(with_seq(f, out_seq))
            out_seq += 1
        return forwarded

    return fn


async def pump(
    src: trio.abc.HalfCloseableStream, dst: trio.abc.HalfCloseableStream, edit: Edit
) -> None:
    buf = bytearray()
    try:
        while data := await src.receive_some():
            buf += data
            out = [f for frame in take_frames(buf) for f in edit(frame)]
            if out:
                await dst.send_all(b"".join(out))
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def clone_through(
    source: Path, target: Path, *, to_receiver: Edit = keep, to_sender: Edit = keep
) -> tuple[object, object]:
    """Clone ``source`` onto ``target`` through a relay that edits frames each way.

    Returns (sender's Done or exception, receiver's Done or exception).
    """
    tx_end, relay_tx = trio.testing.memory_stream_pair()
    relay_rx, rx_end = trio.testing.memory_stream_pair()
    out: dict[str, object] = {}
    src, tgt = Source.open(str(source)), Target.open(str(target))

    async def rx() -> None:
        try:
            out["rx"] = await receive_stream(rx_end, tgt, ReceiveOptions(journal=False), code=CODE)
        except BaseException as exc:  # noqa: BLE001 - inspected by the tests
            out["rx"] = pick_error(exc)

    async def tx() -> None:
        try:
            out["tx"] = await send_stream(tx_end, src, SendOptions(), code=CODE, chunk_size=CHUNK)
        except BaseException as exc:  # noqa: BLE001
            out["tx"] = pick_error(exc)

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as relay:
                relay.start_soon(pump, relay_tx, relay_rx, to_receiver)
                relay.start_soon(pump, relay_rx, relay_tx, to_sender)
                async with trio.open_nursery() as ends:
                    ends.start_soon(rx)
                    ends.start_soon(tx)
                relay.cancel_scope.cancel()
    finally:
        src.close()
        tgt.close()
    return out["tx"], out["rx"]


def assert_stopped_by_record_authentication(tx: object, rx: object, seq: int) -> None:
    """The receiver refused record ``seq`` as unauthentic (exit 3) and told the sender."""
    assert isinstance(rx, AuthenticationError), rx
    assert int(rx.exit_code) == 3  # docs/errors.md: authentication failed
    assert f"record {seq} failed authentication" in str(rx)
    assert isinstance(tx, PeerError) and tx.exit_code == ExitCode.AUTH, tx


def assert_untouched_from(target: Path, old: bytes, source: bytes, first_chunk: int) -> None:
    """Chunks before ``first_chunk`` are the source's or still the old data (written or
    not yet, both are authentic); from ``first_chunk`` on, the target is untouched."""
    got = target.read_bytes()
    assert len(got) == len(old)
    for i in range(0, first_chunk):
        piece = got[i * CHUNK : (i + 1) * CHUNK]
        assert piece in (source[i * CHUNK : (i + 1) * CHUNK], old[i * CHUNK : (i + 1) * CHUNK])
    assert got[first_chunk * CHUNK :] == old[first_chunk * CHUNK :]


@pytest.fixture
def random_source(tmp_path: Path) -> tuple[Path, bytes]:
    """32 chunks of random data: every chunk is one sealed CHUNK record."""
    path = tmp_path / "source.img"
    data = random.Random(21).randbytes(32 * CHUNK)
    path.write_bytes(data)
    return path, data


@pytest.fixture
def old_target(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "target.img"
    data = random.Random(22).randbytes(32 * CHUNK)
    path.write_bytes(data)
    return path, data


# Sender -> receiver: HELLO 0, PAKE 1, CONFIRM 2, then sealed: PLAN 3, CHUNK i is 4 + i.
FIRST_CHUNK_SEQ = 4


# -- the tests --------------------------------------------------------------------------


async def test_no_plaintext_on_the_wire(tmp_path: Path, old_target: tuple[Path, bytes]) -> None:
    """An eavesdropper sees none of the disk: no 32-byte slice of MARKER, a chunk of
    incompressible bytes in the source, crosses the link in either direction, nor the
    source's file name.  (Text would prove nothing: zstd alone hides it.)

    Negative control: with sealing switched off (``self._seal = False`` in
    ``Connection.__init__``) this test fails — the marker's chunk goes raw, since zstd
    cannot shrink it, and every slice of it is on the wire.
    """
    source = tmp_path / "secret-source-name.img"
    text = b"".join(b"the quick brown fox %d\n" % i for i in range(8000))[: 20 * CHUNK]
    data = text[: 7 * CHUNK] + MARKER + text[7 * CHUNK : 19 * CHUNK]
    data += bytes(len(old_target[1]) - len(data))
    source.write_bytes(data)
    wire = bytearray()

    def tap(frame: bytes) -> list[bytes]:
        wire.extend(frame)
        return [frame]

    tx, rx = await clone_through(source, old_target[0], to_receiver=tap, to_sender=tap)
    assert isinstance(tx, Done) and isinstance(rx, Done), (tx, rx)
    assert old_target[0].read_bytes() == data  # the marker did cross, sealed
    assert len(wire) > len(MARKER)
    leaked = [i for i in range(0, len(MARKER) - 31, 32) if MARKER[i : i + 32] in wire]
    assert not leaked, f"{len(leaked)} slices of the source's data are readable on the wire"
    assert source.name.encode() not in wire


async def test_a_replayed_record_is_refused(
    random_source: tuple[Path, bytes], old_target: tuple[Path, bytes]
) -> None:
    """An active attacker records a sealed CHUNK record (chunk 2) and plays it again
    later, in place: inserted before chunk 6's record, with the header renumbered to
    the sequence number due there (and its CRC recomputed), and every later frame
    renumbered too, so the framing layer sees a gapless, well-formed stream.  Only the
    record's binding to its position (nonce = IV XOR seq, the header with its seq as
    associated data) stops it: the receiver ends with exit 3, the sender with it, and
    nothing from chunk 6 on is written.

    Negative control: with the binding removed (a nonce without the sequence number,
    and the header's seq field zeroed in the associated data, in ``RecordKey``), the
    replayed record opens and the test fails: the receiver stops instead at the in-order
    chunk check ("chunk 2 arrived where chunk 6 was due", exit 1), the layer behind.
    Removing only the nonce's seq, or only the seq in the associated data, is still
    caught here (exit 3) — each binds the record to its place on its own.
    """
    replayed, at = FIRST_CHUNK_SEQ + 2, FIRST_CHUNK_SEQ + 6
    recorded: dict[int, bytes] = {}

    def replay(frame: bytes, seq: int) -> list[bytes]:
        recorded[seq] = frame
        if seq == at:
            assert header_fields(recorded[replayed])[:2] == (FrameType.CHUNK, FLAG_SEALED)
            return [recorded[replayed], frame]
        return [frame]

    tx, rx = await clone_through(random_source[0], old_target[0], to_receiver=renumbering(replay))
    assert_stopped_by_record_authentication(tx, rx, at)
    assert_untouched_from(old_target[0], old_target[1], random_source[1], first_chunk=6)


async def test_reordered_records_are_refused(
    random_source: tuple[Path, bytes], old_target: tuple[Path, bytes]
) -> None:
    """The attacker swaps two sealed CHUNK records (chunks 4 and 5) and renumbers their
    headers (CRC recomputed) so the sequence numbers still run in order.  The receiver
    refuses the first of them as unauthentic (exit 3); nothing from chunk 4 on is
    written.

    Negative control: as for the replay test (records not bound to their sequence
    number), the test fails: the swapped record opens and only the in-order chunk
    check stops it ("chunk 5 arrived where chunk 4 was due", exit 1).
    """
    first = FIRST_CHUNK_SEQ + 4
    held: list[bytes] = []

    def swap(frame: bytes, seq: int) -> list[bytes]:
        if seq in (first, first + 1):
            assert header_fields(frame)[:2] == (FrameType.CHUNK, FLAG_SEALED)
        if seq == first:
            held.append(frame)
            return []
        if seq == first + 1:
            return [frame, *held]
        return [frame]

    tx, rx = await clone_through(random_source[0], old_target[0], to_receiver=renumbering(swap))
    assert_stopped_by_record_authentication(tx, rx, first)
    assert_untouched_from(old_target[0], old_target[1], random_source[1], first_chunk=4)


async def test_a_downgraded_hello_fails_pairing(
    random_source: tuple[Path, bytes],
    old_target: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both CPUs have AES instructions; a man in the middle strips ``aes-gcm`` from both
    HELLOs, re-encoding each frame with a correct meta length, header CRC and xxh3
    trailer, so both ends would settle on ChaCha20-Poly1305.  The handshake transcript
    (which salts the session keys) covers the HELLOs as sent and as received, so the
    ends derive different keys: the receiver refuses the sender's key confirmation
    (exit 3, "wrong code (a typo?), or someone in the middle"), the sender exits 3 too, and the
    target is untouched.

    Negative control: with HELLO left out of the transcript (no ``transcript_update``
    for a HELLO, sent or received, in ``Connection``) this test fails: pairing succeeds,
    the clone completes under the downgraded cipher, and the receiver returns Done.
    """
    monkeypatch.setattr("p2pclone.protocol.connection.cpu_has_aes", lambda: True)
    stripped: list[str] = []

    def strip_aes(frame: bytes) -> list[bytes]:
        ftype, _, meta_len, _, seq = header_fields(frame)
        if ftype is not FrameType.HELLO:
            return [frame]
        meta = msgpack.unpackb(frame[HEADER_SIZE : HEADER_SIZE + meta_len])
        assert "aes-gcm" in meta["feat"]
        meta["feat"].remove("aes-gcm")
        stripped.append(meta["role"])
        forged = b"".join(encode_frame(FrameType.HELLO, seq, msgpack.packb(meta)))
        check = FrameDecoder()  # well-formed: the framing layer has nothing to object to
        check.feed(forged)
        assert check.next_frame() is not None
        return [forged]

    tx, rx = await clone_through(
        random_source[0], old_target[0], to_receiver=strip_aes, to_sender=strip_aes
    )
    assert stripped == ["sender", "receiver"]
    assert isinstance(rx, AuthenticationError) and rx.exit_code == ExitCode.AUTH, rx
    assert "wrong code (a typo?), or someone in the middle" in str(rx)
    assert isinstance(tx, PeerError) and tx.exit_code == ExitCode.AUTH, tx
    assert old_target[0].read_bytes() == old_target[1]
