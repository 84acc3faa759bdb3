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

from p2pclone.transports.multicast import receive_datagrams

from ..errors import RemoteProtocolError
from ..protocol import Chunk, bitmap
from ..protocol.dataplane import (
    DGRAM_HEADER,
    FRAGMENT,
    MAX_FRAGMENTS,
    Assembler,
    DatagramError,
    Fragment,
    encode_header,
    fragment_count,
    fragment_size,
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


#: A receiver holds fragments of a slice its control connection has not announced (no
#: REF yet: datagrams can overtake the REF sent before them) only this many slices
#: past the last one announced or polled.  The sender has at most IN_FLIGHT (3) slices
#: in their repair rounds, and the next one going out, before this member has answered
#: a POLL; a slice further ahead is not the sender's, or is repaired after its REF.
AHEAD_SLICES = 8
#: ...and only this many bytes of them in all (about six slices of SLICE_BYTES, 4 MiB),
#: counting OVERHEAD per fragment so that empty forged ones are not free.
AHEAD_BYTES = 24 << 20
OVERHEAD = 64
TAG = 16  # the AEAD tag after each fragment's payload


class ReceivePlane:
    """A receiver's end: the group socket, the slices being assembled, what is due.

    Only the REF frames from the sealed control connection say what a slice is (its
    fragment count and length): a datagram never completes a slice that has not been
    announced, and fragments of unannounced slices are held only a few slices ahead
    and within a byte budget (AHEAD_SLICES, AHEAD_BYTES), so whoever holds the group
    key can neither pin a slice with a forged shape nor fill the receiver's memory.
    """

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
        self.horizon = -1  # the last slice the control connection announced or polled
        self.ahead_bytes = 0  # held for slices not announced (yet), OVERHEAD included
        self.done: set[int] = set()
        self.ready: deque[tuple[int, bytes]] = deque()  # complete, not yet handed over
        self.bytes_in = 0  # datagram bytes received (the group's data, as this receiver saw it)
        self._complete: trio.MemorySendChannel[tuple[int, bytes]] | None = None

    def start(self, key: bytes, session: int) -> None:
        self.aead = AESGCM(key)
        self.session = session

    def expect(self, slice_no: int, fragments: int, length: int, chunks: dict[int, bytes]) -> None:
        """A REF: slice ``slice_no`` is ``fragments`` datagrams, ``length`` bytes, and
        holds ``chunks``.  The first REF of a slice fixes its shape; if the fragments
        of that shape are all here already, the slice is complete now.

        Raises:
            RemoteProtocolError: a shape no sender makes, or one that changed.
        """
        shape = (fragments, length)
        if fragments != max(1, -(-length // FRAGMENT)) or fragments > MAX_FRAGMENTS:
            raise RemoteProtocolError(
                f"the sender's REF for multicast slice {slice_no} says {fragments} fragments "
                f"for {length} bytes"
            )
        first = slice_no not in self.shapes
        if self.shapes.setdefault(slice_no, shape) != shape:
            raise RemoteProtocolError(
                f"the sender's REF frames for multicast slice {slice_no} disagree on its size"
            )
        self.expected.setdefault(slice_no, {}).update(chunks)
        if not first:
            return
        self._advance(slice_no)
        held = self.asm.get(slice_no, {})
        asm = held.get(shape)
        for other in [k for k in held if k != shape]:
            self._drop(slice_no, other)  # begun by datagrams that were not the sender's
        if asm is not None:
            self.ahead_bytes -= asm.size + OVERHEAD * asm.held
            asm.announced = True
            if asm.complete:
                got = self._finish(slice_no, asm)
                if got is not None:
                    self.ready.append(got)

    def polled(self, slice_no: int) -> None:
        """A POLL: every REF of ``slice_no`` came before it, so an unannounced slice up
        to it will never be announced (its fragments, if any, are dropped)."""
        self._advance(slice_no)

    def _advance(self, slice_no: int) -> None:
        self.horizon = max(self.horizon, slice_no)
        for sl in [s for s in self.asm if s <= self.horizon and s not in self.shapes]:
            for shape in list(self.asm.get(sl, {})):
                self._drop(sl, shape)

    def _drop(self, slice_no: int, shape: tuple[int, int]) -> None:
        asm = self.asm[slice_no].pop(shape)
        if not asm.announced:
            self.ahead_bytes -= asm.size + OVERHEAD * asm.held
        if not self.asm[slice_no]:
            del self.asm[slice_no]

    def _finish(self, slice_no: int, asm: Assembler) -> tuple[int, bytes] | None:
        try:
            whole = asm.data()
        except DatagramError:  # cannot happen with the sizes checked; never trusted
            self._drop(slice_no, (asm.count, asm.slice_len))
            return None
        del self.asm[slice_no]
        self.done.add(slice_no)
        return slice_no, whole

    def _take(self, data: bytes) -> tuple[int, bytes] | None:
        """One datagram; a slice's bytes if it completes one.  (Once per datagram:
        checks that need no decryption come first, and a repeat is never decrypted.)"""
        if self.session is None or self.aead is None:
            return None
        try:
            sl, idx, count, slen = read_header(data, self.session)
        except DatagramError:
            return None
        if sl in self.done or len(data) != DGRAM_HEADER + fragment_size(idx, slen) + TAG:
            return None
        shape = self.shapes.get(sl)
        if shape is None:
            # Not announced (yet): held a few slices ahead, within the byte budget
            if not self.horizon < sl <= self.horizon + AHEAD_SLICES:
                return None
            if self.ahead_bytes + len(data) + OVERHEAD > AHEAD_BYTES:
                return None
        elif shape != (count, slen):
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
            asm.announced = shape is not None
        complete = asm.put(idx, plain)
        if shape is None:
            self.ahead_bytes += len(plain) + OVERHEAD
            return None  # only the REF says what the slice is, and whether it is whole
        return self._finish(sl, asm) if complete else None

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
        control connection hands them over at the POLL, once its REF frames have said
        what they must hold)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self.drain()

    def take_ready(self, upto: int | None) -> list[tuple[int, bytes]]:
        """The completed slices numbered ``upto`` or less (all if None), in order."""
        out = [item for item in self.ready if upto is None or item[0] <= upto]
        self.ready = deque(item for item in self.ready if not (upto is None or item[0] <= upto))
        return out
