"""Frame codec: bytes <-> (type, meta, body), with every length checked first.

A p2pclone stream is a sequence of frames.  Each frame is::

    offset  size  field
    0       4     magic        b"P2PC"
    4       1     version      PROTOCOL_VERSION (1)
    5       1     type         FrameType
    6       2     flags        0 (reserved; a non-zero value is an error in version 1)
    8       4     meta_len     bytes of msgpack meta that follow the header
    12      4     body_len     bytes of raw body that follow the meta
    16      8     seq          frame number in this direction, from 0, no gaps
    24      4     header_crc   CRC-32 of bytes 0..23
    28      .     meta         msgpack map (small: <= MAX_META)
    .       .     body         raw bytes (chunk data); never passes through msgpack
    .       8     trailer      xxh3-64 of header + meta + body, little-endian

Once pairing has confirmed the keys, every frame is *sealed*: flags bit 0 is set,
meta and body are encrypted as one AEAD message with the 28-byte header as
associated data, and the trailer is the 16-byte AEAD tag (see p2pclone/crypto.py)::

    header (28, clear) | encrypt(meta || body) | tag (16)

All integers are little-endian.  The decoder trusts nothing after the fixed header
until the header CRC matches, the magic and version are ours and both lengths are
inside the current limits: only then is the rest buffered.  So a hostile or confused
peer can make us allocate at most ``HEADER_SIZE + max_meta + max_body + TRAILER_SIZE``.

The xxh3 trailer of the (few, small) handshake frames is a check against a
corrupted link, not a defence against an attacker: the handshake's integrity comes
from the transcript hash that pairing binds into the keys.

This module is pure: no I/O, no clock, no trio.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

import xxhash

from ..crypto import TAG_SIZE, RecordKey
from ..errors import AuthenticationError, LocalProtocolError, RemoteProtocolError

MAGIC = b"P2PC"
PROTOCOL_VERSION = 1

_HEADER = struct.Struct("<4sBBHIIQ")
_CRC = struct.Struct("<I")
_TRAILER = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size + _CRC.size  # 28
TRAILER_SIZE = _TRAILER.size  # 8 (unsealed frames)
FLAG_SEALED = 0x0001

#: Upper bound of a meta map in any state: metas are a few dozen bytes.
MAX_META = 64 * 1024
#: Largest body a peer may announce before a plan has set the chunk size.
HANDSHAKE_MAX_BODY = 0
#: Largest chunk size p2pclone accepts in a plan (and so the largest body ever).
MAX_CHUNK_SIZE = 64 * 1024 * 1024


class FrameType(enum.IntEnum):
    HELLO = 1
    PLAN = 2
    ACCEPT = 3
    CHUNK = 4
    ZERO = 5
    END = 6
    RESULT = 7
    ERROR = 8
    PAKE = 9
    CONFIRM = 10
    HAVE = 11
    SAME = 12
    ACK = 13
    PATCH = 14
    NAK = 15
    LOST = 16
    GROUP = 17
    REF = 18
    POLL = 19
    REPORT = 20
    EVICT = 21
    LATER = 22


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One decoded frame, before its meta is interpreted."""

    type: FrameType
    seq: int
    meta: bytes
    body: bytes | memoryview
    header: bytes = b""


def _checksum(header: bytes, meta: bytes, body: bytes | memoryview) -> bytes:
    h = xxhash.xxh3_64(header)
    h.update(meta)
    h.update(body)
    return _TRAILER.pack(h.intdigest())


def encode_frame(
    ftype: FrameType,
    seq: int,
    meta: bytes,
    body: bytes | memoryview = b"",
    key: RecordKey | None = None,
) -> list[bytes | memoryview]:
    """Return the frame as a list of buffers to write in order.

    Unsealed, the body is returned as given (not copied), so a chunk goes straight
    from the compressor to the socket; the first buffer is always header + meta
    (what the handshake transcript hashes).  Sealed (``key`` given), the result is
    ``[header, ciphertext || tag]``.
    """
    if len(meta) > MAX_META:
        raise LocalProtocolError(f"frame meta of {len(meta)} bytes exceeds {MAX_META}")
    flags = FLAG_SEALED if key is not None else 0
    head = _HEADER.pack(MAGIC, PROTOCOL_VERSION, int(ftype), flags, len(meta), len(body), seq)
    header = head + _CRC.pack(zlib.crc32(head))
    if key is not None:
        return [header, key.seal(seq, header, meta + bytes(body) if body else meta)]
    return [header + meta, body, _checksum(header, meta, body)]


def _describe_garbage(data: bytes) -> str:
    if data[:4] in (b"GET ", b"POST", b"HTTP", b"PUT ", b"HEAD"):
        return "it looks like HTTP"
    if data[:4] == b"SSH-":
        return "it looks like SSH"
    if data[:3] == b"\x16\x03\x01" or data[:3] == b"\x16\x03\x03":
        return "it looks like TLS"
    return f"first bytes {data[:8].hex(' ')}"


