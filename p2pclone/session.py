"""What both drivers share: a framed channel over a trio stream, and the reports
they give the CLI.

``Channel`` pairs a sans-I/O :class:`~p2pclone.protocol.Connection` with a
``trio.abc.Stream``: it writes the frames the connection produces and feeds it what
the stream yields, mapping stream failures to :class:`TransportError`.

Drivers never print: they call ``report(event)`` with the dataclasses below, and the
CLI decides how to show them (a live display, JSON lines, or nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from p2pclone.transports import delivered, link_errors

from . import __version__
from .errors import (
    IntegrityError,
    LocalProtocolError,
    P2PCloneError,
    PeerError,
    ProtocolError,
    SafetyError,
    TransportError,
)
from .protocol import (
    CLOSED,
    Confirm,
    Connection,
    Error,
    Event,
    Have,
    Hello,
    Pake,
    Plan,
    Role,
    Sentinel,
)
from .units import merged
from .volumes.extents import Extents

RECEIVE_SIZE = 256 * 1024
SOFTWARE = f"p2pclone {__version__}"
E = TypeVar("E")


# -- reports to the CLI ---------------------------------------------------------


#: how often a session reports its progress (--json prints it at most once a second)
TICK = 0.25


@dataclass(frozen=True, slots=True)
class Listening:
    url: str
    code: str


@dataclass(frozen=True, slots=True)
class Connected:
    url: str


@dataclass(frozen=True, slots=True)
class Planned:
    source_bytes: int
    chunk_size: int
    chunks: int
    source: dict[str, Any]
    target: dict[str, Any] = field(default_factory=dict)
    #: the bytes to copy: the source less its free ranges (what progress counts)
    copy_bytes: int = 0

    @classmethod
    def of(cls, plan: Plan, target: dict[str, Any], free: Extents | None = None) -> Planned:
        """The report of ``plan`` accepted for ``target``; ``free``: what is not copied
        (default the plan's free map; a smaller target's cut adds to it)."""
        free = plan.free if free is None else free
        return cls(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, target,
                   plan.source_size - free.total)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Progress:
    done_bytes: int
    total_bytes: int
    wire_bytes: int
    #: a failing source: bytes found unreadable so far, and in how many ranges
    unreadable_bytes: int = 0
    unreadable_ranges: int = 0

    @classmethod
    def of(
        cls, done: int, total: int, wire: int, unreadable: Sequence[tuple[int, int]]
    ) -> Progress:
        """With the unreadable ``(start, end)`` ranges so far counted (merged first: a
        range across chunks counts once)."""
        bad = merged(unreadable)
        return cls(done, total, wire, sum(n for _o, n in bad), len(bad))


@dataclass(frozen=True, slots=True)
class Verifying:
    total_bytes: int


@dataclass(frozen=True, slots=True)
class Rescuing:
    """The second pass over a failing disk: the chunks the first pass could not read
    (``chunks``, ``total_bytes`` of them), narrowed down now; progress follows."""

    chunks: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class Done:
    source_bytes: int
    wire_bytes: int
    chunks: int
    zero_chunks: int
    digest: str
    seconds: float
    verified: bool = False
    same_chunks: int = 0  # already on the target (resume or delta): not sent
    # fetched again and fixed: read back wrong by --verify, or wrong in a multicast group
    repaired_chunks: int = 0
    # bytes no filesystem uses: neither sent nor written (the plan's used map)
    free_bytes: int = 0
    # [offset, length] of each source range that could not be read (zeros on the
    # target), sorted and merged; not empty: the run ends with exit 7
    unreadable: list[list[int]] = field(default_factory=list)
    # where those ranges are: "partition 2 (ext4)", … (volumes/layout.py)
    unreadable_in: list[str] = field(default_factory=list)
    # the files they fall in, where the source's filesystem can say (disks/hit.py):
    # "/home/ann/thesis.odt (partition 2)"; only a side that reads the source knows
    unreadable_files: list[str] = field(default_factory=list)
    # a smaller target kept nothing from this byte on (0: it kept everything): the
    # clone, and its root, are of the bytes before it
    cut_at: int = 0
    # the sender's count of data (4 KiB blocks not all zero) past cut_at that the
    # receiver let go with --cut (0 on the receiver, which never read it)
    dropped_bytes: int = 0
    # --new-ids: each old ID → its new one, as blkid spells them (filesystem UUIDs and
    # serials, PARTUUIDs, the disk's GUID or signature); the root is of the clone before
    new_ids: dict[str, str] = field(default_factory=dict)
    # a multicast sender: the receivers that confirmed their clone, by host name and
    # address ("pc07 (192.0.2.7)")
    receivers: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Mapped:
    """The source's layout, read before the plan: partition table and each volume
    (number, type, fs, start, size, used, and why it is copied whole, if it is)."""

    scheme: str  # "gpt", "mbr", "none", or "exact" (--exact: not read)
    volumes: list[dict[str, str | int]]
    notes: list[str]
    free_bytes: int
    source_bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should know that changes what the run does (one sentence)."""

    message: str


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """One multicast member's state, for the display: joined, receiving or unicast
    (with how far it is, its rate and the fragments repaired for it), evicted, done,
    failed, refused.

    ``done_bytes``: what the member holds whole so far (slices it reported complete;
    over unicast, what that session has sent); ``rate``: bytes/s since the last report
    about it."""

    name: str
    state: str
    done_bytes: int = 0
    total_bytes: int = 0
    rate: float = 0.0
    repairs: int = 0
    why: str = ""


