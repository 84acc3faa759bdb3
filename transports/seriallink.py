"""A reliable byte stream over a lossy serial line: the link layer, sans I/O.

A serial line delivers bytes, not frames: it can flip bits, drop bytes, and insert
garbage (a cable plugged in mid-transfer, a noisy adapter).  This layer turns it into
an ordered, lossless byte stream, as Kermit and ZMODEM did for files:

* **Framing that resynchronises.**  Each frame is COBS-encoded and ends with a 0x00
  delimiter, so after any garbage the decoder is back in step at the next delimiter.
* **Integrity.**  A CRC-32 over every frame; a frame that fails it is dropped.
* **Selective repeat.**  DATA frames carry a sequence number; every frame carries the
  cumulative ACK (next sequence expected) and a SACK bitmap of the 32 after it, so the
  sender retransmits exactly what is missing: at once when a later frame is
  acknowledged past a gap (a NAK in effect), or after a retransmission timeout.  Out-of-
  order frames inside the window are kept, not thrown away.
* **Adaptive frame size.**  A loss halves the payload size (down to MIN_PAYLOAD: short
  frames survive noise); a run of clean frames doubles it (up to MAX_PAYLOAD: long
  frames waste less on headers).
* **Liveness.**  An idle side sends a bare ACK every KEEPALIVE seconds; a side that has
  heard nothing for DEAD_AFTER seconds declares the link dead.  A serial line has no
  end of file: FIN is a frame, delivered in order like data.

Frame (before COBS)::

    type u8 | seq u32 | ack u32 | sack u32 | off u16 | total u16 | payload | crc32 u32

(little-endian).  ``off``/``total`` let a frame that must be sent again after the
payload size shrank go out as several fragments of the new size: the receiver puts
frame ``seq`` together from its fragments before using it.

Pure: time is passed in as ``now`` (seconds), bytes in and out are the caller's.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from cobs import cobs

DATA, ACK, FIN = 1, 2, 3
_HEAD = struct.Struct("<BIIIHH")
_CRC = struct.Struct("<I")
OVERHEAD = _HEAD.size + _CRC.size  # 21 bytes a frame, before COBS and the delimiter

MIN_PAYLOAD = 64
MAX_PAYLOAD = 4096
WINDOW = 32  # frames in flight; the SACK bitmap covers exactly this many
RTO = 1.0  # initial retransmission timeout; then SRTT + 4 RTTVAR (RFC 6298), Karn's rule
MIN_RTO, MAX_RTO = 0.2, 30.0
KEEPALIVE = 1.0
DEAD_AFTER = 10.0
GROW_AFTER = 16  # clean frames in a row before the payload size doubles


class LinkDead(Exception):
    """Nothing was heard from the peer for DEAD_AFTER seconds."""


@dataclass
class _Outstanding:
    kind: int
    payload: bytes
    sent_at: float
    order: int  # when it (last) went out, counted in frames: orders loss detection
    sends: int = 1


@dataclass
class LinkStats:
    frames_sent: int = 0
    retransmits: int = 0
    frames_bad: int = 0  # failed COBS or CRC: dropped
    payload_sent: int = 0
    wire_sent: int = 0
    payload_size: list[int] = field(default_factory=list)


class Link:
    """One end of the link.  Feed it line bytes and time; it gives bytes to write."""

    def __init__(self, *, payload: int = 512, rto: float = RTO, now: float = 0.0) -> None:
        self.payload = max(MIN_PAYLOAD, min(MAX_PAYLOAD, payload))
        self.rto = rto
        self._srtt: float | None = None
        self._last_cut = -1e9
        self._rttvar = 0.0
        self.stats = LinkStats()
        # sending
        self._queue = bytearray()  # application bytes not yet framed
        self._given = 0  # application bytes ever given to send()
        self._fin_queued = False
        self._fin_seq: int | None = None
        self._next_seq = 0
        self._order = 0
        self._unacked: dict[int, _Outstanding] = {}
        self._clean = 0
        # receiving
        self._expected = 0
        self._ooo: dict[int, tuple[int, bytes]] = {}
        self._frags: dict[int, tuple[bytearray, set[int]]] = {}
        self._inbox = bytearray()
        self.eof = False  # the peer's FIN was delivered
        self._ack_due = False
        self._rx = bytearray()
        self._heard = now
        self._spoke = now

    # -- application side -------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self._fin_queued:
            raise ValueError("send() after finish()")
        self._queue += data
        self._given += len(data)

    def finish(self) -> None:
        """No more data: the peer will read end-of-stream after what was sent."""
        self._fin_queued = True

    def read(self, max_bytes: int | None = None) -> bytes:
        n = len(self._inbox) if max_bytes is None else min(max_bytes, len(self._inbox))
        out = bytes(self._inbox[:n])
        del self._inbox[:n]
        return out

    @property
    def readable(self) -> int:
        return len(self._inbox)

    @property
    def idle(self) -> bool:
        """Everything queued (FIN included) has been sent and acknowledged."""
        return not self._queue and not self._unacked and not self._fin_pending

    @property
    def window_open(self) -> bool:
        """More application data would be framed and sent now."""
        return len(self._unacked) < WINDOW

    @property
    def buffered(self) -> int:
        return len(self._queue)

    @property
    def acknowledged(self) -> int:
        """Application bytes the far end has acknowledged: all given to the link but
        those queued, or sent and not acknowledged yet."""
        waiting = len(self._queue) + sum(len(o.payload) for o in self._unacked.values())
        return self._given - waiting

    # -- line side --------------------------------------------------------------

    def receive_line(self, raw: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes read from the line (any amount; b"" is just nothing, never EOF)."""
        self._rx += raw
        while True:
            end = self._rx.find(0)
            if end < 0:
                if len(self._rx) > 4 * (MAX_PAYLOAD + OVERHEAD):  # garbage with no delimiter
                    del self._rx[: len(self._rx) - (MAX_PAYLOAD + OVERHEAD)]
                return
            encoded = bytes(self._rx[:end])
            del self._rx[: end + 1]
            if encoded:
                self._frame(encoded, now)

    def _frame(self, encoded: bytes, now: float) -> None:
        try:
            frame = cobs.decode(encoded)
        except cobs.DecodeError:
            self.stats.frames_bad += 1
            return
        if len(frame) < OVERHEAD or len(frame) > MAX_PAYLOAD + OVERHEAD:
            self.stats.frames_bad += 1
            return
        (crc,) = _CRC.unpack_from(frame, len(frame) - _CRC.size)
        if zlib.crc32(frame[: -_CRC.size]) != crc:
            self.stats.frames_bad += 1
            return
        kind, seq, ack, sack, off, total = _HEAD.unpack_from(frame)
        payload = frame[_HEAD.size : -_CRC.size]
        self._heard = now
        self._on_ack(ack, sack, now)
        if kind in (DATA, FIN):
            self._ack_due = True
            if self._expected <= seq < self._expected + WINDOW and seq not in self._ooo:
                if len(payload) < total:  # a fragment: assemble the frame first
                    whole = self._assemble(seq, off, total, payload)
                    if whole is None:
                        return
                    payload = whole
                self._ooo[seq] = (kind, payload)
                while self._expected in self._ooo:
                    kind_, data = self._ooo.pop(self._expected)
                    self._frags.pop(self._expected, None)
                    self._expected += 1
                    if kind_ == FIN:
                        self.eof = True
                    else:
                        self._inbox += data

    def _assemble(self, seq: int, off: int, total: int, piece: bytes) -> bytes | None:
        buf, have = self._frags.setdefault(seq, (bytearray(total), set()))
        if len(buf) != total or off + len(piece) > total:
            return None
        buf[off : off + len(piece)] = piece
        have.update(range(off, off + len(piece)))
        if len(have) < total:
            return None
        del self._frags[seq]
        return bytes(buf)

    def _on_ack(self, ack: int, sack: int, now: float) -> None:
        acked = [
            s
            for s in self._unacked
            if s < ack or (ack < s <= ack + WINDOW and sack >> (s - ack - 1) & 1)
        ]
        latest = -1  # the most recently sent frame this ACK confirms
        for s in acked:
            out = self._unacked.pop(s)
            latest = max(latest, out.order)
            if out.sends == 1:  # Karn: only frames sent once time the round trip
                self._clean += 1
                self._sample_rtt(now - out.sent_at)
        if self._clean >= GROW_AFTER:
            self._clean = 0
            self.payload = min(MAX_PAYLOAD, self.payload * 2)
        # The line keeps order: a frame sent before one that has now arrived, and not
        # itself acknowledged, was lost.  Resend it at once (a NAK in effect).
        for out in self._unacked.values():
            if out.order < latest and out.sent_at >= 0:
                self._lost(now)
                out.sent_at = -1.0  # due at once

    def _sample_rtt(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self._srtt + 4 * self._rttvar))

    def _lost(self, now: float | None = None) -> None:
        """A frame was lost: shrink the frames, but once per round trip at most (one
        burst of noise is one event, however many frames it took with it)."""
        self._clean = 0
        if now is not None and now - self._last_cut < (self._srtt or self.rto):
            return
        if now is not None:
            self._last_cut = now
        self.payload = max(MIN_PAYLOAD, self.payload // 2)

    @property
    def dead_at(self) -> float:
        """When the peer counts as dead if nothing more is heard."""
        return self._heard + DEAD_AFTER

    def check_alive(self, now: float) -> None:
        """Raises LinkDead if the peer has been silent for DEAD_AFTER seconds."""
        if now - self._heard > DEAD_AFTER:
            raise LinkDead(f"nothing heard from the other end for {DEAD_AFTER:.0f} s")

    def data_to_send(self, now: float) -> bytes:
        """Wire bytes to write now: retransmissions, new frames, a due ACK."""
        self.check_alive(now)
        out = bytearray()
        for seq, o in sorted(self._unacked.items()):
            if o.sent_at < 0 or now - o.sent_at >= self.rto * min(o.sends, 4):
                if o.sent_at >= 0:  # a timeout, not a fast retransmit: also a loss
                    self._lost(now)
                o.sent_at, o.sends, o.order = now, o.sends + 1, self._order
                self._order += 1
                self.stats.retransmits += 1
                step = self.payload  # frames too long for a noisy line go in pieces
                for off in range(0, max(1, len(o.payload)), step):
                    out += self._encode(
                        o.kind, seq, o.payload[off : off + step], off, len(o.payload)
                    )
        while len(self._unacked) < WINDOW and (self._queue or self._fin_pending):
            if self._queue:
                payload = bytes(self._queue[: self.payload])
                del self._queue[: len(payload)]
                kind = DATA
            else:
                payload, kind = b"", FIN
                self._fin_seq = self._next_seq
            self._unacked[self._next_seq] = _Outstanding(kind, payload, now, self._order)
            self._order += 1
            self.stats.payload_sent += len(payload)
            out += self._encode(kind, self._next_seq, payload)
            self._next_seq += 1
        if (self._ack_due or now - self._spoke >= KEEPALIVE) and not out:
            out += self._encode(ACK, 0, b"")
        if out:
            self._spoke = now
            self._ack_due = False
        self.stats.wire_sent += len(out)
        return bytes(out)

    @property
    def _fin_pending(self) -> bool:
        return self._fin_queued and self._fin_seq is None

    def next_deadline(self, now: float) -> float:
        """When data_to_send() may next have something to say, given no new input."""
        deadlines = [self._spoke + KEEPALIVE, self._heard + DEAD_AFTER]
        for o in self._unacked.values():
            deadlines.append(now if o.sent_at < 0 else o.sent_at + self.rto * min(o.sends, 4))
        if self._ack_due or (self._queue and len(self._unacked) < WINDOW):
            deadlines.append(now)
        return min(deadlines)

    def _encode(
        self, kind: int, seq: int, payload: bytes, off: int = 0, total: int | None = None
    ) -> bytes:
        sack = 0
        for k in range(WINDOW):
            if self._expected + 1 + k in self._ooo:
                sack |= 1 << k
        total = len(payload) if total is None else total
        head = _HEAD.pack(kind, seq, self._expected, sack, off, total)
        body = head + payload
        frame = body + _CRC.pack(zlib.crc32(body))
        self.stats.frames_sent += 1
        encoded: bytes = cobs.encode(frame)
        return encoded + b"\0"