class FrameDecoder:
    """Incremental frame parser.

    Feed bytes with :meth:`feed`; take complete frames with :meth:`next_frame`,
    which returns ``None`` until a whole frame is buffered.  Limits can be tightened
    or loosened between frames (``max_body`` grows once a plan fixes the chunk size).
    """

    def __init__(self, *, max_body: int = HANDSHAKE_MAX_BODY, max_meta: int = MAX_META) -> None:
        self._buf = bytearray()
        self.max_body = max_body
        self.max_meta = max_meta
        self._next_seq = 0
        self._pending: tuple[FrameType, int, int, int, bytes] | None = None
        #: bytes consumed in complete frames (for wire accounting)
        self.bytes_in = 0
        #: set once the peer's key is confirmed: every later frame must be sealed
        self.key: RecordKey | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def in_flight(self) -> tuple[FrameType | None, int, int]:
        """The frame under way: its type (None before its header is read), the bytes of
        it buffered, and its whole size (0 before its header)."""
        if self._pending is None:
            return None, len(self._buf), 0
        ftype, meta_len, body_len, _seq, _header = self._pending
        trailer = TAG_SIZE if self.key is not None else TRAILER_SIZE
        return ftype, len(self._buf), HEADER_SIZE + meta_len + body_len + trailer

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> RawFrame | None:
        """Return the next complete frame, or ``None`` if more bytes are needed.

        Raises:
            RemoteProtocolError: the bytes are not a valid frame (bad magic,
                version, CRC, flags, sequence, length beyond the limits, checksum).
            AuthenticationError: after pairing, a record failed to open (altered,
                replayed, reordered) or arrived unsealed.
        """
        if self._pending is None:
            if len(self._buf) < HEADER_SIZE:
                # Fail fast on a peer that is clearly not p2pclone, without waiting
                # for a whole header that may never come.
                n = min(len(self._buf), 4)
                if n and self._buf[:n] != MAGIC[:n]:
                    raise RemoteProtocolError(
                        "the peer is not speaking the p2pclone protocol "
                        f"({_describe_garbage(bytes(self._buf))}): check the URL and port"
                    )
                return None
            self._pending = self._parse_header(bytes(self._buf[:HEADER_SIZE]))
        ftype, meta_len, body_len, seq, header = self._pending
        trailer_size = TAG_SIZE if self.key is not None else TRAILER_SIZE
        total = HEADER_SIZE + meta_len + body_len + trailer_size
        if len(self._buf) < total:
            return None
        buf = self._buf
        body: bytes | memoryview
        if self.key is not None:
            with memoryview(buf) as view:  # decrypt straight out of the buffer, no copy
                plain = self.key.open(seq, header, view[HEADER_SIZE:total])
            del buf[:total]
            meta, body = plain[:meta_len], memoryview(plain)[meta_len:]
        else:
            meta = bytes(buf[HEADER_SIZE : HEADER_SIZE + meta_len])
            body = bytes(buf[HEADER_SIZE + meta_len : HEADER_SIZE + meta_len + body_len])
            trailer = bytes(buf[total - TRAILER_SIZE : total])
            del buf[:total]
            if trailer != _checksum(header, meta, body):
                raise RemoteProtocolError(
                    f"frame {seq} failed its checksum: the link corrupted data in transit"
                )
        self._pending = None
        self._next_seq += 1
        self.bytes_in += total
        return RawFrame(ftype, seq, meta, body, header)

    def _parse_header(self, header: bytes) -> tuple[FrameType, int, int, int, bytes]:
        magic, version, ftype, flags, meta_len, body_len, seq = _HEADER.unpack_from(header)
        if magic != MAGIC:
            raise RemoteProtocolError(
                "the peer is not speaking the p2pclone protocol "
                f"({_describe_garbage(header)}): check the URL and port"
            )
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"the peer speaks p2pclone protocol version {version} and this program "
                f"speaks version {PROTOCOL_VERSION}: install the same p2pclone release "
                "on both machines"
            )
        (crc,) = _CRC.unpack_from(header, _HEADER.size)
        if crc != zlib.crc32(header[: _HEADER.size]):
            raise RemoteProtocolError("a frame header failed its CRC: the link corrupted data")
        try:
            kind = FrameType(ftype)
        except ValueError:
            raise RemoteProtocolError(f"the peer sent an unknown frame type {ftype}") from None
        expected = FLAG_SEALED if self.key is not None else 0
        if flags == 0 and expected:
            raise AuthenticationError(
                f"frame {seq} arrived unprotected after pairing: someone on the link is "
                "injecting data; the session was stopped"
            )
        if flags != expected:
            raise RemoteProtocolError(f"the peer set unexpected frame flags {flags:#x}")
        if seq != self._next_seq:
            raise RemoteProtocolError(
                f"frame {seq} arrived where frame {self._next_seq} was due: "
                "frames were lost, repeated or reordered"
            )
        if meta_len > self.max_meta:
            raise RemoteProtocolError(
                f"the peer announced {meta_len} bytes of frame meta; the limit is {self.max_meta}"
            )
        if body_len > self.max_body:
            raise RemoteProtocolError(
                f"the peer announced a {kind.name} body of {body_len} bytes; "
                f"the limit here is {self.max_body}"
            )
        return kind, meta_len, body_len, seq, header