#: what the drivers tell the CLI (never printed by them): one of these
Update = Listening | Connected | Mapped | Planned | Progress | Verifying | Rescuing | Done | Notice
Reporter = Callable[[Update], None]
GroupReporter = Callable[[GroupProgress], None]


def no_report(_: Update) -> None:
    pass


# -- errors -----------------------------------------------------------------------

# When several tasks fail at once (the peer's ERROR frame and our broken pipe, say),
# the most telling error is the one the user sees.
_PRIORITY: list[type[P2PCloneError]] = [
    PeerError,
    SafetyError,
    IntegrityError,
    ProtocolError,
    TransportError,
    P2PCloneError,
]


def pick_error(exc: BaseException) -> BaseException:
    """The one exception to report from ``exc`` (which may be an exception group)."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(exc)
    for kind in _PRIORITY:
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return leaves[0]


# -- pairing ---------------------------------------------------------------------------


async def greet(channel: Channel) -> None:
    """HELLO both ways: pairing's first step, in which nothing tests the code (a
    multicast sender waits for it before a connection may take a handshake turn)."""
    conn = channel.conn
    if conn.role is Role.SENDER:
        await channel.send(conn.hello(SOFTWARE, ("zstd",)))
        await channel.expect(Hello, "the receiver's HELLO")
    else:
        await channel.expect(Hello, "the sender's HELLO")
        await channel.send(conn.hello(SOFTWARE, ("zstd",)))


async def pair(
    channel: Channel,
    *,
    before_confirm: Callable[[], Awaitable[None]] | None = None,
    greeted: bool = False,
) -> None:
    """HELLO, PAKE and CONFIRM both ways (docs/protocol.md); after it, all is sealed.

    The sender speaks first at each step; the receiver checks the sender's key
    confirmation before it gives its own, so a wrong code learns nothing more.
    ``before_confirm`` (sender): awaited just before our CONFIRM goes out — the first
    message with which the peer can test a guess of the code; it may wait for its turn,
    or raise to stop.
    ``greeted``: :func:`greet` ran already.

    Raises:
        AuthenticationError: wrong code, or someone in the middle.
    """
    conn = channel.conn
    if not greeted:
        await greet(channel)
    if conn.role is Role.SENDER:
        await channel.send(conn.pake())
        await channel.expect(Pake, "the receiver's PAKE message")
        if before_confirm is not None:
            await before_confirm()
        await channel.send(conn.confirmation())
        await channel.expect(Confirm, "the receiver's key confirmation")
    else:
        await channel.expect(Pake, "the sender's PAKE message")
        await channel.send(conn.pake())
        await channel.expect(Confirm, "the sender's key confirmation")
        await channel.send(conn.confirmation())


# -- the framed channel ---------------------------------------------------------------


class Channel:
    """Frames over a stream.  One task sends, one task receives (they may differ)."""

    def __init__(self, conn: Connection, stream: trio.abc.Stream, url: str) -> None:
        self.conn = conn
        self.stream = stream
        self.url = url
        self._mid_frame = False  # a send was interrupted: the stream is unusable
        self._send_lock = trio.Lock()
        #: bytes the stream has taken (each send_all returned)
        self.handed = 0
        #: bytes of every frame whose sending has begun (``handed`` once it is done)
        self.framed = 0
        # An in-process pipe hands over whole buffers: taking them whole saves a copy.
        self._receive_size: int | None = getattr(stream, "receive_size", RECEIVE_SIZE)

    async def send(self, event: Event) -> None:
        """Write one whole frame.

        The write is shielded from cancellation, so a failure elsewhere (a read error
        on the source, say) does not leave half a frame on the link and the ERROR
        frame that explains it can still follow.  A stuck link still ends it: the
        transports time out on their own (TCP: keepalive and TCP_USER_TIMEOUT).
        """
        async with self._send_lock:  # frames from several tasks never interleave
            buffers = self.conn.send(event)
            self.framed = self.handed + sum(len(b) for b in buffers)
            with link_errors(self.url, "sending"), trio.CancelScope(shield=True):
                self._mid_frame = True
                if sum(len(b) for b in buffers) < 65536:  # small frame: one write
                    joined = b"".join(buffers)
                    await self.stream.send_all(joined)
                    self.handed += len(joined)
                else:  # keep a big body uncopied
                    for buf in buffers:
                        await self.stream.send_all(buf)
                        self.handed += len(buf)
                self._mid_frame = False
        await trio.lowlevel.checkpoint_if_cancelled()

    def delivered(self) -> int:
        """Bytes sent that have reached the far end, as far as the link can tell
        (transports.delivered): what a sender's progress follows (meter.py)."""
        return delivered(self.stream, self.handed)

    async def receive(self) -> Event | None:
        """The next event, or ``None`` if the peer closed the link."""
        while True:
            event = self.conn.next_event()
            if event is CLOSED:
                return None
            if not isinstance(event, Sentinel):  # NEED_DATA is the only other sentinel
                return event
            with link_errors(self.url, "receiving"):
                data = await self.stream.receive_some(self._receive_size)
            self.conn.receive_data(data)

    async def expect(self, kind: type[E], waiting_for: str) -> E:
        """Receive an event of ``kind``; an ERROR or a closed link raises."""
        event = await self.expect_one_of((kind,), waiting_for)
        assert isinstance(event, kind)
        return event

    async def expect_one_of(self, kinds: tuple[type, ...], waiting_for: str) -> Event:
        """Receive an event of one of ``kinds``; an ERROR or a closed link raises."""
        event = await self.receive()
        if event is None:
            raise TransportError(
                f"the peer closed the link {self.url} while we waited for {waiting_for}: "
                "the session was interrupted; see the other side's message"
            )
        if isinstance(event, Error):
            raise self.peer_error(event)
        if not isinstance(event, kinds):  # the state table makes this unreachable
            raise LocalProtocolError(f"expected {waiting_for}, got {type(event).__name__}")
        return event

    def peer_error(self, event: Error) -> PeerError:
        """The error the peer's ERROR frame ends the session with: labelled and not
        obeyed (exit code) when the peer has not proved it holds the code."""
        return PeerError(
            event.message,
            code=event.code,
            exit_code=event.exit,
            authenticated=self.conn.peer_confirmed,
        )

    async def fail(self, error: BaseException) -> None:
        """Best effort: tell the peer why we stop, then close gracefully."""
        if (
            isinstance(error, P2PCloneError)
            and not isinstance(error, (PeerError, TransportError, ProtocolError))
            and not self._mid_frame
            and self.conn.can_send_error
        ):
            with trio.move_on_after(5):
                with contextlib.suppress(P2PCloneError):
                    await self.send(
                        Error(code=error.code, message=error.message, exit=int(error.exit_code))
                    )
        await self.close()

    async def close(self) -> None:
        """Half-close and drain briefly, so our last frame is read before the FIN/RST."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream) and not self._mid_frame:
                    await self.stream.send_eof()
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


# -- what a receiver holds already ------------------------------------------------------

#: How far (in chunks) HAVE reports may run ahead of the data received.
HAVE_AHEAD = 4096
#: one batch of a HAVE report: each chunk's hash (UNKNOWN: not held), and sub-hashes
HaveBatch = Callable[[Sequence[int]], Awaitable[tuple[list[bytes], bytes]]]


class HaveReport:
    """A receiver's (or an image recorder's) HAVE frames: every chunk, in order, in
    batches of ``step``, staying at most HAVE_AHEAD chunks ahead of the data received,
    so that neither side's memory of the report grows with the disk."""

    def __init__(self, channel: Channel, plan: Plan, step: int, batch: HaveBatch) -> None:
        self.channel, self.plan, self.step, self.batch = channel, plan, step, batch
        self._moved = trio.Event()

    def moved(self) -> None:
        """The data moved on (the receiving loop calls this after each frame)."""
        self._moved.set()

    async def run(self) -> None:
        plan, conn = self.plan, self.channel.conn
        for first in range(0, plan.chunk_count, self.step):
            while first >= conn.chunks_done + HAVE_AHEAD:
                self._moved = trio.Event()
                await self._moved.wait()
            indices = range(first, min(first + self.step, plan.chunk_count))
            hashes, subs = await self.batch(indices)
            await self.channel.send(Have(index=first, hashes=b"".join(hashes), subs=subs))
