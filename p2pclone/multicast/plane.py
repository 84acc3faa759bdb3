"""Both ends of the multicast data plane, on trio: sealed fragments in, slices out.

A slice's payload is a run of chunk entries, each ``index u64 | length u32 | encoding u8
| body length u32 | body``.  Fragments are sealed with AES-256-GCM under the group key;
the nonce is the session's low 32 bits, the slice and the fragment number (a repair
is the same fragment again: same nonce, same bytes).  Receivers accept a chunk only if
its BLAKE3 matches the hash their own authenticated control connection gave for it.
"""

from __future__ import annotations

import socket
import struct
from collections import deque

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from transports.multicast import receive_datagrams

from ..protocol.messages import Chunk
from .dataplane import (
    DGRAM_HEADER,
    FRAGMENT,
    Assembler,
    DatagramError,
    Fragment,
    bitmap,
    encode_header,
    fragment_count,
    read_header,
)

ENTRY = struct.Struct("<QIBI")


_NONCE = struct.Struct("<III")


def nonce(session: int, slice_no: int, index: int) -> bytes:
    return _NONCE.pack(session & 0xFFFFFFFF, slice_no, index)


def _sealed(
    aead: AESGCM,
    session: int,
    slice_no: int,
    index: int,
    count: int,
    length: int,
    body: bytes | memoryview,
) -> bytes:
    """One datagram: the clear header, then the payload sealed with it as AAD."""
    head = encode_header(session, slice_no, index, count, length)
    return head + aead.encrypt(nonce(session, slice_no, index), body, head)


def seal(aead: AESGCM, frag: Fragment) -> bytes:
    return _sealed(
        aead, frag.session, frag.slice, frag.index, frag.count, frag.slice_len, frag.payload
    )


def seal_slice(aead: AESGCM, session: int, slice_no: int, data: bytes) -> list[bytes]:
    """Every fragment of a slice, sealed: ``seal`` over ``split``, without the objects
    in between (this runs once per datagram: ~60 000 times for 85 MiB)."""
    count = fragment_count(len(data))
    view = memoryview(data)
    return [
        _sealed(
            aead, session, slice_no, k, count, len(data), view[k * FRAGMENT : (k + 1) * FRAGMENT]
        )
        for k in range(count)
    ]


def pack_entry(chunk: Chunk) -> bytes:
    return ENTRY.pack(chunk.index, chunk.length, chunk.encoding, len(chunk.body)) + bytes(
        chunk.body
    )


def unpack_entries(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(index, length, encoding, body) of every entry of a slice."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + ENTRY.size > len(data):
            raise DatagramError("a slice ends inside an entry header")
        index, length, encoding, n = ENTRY.unpack_from(data, pos)
        pos += ENTRY.size
        if pos + n > len(data):
            raise DatagramError("a slice ends inside an entry")
        out.append((index, length, encoding, data[pos : pos + n]))
        pos += n
    return out


class ReceivePlane:
    """A receiver's end: the group socket, the slices being assembled, what is due."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.session: int | None = None
        self.aead: AESGCM | None = None
        self.expected: dict[int, dict[int, bytes]] = {}  # slice -> {chunk: digest}
        # slice -> (fragments, length) as the sender's REF gave them
        self.shapes: dict[int, tuple[int, int]] = {}
        # slice -> (fragments, slice length) -> its assembly: a fragment forged with
        # the group key and other numbers starts an assembly of its own, so it cannot
        # keep the sender's fragments out of theirs (before the REF says which is whose)
        self.asm: dict[int, dict[tuple[int, int], Assembler]] = {}
        self.done: set[int] = set()
        self.ready: deque[tuple[int, bytes]] = deque()  # complete, not yet handed over
        self.bytes_in = 0  # datagram bytes received (the group's data, as this receiver saw it)
        self._complete: trio.MemorySendChannel[tuple[int, bytes]] | None = None

    def start(self, key: bytes, session: int) -> None:
        self.aead = AESGCM(key)
        self.session = session

    def expect(self, slice_no: int, fragments: int, length: int, chunks: dict[int, bytes]) -> None:
        self.shapes[slice_no] = (fragments, length)
        for shape in [k for k in self.asm.get(slice_no, {}) if k != (fragments, length)]:
            del self.asm[slice_no][shape]  # begun by datagrams that were not the sender's
        self.expected.setdefault(slice_no, {}).update(chunks)

    def _take(self, data: bytes) -> tuple[int, bytes] | None:
        """One datagram; a slice's bytes if it completes one.  (Once per datagram:
        checks that need no decryption come first, and a repeat is never decrypted.)"""
        if self.session is None or self.aead is None:
            return None
        try:
            sl, idx, count, slen = read_header(data, self.session)
        except DatagramError:
            return None
        if sl in self.done or self.shapes.get(sl, (count, slen)) != (count, slen):
            return None
        shapes = self.asm.get(sl)
        asm = shapes.get((count, slen)) if shapes else None
        if asm is not None and not asm.fits(idx, count, slen):
            return None  # a repeat
        try:
            plain = self.aead.decrypt(
                nonce(self.session, sl, idx),
                memoryview(data)[DGRAM_HEADER:],
                data[:DGRAM_HEADER],
            )
        except InvalidTag:
            return None  # not sealed with our group key: ignored
        if shapes is None:
            shapes = self.asm[sl] = {}
        if asm is None:
            asm = shapes[(count, slen)] = Assembler(sl, count, slen)
        if not asm.put(idx, plain):
            return None
        try:
            whole = asm.data()
        except DatagramError:  # forged lengths (only a group-key holder can): drop them
            del shapes[(count, slen)]
            return None
        del self.asm[sl]
        self.done.add(sl)
        return sl, whole

    def drain(self) -> None:
        """Take everything waiting in the socket now, without blocking; completed
        slices go to ``ready``, where whoever hands them to the writers takes them."""
        while True:
            datagrams = receive_datagrams(self.sock)
            if not datagrams:
                return
            for data in datagrams:
                self.bytes_in += len(data)
                got = self._take(data)
                if got is not None:
                    self.ready.append(got)

    def missing(self, slice_no: int) -> bytes:
        """The bitmap a REPORT carries: b"" when the slice is complete."""
        if slice_no in self.done:
            return b""
        n, length = self.shapes.get(slice_no, (0, 0))
        asm = self.asm.get(slice_no, {}).get((n, length))
        return bitmap(asm.missing() if asm else list(range(n)), n)

    async def run(self) -> None:
        """Read datagrams until cancelled (completed slices collect in ``ready``: the
        control connection hands them over, once its REF frames have said what they
        must hold — a slice can arrive whole before the REFs that announce it)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self.drain()

    def take_ready(self, upto: int | None) -> list[tuple[int, bytes]]:
        """The completed slices numbered ``upto`` or less (all if None), in order."""
        out = [item for item in self.ready if upto is None or item[0] <= upto]
        self.ready = deque(item for item in self.ready if not (upto is None or item[0] <= upto))
        return out
