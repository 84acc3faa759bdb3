"""The sans-I/O session object: bytes in, events out; events in, bytes out.

Usage, after h11::

    conn = Connection(Role.RECEIVER, code="7-guitar-remind")
    conn.receive_data(await stream.receive_some())   # b"" means end of stream
    while (event := conn.next_event()) is not NEED_DATA:
        ...
    await stream.send_all(b"".join(conn.send(conn.hello("p2pclone 1.0"))))

Pairing lives here too (it is pure computation): ``pake()`` and ``confirmation()``
make this side's PAKE and CONFIRM events; receiving the peer's PAKE derives the
keys, receiving its CONFIRM checks them (AuthenticationError on a wrong code), and
from our own CONFIRM on, every frame we send is sealed, and from the peer's on,
every frame we receive must be.  The handshake transcript that the keys are bound
to is every HELLO and PAKE frame, header and meta, as it crossed the wire.

Beyond the transition table (:mod:`.state`), the connection enforces what makes a
clone complete and in order: chunks and zero ranges cover the plan exactly once, in
index order, each with the length the plan implies; and it keeps the running root
hash (BLAKE3 over the ordered chunk hashes) that both ends compare at END.  Drivers
hash, compress and write in worker threads; a receiving driver must check every
chunk's data against ``Chunk.digest`` before it writes: that makes the root mean it.
"""

from __future__ import annotations

import enum
import hashlib

from ..crypto import Pairing, SessionKeys, choose_cipher, cpu_has_aes, transcript_update
from ..errors import LocalProtocolError, P2PCloneError, RemoteProtocolError
from .coverage import Coverage
from .fields import SUB_HASH_SIZE
from .frames import MAX_CHUNK_SIZE, FrameDecoder, FrameType, encode_frame
from .freemap import MAX_PLAN_BODY
from .group import Ref
from .messages import (
    Ack,
    Chunk,
    End,
    Error,
    Event,
    Have,
    Later,
    Lost,
    Nak,
    Patch,
    Same,
    Zero,
    decode_event,
    pack_meta,
)
from .pairing import Confirm, Hello, Pake
from .plan import Accept, Plan
from .root import RootHash
from .state import Direction, Role, State, next_state


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes with receive_data()
    CLOSED = "closed"  # the peer closed its end (receive_data(b"") was called)


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED


