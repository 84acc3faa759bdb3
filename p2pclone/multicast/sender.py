"""The multicast sender: one source, a group of receivers, one copy on the wire.

``send(SOURCE, "multicast://GROUP…", receivers=N, wait=S)`` lands here:

1. It listens for control connections (TCP, an ephemeral port on the interface) and
   multicasts an ANNOUNCE naming that port twice a second.
2. Each receiver connects and pairs with the code on its own connection, gets the PLAN
   and accepts it.  The data phase starts once ``receivers`` have joined, or when
   ``wait`` seconds have passed with at least one.
3. Each member gets GROUP (the group key); then, slice by slice, the chunks are read,
   hashed and compressed once, each member gets its in-order coverage over its own
   connection (ZERO for zero runs, REF with the hashes of the chunks in the slice), the
   slice is multicast, and repair rounds follow (POLL -> REPORT bitmaps -> the union of
   the losses multicast again) until every member holds it.  A member that needs too
   many rounds or falls silent is sent EVICT and leaves the group; the others go on.
4. END with the root hash to every member; each answers RESULT.

A connection that arrives once the data phase has begun (an evicted member coming
back, a receiver that rebooted, a latecomer) gets an ordinary unicast session from a
second handle on the source: its journal tells what it holds, so it resumes.

The data itself (slices, coverage, repair rounds) is slices.py; the members'
connections are members.py.  SOURCE may be an image URL, as for a unicast send.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import assert_never

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..endpoints import Place
from ..errors import (
    AuthenticationError,
    ExitCode,
    IntegrityError,
    P2PCloneError,
    PeerError,
    RemoteProtocolError,
    TransportError,
)
from ..image.reader import ImageSource
from ..meter import Meter
from ..options import DEFAULT_WAIT, SendOptions
from ..pacing import Paced
from ..pipeline import DiskSource
from ..protocol import (
    Accept,
    Ack,
    Connection,
    End,
    Error,
    Group,
    Have,
    Nak,
    Plan,
    Report,
    Result,
    Role,
)
from ..protocol.dataplane import Member, RateGovernor
from ..sender import send_channel
from ..sender.runs import HaveMap, answer_nak
from ..sender.source import open_source
from ..session import (
    Channel,
    Connected,
    Done,
    GroupReporter,
    Notice,
    Planned,
    Progress,
    Reporter,
    no_report,
)
from ..transports import url_host
from ..transports.multicast import BurstSender, MulticastGroup
from ..transports.tcp import tune
from ..units import merged
from ..volumes.layout import partitions_hit
from .announce import announced
from .door import Door
from .members import Board, Clock, Peer, expel, tell_all
from .slices import LossReports, SliceStream, Wire
from .verdict import nobody_joined, unfinished

__all__ = ["GroupSender"]


class GroupSender:
    """One multicast run: the door (announce, accept, pair), the group's data, and the
    unicast sessions of members that come back (see the module docstring).

    ``clock``: every time the sender reads (pacing, progress rates, repair rounds) is
    this one's: trio's, so a test's mock clock drives it all.
    """

    def __init__(
        self,
        transport: MulticastGroup,
        origin: Place,
        options: SendOptions,
        *,
        chunk_size: int = 1 << 20,
        report: Reporter = no_report,
        group_report: GroupReporter | None = None,
        clock: Clock = trio.current_time,
    ) -> None:
        self.transport, self.origin, self.options = transport, origin, options
        self.code = options.code
        self.receivers = 1 if options.receivers is None else options.receivers
        self.wait = DEFAULT_WAIT if options.wait is None else options.wait
        self.chunk_size = chunk_size
        self.report, self.group_report, self.clock = report, group_report, clock
        self.session = secrets.randbits(63)
        self.key = os.urandom(32)
        self.unreadable: list[tuple[int, int]] = []  # from the slices, for the done line
        self.peers: dict[str, Peer] = {}
        self.joined = trio.Event()
        self.data_started = False
        self.reports = LossReports()
        self.returning: dict[str, trio.Event] = {}  # host -> its unicast session has ended
        self.finished_hosts: set[str] = set()  # hosts whose receiver confirmed its clone
        self.board = Board(group_report, clock)
        self._show = self.board.show
        self.door = Door(
            transport, self.session, self.receivers, self._show, self.joined.set, self.code
        )
        self.refused = self.door.refused  # name -> (why, its exit code)
        self.locked = self.door.locked  # the run's failed pairings reached the limit
        self.stats: dict[str, int] = {"wire": 0, "zero": 0}
        self.plan = Plan(source_size=0, chunk_size=chunk_size)
        self._source: DiskSource | None = None  # the group's handle on the source
        self.connections = 0  # control connections made to us: receivers heard us

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> Done:
        started_at = self.clock()
        source = self._source = await self._open_source()
        t = self.transport
        self.plan = Plan(
            source_size=source.size,
            chunk_size=self.chunk_size,
            source=source.info,
            delta=self.options.delta,  # every member hashes its target first
            free=source.free,
        )
        self.board.meter = Meter(source.size, source.free)
        sock = t.sender_socket()
        listeners = await trio.open_tcp_listeners(0, host=t.address)
        port = listeners[0].socket.getsockname()[1]
        self.report(Connected(f"{t.url} (control: tcp://{url_host(t.address)}:{port})"))
        if t.picked:
            self.report(
                Notice(
                    f"no route goes to the group {t.where} (a LAN with no router): sending "
                    f"on {t.picked}, the one interface with IPv4 (iface= names another)"
                )
            )
        governor = RateGovernor(limit=t.rate, rate=t.rate or 50e6)
        wire = Wire(sock, BurstSender(sock, (t.group, t.port)), governor, self.stats, self.clock)
        try:
            # ``late``: member and unicast sessions, awaited at the very end.
            async with (
                announced(t, self.code, port, source.size),
                trio.open_nursery() as late,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(self.door.open, sock, port, listeners, late, self._member)
                await self._group(source, wire)
                self.door.close()  # stop announcing, accepting and pairing
                nursery.cancel_scope.cancel()
        finally:
            source.close()
            sock.close()
        return self._outcome(started_at)

    async def _open_source(self) -> DiskSource:
        """The source, opened again for each member's unicast finish: mapped once, on
        the first open (reported then), and given that map after."""
        first = self._source
        source, chunk_size = await open_source(
            self.origin,
            self.chunk_size,
            self.options,
            self.report,
            free=first.free if first is not None else None,
        )
        if first is not None:  # the layout the first open read (layout, part<n>, end<n>)
            source.info.update(first.info)
        self.chunk_size = chunk_size  # an image's own
        return source

    async def _group(self, source: DiskSource, wire: Wire) -> None:
        """Wait for the members, then the data, END, and each member's RESULT."""
        t, plan = self.transport, self.plan
        with trio.move_on_after(self.wait):
            await self.joined.wait()
        if self.locked:  # before the group started: its members are told why, then stop
            await self._tell_error(self.locked[0], ExitCode.AUTH)
            raise self.locked[0]
        if not [p for p in self.peers.values() if not p.member.evicted]:
            raise TransportError(
                nobody_joined(self.transport, self.wait, self.connections, self.refused)
            )
        self.data_started = True
        where = {"name": f"the multicast group {t.where}"}
        self.report(Planned.of(plan, where))
        await tell_all(self.peers, lambda p: Group(key=self.key, session=self.session), self._show)
        aead = AESGCM(self.key)
        stream = SliceStream(
            source,
            plan,
            self.peers,
            aead,
            self.session,
            wire,
            self.reports,
            self._show,
        )
        await stream.run(self.report)
        self.unreadable = stream.unreadable
        if isinstance(source, ImageSource) and (note := source.salvage_note()):
            error = IntegrityError(note, code="salvaged")
            await self._tell_error(error, ExitCode.INTEGRITY)
            raise error
        await tell_all(
            self.peers,
            lambda p: End(chunk_count=plan.chunk_count, root=p.channel.conn.root_digest()),
            self._show,
        )
        for p in self.peers.values():
            if not p.member.evicted:
                # No time limit: a --verify or a refetch can take long, and a dead
                # link ends within a minute (the control connections' keepalive).
                await p.finished.wait()
                if p.result:
                    self.finished_hosts.add(p.host)
                self._show(p.name, "done" if p.result else "failed")
        # Evicted members (and killed ones, once restarted) come back for unicast:
        # keep the door open for them as long as for joining.
        with trio.move_on_after(0 if self.locked else self.wait):
            for p in self.peers.values():
                if p.member.evicted and p.expelled is None:
                    await self.returning.setdefault(p.host, trio.Event()).wait()

    async def _tell_error(self, error: P2PCloneError, exit_code: ExitCode) -> None:
        for p in list(self.peers.values()):
            with trio.move_on_after(5), contextlib.suppress(P2PCloneError):
                await p.channel.send(
                    Error(code=error.code, message=error.message, exit=int(exit_code))
                )

    def _outcome(self, started_at: float) -> Done:
        if self.locked:
            raise self.locked[0]
        failed = unfinished(self.peers.values(), self.refused, self.finished_hosts, self.wait)
        if failed is not None:
            raise failed
        ok = [p for p in self.peers.values() if p.result is not None]
        return Done(
            source_bytes=self.plan.source_size,
            wire_bytes=self.stats["wire"],
            chunks=self.plan.chunk_count,
            zero_chunks=self.stats["zero"],
            digest=ok[0].result.root.hex() if ok and ok[0].result else "",
            seconds=self.clock() - started_at,
            free_bytes=self.plan.free.total,
            unreadable=merged(self.unreadable),
            unreadable_in=partitions_hit(self.plan.source, merged(self.unreadable)),
            receivers=sorted(self.board.labels.get(h, h) for h in self.finished_hosts),
        )

    # -- control connections ----------------------------------------------------------

    async def _member(self, stream: trio.SocketStream) -> None:
        """One control connection: pair, then join the group, or a unicast session."""
        tune(stream)  # a receiver that vanishes is noticed (keepalive, user timeout)
        addr = stream.socket.getpeername()
        name = f"{url_host(addr[0])}:{addr[1]}"
        self.connections += 1
        if not self.door.admits(addr[0], name):  # it failed too often: no more guesses
            await stream.aclose()
            return
        by_unicast = self.data_started or len(self.peers) >= self.receivers
        rate = self.transport.rate
        # rate= caps the network load, the unicast finish included
        link = Paced(stream, rate, self.clock) if by_unicast and rate else stream
        channel = Channel(Connection(Role.SENDER, code=self.code), link, f"tcp://{name}")
        if not await self.door.handshake(channel, addr[0], name):
            return
        if by_unicast:
            why = (
                "came after the group started: served alone by unicast, from its journal"
                if self.data_started
                else f"the group is full ({self.receivers} receivers): served alone by unicast"
            )
            await self._unicast(channel, name, why)
            return
        peer = await self._join(channel, name)
        if peer is not None:
            await self._listen(peer)
            await channel.close()

    async def _join(self, channel: Channel, name: str) -> Peer | None:
        """The PLAN and its acceptance: the receiver becomes a member of the group."""
        plan = self.plan
        try:
            await channel.send(plan)
            accept = await channel.expect(Accept, "the receiver to accept the plan")
        except P2PCloneError as exc:
            # One that refused its target is one of the lab that will not be cloned.
            if isinstance(exc, (AuthenticationError, PeerError)):
                self.refused[name] = (exc.message, exc.exit_code)
            self._show(name, "refused", why=exc.message)
            await channel.close()
            return None
        if self.data_started:  # the group started while this one paired: unicast it is not
            await channel.fail(TransportError("the multicast group started without you"))
            return None
        have = HaveMap(accept.have, plan, accept.sub)
        peer = Peer(name, channel, Member(name, heard=self.clock()), have)
        self.peers[name] = peer
        self.board.named(name, accept.target)
        self._show(name, "joined")
        if len(self.peers) >= self.receivers:
            self.joined.set()
        return peer

    # -- members' sessions -------------------------------------------------------------------

    async def _listen(self, peer: Peer) -> None:
        """The member's back-channel: REPORTs, then RESULT; a closed link is silence."""
        try:
            while True:
                event = await peer.channel.expect_one_of(
                    (Have, Ack, Report, Nak, Result), "the receiver's RESULT"
                )
                assert isinstance(event, (Have, Ack, Report, Nak, Result))  # as asked
                match event:
                    case Nak():
                        # Chunks the group's copy did not give this member (a rogue sealed
                        # something else, or its slice never came whole): unicast them.
                        assert self._source is not None
                        await answer_nak(peer.channel, self._source, self.plan, event)
                    case Have():
                        peer.have.add(event)
                    case Report():
                        peer.member.heard = self.clock()
                        self.reports.add(event.slice, peer.name, event.missing)
                    case Result():
                        peer.result = event
                        return
                    case Ack():
                        pass  # what it holds durably: its own business in a group
                    case _:
                        assert_never(event)
        except RemoteProtocolError as exc:
            # A member that breaks the protocol (a REPORT that does not fit its slice, a
            # frame that is not p2pclone) is ended alone: the group goes on without it.
            peer.member.evicted = f"broke the protocol: {exc.message}"
            peer.evicted_sent = True
            peer.expelled = exc.exit_code
            self._show(peer.name, "failed", why=peer.member.evicted)
            await expel(peer.channel, exc)
        except P2PCloneError as exc:
            if not peer.member.evicted:
                peer.member.evicted = (
                    "its control link closed: the receiver stopped, or the network failed"
                    if isinstance(exc, TransportError)
                    else f"left the group ({exc.message})"
                )
                peer.evicted_sent = True  # nobody to tell
                self._show(peer.name, "evicted", why=peer.member.evicted)
        finally:
            peer.finished.set()
            peer.have.close()
            self.reports.wake_all()  # nobody waits for its reports any more

    async def _unicast(self, channel: Channel, name: str, why: str) -> None:
        """A member that came back (evicted, restarted, late): an ordinary session from a
        second handle on the source, resuming from its journal."""
        host = name.rsplit(":", 1)[0]
        back = self.returning.setdefault(host, trio.Event())
        shown = [self.clock()]

        def progress(event: object) -> None:
            if isinstance(event, Planned):  # its ACCEPT named its host
                self.board.named(name, event.target)
                self._show(name, "unicast", why=why)
            if isinstance(event, Progress) and self.clock() - shown[0] >= 1.0:
                shown[0] = self.clock()
                self._show(name, "unicast", done_bytes=event.done_bytes)

        try:
            src = await self._open_source()
        except P2PCloneError as exc:
            self._show(name, "failed", why=exc.message)
            back.set()
            await channel.fail(exc)
            return
        try:
            await send_channel(
                channel,
                src,
                self.options,
                chunk_size=self.chunk_size,
                report=progress,
                paired=True,
            )
            self.finished_hosts.add(host)
            self._show(name, "done")
        except P2PCloneError as exc:
            self._show(name, "failed", why=exc.message)
        finally:
            src.close()
            back.set()