class Connection:
    """One end of a p2pclone session, for ``role``.

    Args:
        role: which end this is.
        code: the pairing code both ends were given.
        max_chunk_size: the largest chunk size this end accepts in a PLAN; it bounds
            every frame body the peer may send.
        aes: whether this CPU has AES instructions (AES-256-GCM is then offered).
    """

    AES_FEATURE = "aes-gcm"
    #: this end takes LATER runs (a failing source's second pass)
    LATER_FEATURE = "later"

    def __init__(
        self,
        role: Role,
        *,
        code: str,
        max_chunk_size: int = MAX_CHUNK_SIZE,
        aes: bool | None = None,
        seal: bool = True,
    ) -> None:
        """``seal=False`` keeps frames unsealed after pairing: only for a link whose two
        ends are both in this process (an image's recorder or player), where nobody can
        be in the middle and sealing would only cost time.  Both ends must agree."""
        self.role = role
        self._seal = seal
        self._pairing = Pairing(code, sender=role is Role.SENDER)
        self._aes = cpu_has_aes() if aes is None else aes
        self._transcript = hashlib.sha256()
        self.keys: SessionKeys | None = None
        #: the peer proved it holds the code (its CONFIRM checked): what it says from
        #: now on is authenticated; before, it could be anyone
        self.peer_confirmed = False
        self._error_sent = False
        self.state = State.START
        self.max_chunk_size = max_chunk_size
        self.plan: Plan | None = None
        self.peer_hello: Hello | None = None
        self._decoder = FrameDecoder()
        self._sealing = False
        self._peer_pake: bytes | None = None
        self._send_seq = 0
        self._eof = False
        self._cov: Coverage | None = None  # from the PLAN on
        #: the receiver announced HAVE frames (resume or delta) ...
        self.have_expected = False
        #: ... and they cover chunks [0, have_covered) so far
        self.have_covered = 0
        #: sub-block size of a delta (0: none), from ACCEPT
        self.sub_size = 0
        #: chunks a NAK asked for and no repair has answered yet
        self._repairs: set[int] = set()
        self.bytes_out = 0

    # -- accounting ----------------------------------------------------------

    @property
    def bytes_in(self) -> int:
        """Bytes of complete frames received so far."""
        return self._decoder.bytes_in

    @property
    def bytes_arrived(self) -> int:
        """Bytes received so far, a frame under way included."""
        return self._decoder.bytes_in + self._decoder.buffered

    def chunk_arriving(self) -> tuple[int, int]:
        """A CHUNK frame under way: (bytes of it arrived, its size); (0, 0) for none."""
        ftype, have, size = self._decoder.in_flight()
        return (have, size) if ftype == FrameType.CHUNK else (0, 0)

    @property
    def chunks_done(self) -> int:
        """Chunks covered so far (sent or received, data and zero alike)."""
        return self._cov.next_index if self._cov else 0

    def root_digest(self) -> bytes:
        """BLAKE3 over the ordered chunk hashes seen so far."""
        return (self._cov.root if self._cov else RootHash()).digest()

    @property
    def later(self) -> set[int]:
        """Chunks a LATER run left for after the first pass, not yet sent."""
        return self._cov.root.holes if self._cov else set()

    @property
    def peer_takes_later(self) -> bool:
        """The peer's HELLO offers LATER (the sender may leave failing chunks for later)."""
        return self.peer_hello is not None and self.LATER_FEATURE in self.peer_hello.features

    @property
    def can_send_error(self) -> bool:
        """An ERROR frame may still go out (once; not after a clean finish)."""
        return self.state is not State.DONE and not self._error_sent

    @property
    def cipher(self) -> str | None:
        return self.keys.cipher if self.keys else None

    # -- handshake events --------------------------------------------------------

    def hello(self, software: str, features: tuple[str, ...] = ()) -> Hello:
        features = (*features, self.LATER_FEATURE)
        if self._aes:
            features = (*features, self.AES_FEATURE)
        return Hello(role=self.role.value, software=software, features=features)

    def pake(self) -> Pake:
        return Pake(message=self._pairing.message)

    def confirmation(self) -> Confirm:
        if self.keys is None:
            raise LocalProtocolError("no keys yet: exchange PAKE messages first")
        return Confirm(mac=self.keys.my_confirmation())

    # -- sending -------------------------------------------------------------

    def send(self, event: Event) -> list[bytes | memoryview]:
        """Check that ``event`` may be sent now and return the frame's buffers.

        Raises:
            LocalProtocolError: the event is illegal in this state or breaks the plan.
        """
        if isinstance(event, Error) and self.state is State.ERROR and not self._error_sent:
            new = State.ERROR  # one ERROR to tell the peer why we stopped
        else:
            new = self._transition(Direction.SEND, event)
        try:
            self._check_ordering(event, LocalProtocolError)
        except LocalProtocolError:
            self.state = State.ERROR
            raise
        body = event.body if isinstance(event, (Chunk, Patch, Plan)) else b""
        key = self.keys.send if self._sealing and self.keys is not None else None
        buffers = encode_frame(event.TYPE, self._send_seq, pack_meta(event), body, key)
        self._send_seq += 1
        self.bytes_out += sum(len(b) for b in buffers)
        self.state = new
        self._error_sent |= isinstance(event, Error)
        if isinstance(event, (Hello, Pake)):
            transcript_update(self._transcript, bytes(buffers[0]))
            if isinstance(event, Pake) and self.role is Role.RECEIVER:
                try:
                    self._derive_keys()
                except P2PCloneError:
                    self.state = State.ERROR
                    raise
        elif isinstance(event, Confirm):
            self._sealing = self._seal  # everything after our CONFIRM is sealed
        return buffers

    def _derive_keys(self) -> None:
        """Both PAKE messages are in the transcript: derive the session keys."""
        assert self._peer_pake is not None and self.peer_hello is not None
        theirs = self.AES_FEATURE in self.peer_hello.features
        self.keys = self._pairing.finish(
            self._peer_pake, self._transcript.digest(), choose_cipher(self._aes, theirs)
        )

    # -- receiving -----------------------------------------------------------

    @property
    def sealed(self) -> bool:
        """Frames are sealed after pairing: a real link (not an in-process pipe)."""
        return self._seal

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer.  ``b""`` means the peer closed its end."""
        if not data:
            self._eof = True
        else:
            self._decoder.feed(data)

    def next_event(self) -> Event | Sentinel:
        """Return the next event, ``NEED_DATA``, or ``CLOSED`` (end of stream, or the
        session is in ERROR and nothing more will be delivered).

        Raises:
            RemoteProtocolError: the peer broke the protocol; the state is ERROR.
            AuthenticationError: wrong code, or a record was tampered with.
        """
        if self.state is State.ERROR:
            return CLOSED  # after an ERROR (sent, received or detected) nothing more counts
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                if self._eof:
                    return CLOSED
                return NEED_DATA
            event = decode_event(frame)
            new = self._transition(Direction.RECV, event)
            self._check_ordering(event, RemoteProtocolError)
            if isinstance(event, (Hello, Pake)):
                transcript_update(self._transcript, frame.header + frame.meta)
                if isinstance(event, Pake):
                    self._peer_pake = event.message
                    if self.role is Role.SENDER:
                        self._derive_keys()
            elif isinstance(event, Confirm):
                assert self.keys is not None
                self.keys.check_peer_confirmation(event.mac)
                self.peer_confirmed = True
                if self._seal:
                    self._decoder.key = self.keys.recv  # everything after it is sealed
                if self.role is Role.RECEIVER:  # next: the PLAN, its body the used map
                    self._decoder.max_body = MAX_PLAN_BODY
        except P2PCloneError:
            self.state = State.ERROR
            raise
        self.state = new
        return event

    # -- internals -----------------------------------------------------------

    def _transition(self, direction: Direction, event: Event) -> State:
        new = next_state(self.role, self.state, direction, event.TYPE)
        if new is None:
            exc = LocalProtocolError if direction is Direction.SEND else RemoteProtocolError
            who = "we" if direction is Direction.SEND else "the peer"
            was, self.state = self.state, State.ERROR
            raise exc(
                f"{who} sent {event.TYPE.name} while the {self.role.value} was in state "
                f"{was.value}: the session is out of step"
            )
        return new

    def _check_ordering(
        self, event: Event, exc: type[LocalProtocolError] | type[RemoteProtocolError]
    ) -> None:
        """Apply the per-message rules that the transition table cannot express."""
        match event:
            case Hello():
                if exc is RemoteProtocolError:
                    if event.role != self.role.peer.value:
                        raise RemoteProtocolError(
                            f"the peer is also a {event.role}: run `p2pclone "
                            f"{'receive' if self.role is Role.SENDER else 'send'}` on the "
                            "other machine"
                        )
                    self.peer_hello = event
            case Plan():
                self._take_plan(event, exc)
            case Nak():
                if any(i >= self._require_plan().chunk_count for i in event.indices):
                    raise exc("NAK names a chunk beyond the plan")
                self._repairs.update(event.indices)
            case Chunk() if self.state in (State.FINISH, State.AWAIT_RESULT):
                self._check_repair(event, exc)
            case Chunk() | Patch() | Zero() | Ref() | Same() | Lost() | Later():
                self._coverage().take(event, exc)
            case Accept():
                self.have_expected = event.have
                self.sub_size = self._coverage().sub_size = event.sub
                if event.cut and not 0 < event.cut < self._require_plan().source_size:
                    raise exc(f"ACCEPT cuts the source at byte {event.cut}, outside it")
            case Have():
                self._check_have(event, exc)
            case Ack():
                if event.durable > self._require_plan().chunk_count:
                    raise exc(f"ACK of {event.durable} chunks exceeds the plan")
            case End():
                self._coverage().end(event.chunk_count, exc)
            case _:
                pass  # the rest: the transition table says all there is to check

    def _take_plan(
        self, event: Plan, exc: type[LocalProtocolError] | type[RemoteProtocolError]
    ) -> None:
        if event.chunk_size > self.max_chunk_size:
            raise exc(
                f"the plan's chunk size of {event.chunk_size} bytes exceeds "
                f"this end's limit of {self.max_chunk_size}"
            )
        self.plan = event
        self._cov = Coverage(event)
        if self.role is Role.RECEIVER:
            # From now on the only bodies are chunks, never longer than a chunk:
            # a compressed body that isn't smaller than the plain bytes goes raw.
            self._decoder.max_body = event.chunk_size

    def _check_repair(
        self, event: Chunk, exc: type[LocalProtocolError] | type[RemoteProtocolError]
    ) -> None:
        if event.index not in self._repairs:  # a repair must answer a NAK
            raise exc(f"chunk {event.index} was sent again although no NAK asked for it")
        self._repairs.discard(event.index)
        plan = self._require_plan()
        if event.length != plan.chunk_length(event.index):
            raise exc(f"repair of chunk {event.index} has the wrong length")

    def _check_have(
        self, event: Have, exc: type[LocalProtocolError] | type[RemoteProtocolError]
    ) -> None:
        plan = self._require_plan()
        if not self.have_expected:
            raise exc("HAVE was sent although the ACCEPT frame announced none")
        if event.index != self.have_covered or event.index + event.count > plan.chunk_count:
            raise exc(
                f"HAVE for chunks {event.index}..{event.index + event.count - 1} arrived "
                f"where chunk {self.have_covered} was due"
            )
        subs = (
            sum(
                -(-plan.chunk_length(i) // self.sub_size)
                for i in range(event.index, event.index + event.count)
            )
            if self.sub_size
            else 0
        )
        if len(event.subs) != subs * SUB_HASH_SIZE:
            raise exc(f"HAVE for chunk {event.index} carries the wrong number of sub-hashes")
        self.have_covered += event.count

    def _require_plan(self) -> Plan:
        if self.plan is None:  # unreachable through the transition table
            raise LocalProtocolError("no plan yet")
        return self.plan

    def _coverage(self) -> Coverage:
        if self._cov is None:  # unreachable through the transition table
            raise LocalProtocolError("no plan yet")
        return self._cov
