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
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pclone.transports.multicast import BurstSender, MulticastTransport, encode_announce
from p2pclone.transports.tcp import tune

from ..disks import Source
from ..errors import (
    AuthenticationError,
    ExitCode,
    GroupError,
    P2PCloneError,
    PeerError,
    RemoteProtocolError,
    TransportError,
)
from ..pipeline import Encoded, default_threads, encode_chunk, encode_repair
from ..protocol import Connection, Role
from ..protocol.connection import zero_digest
from ..protocol.messages import (
    Accept,
    Ack,
    End,
    Error,
    Event,
    Evict,
    Group,
    Have,
    Nak,
    Plan,
    Poll,
    Ref,
    Report,
    Result,
    Same,
    Zero,
)
from ..sender import READ_AHEAD_BYTES, HaveMap
from ..session import Channel, Connected, Done, Planned, Progress, Reporter, no_report, pair
from .dataplane import Member, RateGovernor, RepairState, check_bitmap, from_bitmap
from .guard import PairingGuard
from .plane import pack_entry, seal_slice

#: Payload bytes per slice: big enough that a repair round's round trip is cheap next
#: to the slice's airtime, small enough that a lost-and-repaired slice stays in memory.
SLICE_BYTES = 4 << 20
#: ...and at most this many chunks (zero ones add no bytes): the producer waits for
#: resumed members' HAVE of each chunk, which they send at most HAVE_AHEAD (4096)
#: chunks past what they were told, and it runs up to two slices ahead of that
SLICE_CHUNKS = 1024
#: How long to wait for the members' reports after a round before judging the silent.
ROUND_WAIT = 2.0
#: Slices on the wire or in their repair rounds at once: the next slice goes out while
#: the members answer for the last (one at a time, the link idled a round trip per
#: slice, and more than a round trip when the receivers' cores were busy).
IN_FLIGHT = 3
ANNOUNCE_EVERY = 0.5
#: Pairings in progress at once (the others wait their turn), and how long one may take
#: from its turn to the receiver's key confirmation: a connection that never speaks
#: holds its turn no longer than that (docs/security.md#multicast).
HANDSHAKES = 4
HANDSHAKE_TIMEOUT = 30.0


@dataclass
class _Peer:
    name: str
    channel: Channel
    member: Member
    have: HaveMap  # what it holds already (its journal's HAVE frames): a resumed member
    result: Result | None = None
    finished: trio.Event = field(default_factory=trio.Event)
    evicted_sent: bool = False
    #: it broke the protocol: its session was ended, it is not waited for to come back
    expelled: ExitCode | None = None


#: report a member's state: show(name, state, why=..., done_bytes=..., repairs=...)
Show = Callable[..., None]


@dataclass
class GroupProgress:
    """One member's state, for the display: joined, receiving or unicast (with how far
    it is, its rate and the fragments repaired for it), evicted, done, failed, refused.

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


async def send_multicast(
    source_path: str,
    transport: MulticastTransport,
    *,
    code: str,
    receivers: int,
    wait: float = 60.0,
    chunk_size: int = 1 << 20,
    allow_mounted: bool = False,
    report: Reporter = no_report,
    group_report: Callable[[GroupProgress], None] | None = None,
) -> Done:
    started_at = trio.current_time()
    source = await trio.to_thread.run_sync(
        functools.partial(Source.open, source_path, allow_mounted=allow_mounted)
    )
    plan = Plan(source_size=source.size, chunk_size=chunk_size, source=source.info)
    session = secrets.randbits(63)
    key = os.urandom(32)
    aead = AESGCM(key)
    sock = transport.sender_socket()
    group = (transport.group, transport.port)
    peers: dict[str, _Peer] = {}
    joined = trio.Event()
    phase = {"data": False}
    governor = RateGovernor(limit=transport.rate, rate=transport.rate or 50e6)
    listeners = await trio.open_tcp_listeners(0, host=transport.address)
    port = listeners[0].socket.getsockname()[1]
    report(Connected(f"{transport.url} (control: tcp://{transport.address}:{port})"))

    meters: dict[str, tuple[float, int]] = {}  # name -> (time, done_bytes) last shown

    def show(
        name: str, state: str, *, why: str = "", done_bytes: int | None = None, repairs: int = 0
    ) -> None:
        if group_report is None:
            return
        now = trio.current_time()
        if state == "done":
            done_bytes = plan.source_size
        then, before = meters.get(name, (now, 0))
        done = before if done_bytes is None else done_bytes
        moving = state in ("receiving", "unicast") and now > then and done >= before
        rate = (done - before) / (now - then) if moving else 0.0
        meters[name] = (now, done)
        group_report(GroupProgress(name, state, done, plan.source_size, rate, repairs, why))

    async def announce() -> None:
        while True:
            with contextlib.suppress(OSError):
                sock.sendto(encode_announce(session, port), group)
            await trio.sleep(ANNOUNCE_EVERY)

    async def unicast(channel: Channel, name: str) -> None:
        from ..sender import send_channel

        show(name, "unicast")
        back = returning.setdefault(addr_of(name), trio.Event())
        shown = [trio.current_time()]

        def progress(event: object) -> None:
            if isinstance(event, Progress) and trio.current_time() - shown[0] >= 1.0:
                shown[0] = trio.current_time()
                show(name, "unicast", done_bytes=event.done_bytes)

        src = await trio.to_thread.run_sync(
            functools.partial(Source.open, source_path, allow_mounted=allow_mounted)
        )
        try:
            await send_channel(channel, src, chunk_size=chunk_size, report=progress, paired=True)
            finished_hosts.add(addr_of(name))
            show(name, "done")
        except P2PCloneError as exc:
            show(name, "failed", why=exc.message)
        finally:
            src.close()
            back.set()

    async def handshake(channel: Channel, host: str, name: str) -> bool:
        """Pair, HANDSHAKES at a time and within HANDSHAKE_TIMEOUT each; a failure
        after our CONFIRM is a spent guess (guard.py), and too many stop the run."""
        spent = False

        def confirm() -> None:
            nonlocal spent
            if not guard.begin(host):
                raise AuthenticationError("too many failed pairings: not paired")
            spent = True

        why = ""
        with trio.CancelScope() as scope:  # cancelled when the sender stops pairing
            pairing.add(scope)
            try:
                async with handshakes:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await pair(channel, before_confirm=confirm)
            except trio.TooSlowError:
                why = f"no pairing within {HANDSHAKE_TIMEOUT:.0f} s"
            except P2PCloneError as exc:
                why = exc.message
            finally:
                pairing.discard(scope)
        if scope.cancelled_caught:
            why = "the sender stopped pairing"
        if spent:
            guard.end(host, paired=not why)
        if not why:
            return True
        if spent:
            # A receiver with a wrong code is one of the lab that will not be cloned,
            # and a guess at the code all the same; a stranger's garbage, a port scan
            # or a silent connection never got that far.
            refused[name] = (
                why if "pairing failed" in why else f"pairing failed ({why})",
                ExitCode.AUTH,
            )
            if guard.exhausted:
                lock_out()
        show(name, "refused", why=why)
        await channel.close()
        return False

    def lock_out() -> None:
        """Too many failed pairings: no more (the control port closes), and the run
        ends with exit 3 (at once if the group has not started; else once the members
        in it have finished)."""
        locked.append(
            AuthenticationError(
                f"{guard.failures} pairings with this sender failed (from "
                + ", ".join(f"{host} x{n}" for host, n in guard.worst())
                + f"), the limit for {receivers} receivers: someone on the network may be "
                "guessing the code, so the sender stopped accepting receivers; check those "
                "hosts, then run the receivers and the sender again with a new code (the "
                "receivers resume)"
            )
        )
        close_door()
        joined.set()  # wakes the wait for the group to form

    def close_door() -> None:
        door.cancel()
        for scope in pairing:  # and pairings in progress, or waiting for their turn
            scope.cancel()

    async def member(stream: trio.SocketStream) -> None:
        tune(stream)  # a receiver that vanishes is noticed (keepalive, user timeout)
        addr = stream.socket.getpeername()
        name = f"{addr[0]}:{addr[1]}"
        if not guard.admits(addr[0]):  # it failed too often: no more guesses
            if addr[0] not in blocked:
                blocked.add(addr[0])
                show(name, "refused", why="too many failed pairings from this address")
            await stream.aclose()
            return
        by_unicast = phase["data"] or len(peers) >= receivers
        # rate= caps the network load, the unicast finish included
        link = _Paced(stream, transport.rate) if by_unicast and transport.rate else stream
        channel = Channel(Connection(Role.SENDER, code=code), link, f"tcp://{name}")
        if not await handshake(channel, addr[0], name):
            return
        if by_unicast:
            await unicast(channel, name)
            return
        try:
            await channel.send(plan)
            accept = await channel.expect(Accept, "the receiver to accept the plan")
        except P2PCloneError as exc:
            # One that refused its target is one of the lab that will not be cloned.
            if isinstance(exc, (AuthenticationError, PeerError)):
                refused[name] = (exc.message, exc.exit_code)
            show(name, "refused", why=exc.message)
            await channel.close()
            return
        if phase["data"]:  # the group started while this one paired: unicast it is not
            await channel.fail(TransportError("the multicast group started without you"))
            return
        have = HaveMap(accept.have, plan, accept.sub)
        peer = _Peer(name, channel, Member(name, heard=trio.current_time()), have)
        peers[name] = peer
        show(name, "joined")
        if len(peers) >= receivers:
            joined.set()
        await _listen(peer)
        await channel.close()

    async def _listen(peer: _Peer) -> None:
        """The member's back-channel: REPORTs, then RESULT; a closed link is silence."""
        try:
            while True:
                event = await peer.channel.expect_one_of(
                    (Have, Ack, Report, Nak, Result), "the receiver's RESULT"
                )
                if isinstance(event, Nak):
                    # Chunks the group's copy did not give this member (a rogue sealed
                    # something else, or its slice never came whole): unicast them.
                    for index in event.indices:
                        chunk = await trio.to_thread.run_sync(encode_repair, source, plan, index)
                        await peer.channel.send(chunk)
                elif isinstance(event, Have):
                    peer.have.add(event)
                elif isinstance(event, Report):
                    peer.member.heard = trio.current_time()
                    reports.add(event.slice, peer.name, event.missing)
                elif isinstance(event, Result):
                    peer.result = event
                    return
        except RemoteProtocolError as exc:
            # A member that breaks the protocol (a REPORT that does not fit its slice, a
            # frame that is not p2pclone) is ended alone: the group goes on without it.
            peer.member.evicted = f"broke the protocol: {exc.message}"
            peer.evicted_sent = True
            peer.expelled = exc.exit_code
            show(peer.name, "failed", why=peer.member.evicted)
            await _expel(peer.channel, exc)
        except P2PCloneError as exc:
            if not peer.member.evicted:
                peer.member.evicted = (
                    "its control link closed: the receiver stopped, or the network failed"
                    if isinstance(exc, TransportError)
                    else f"left the group ({exc.message})"
                )
                peer.evicted_sent = True  # nobody to tell
                show(peer.name, "evicted", why=peer.member.evicted)
        finally:
            peer.finished.set()
            peer.have.close()
            reports.wake_all()  # nobody waits for its reports any more

    reports = _Reports()
    returning: dict[str, trio.Event] = {}  # host -> its unicast session has ended
    finished_hosts: set[str] = set()  # hosts whose receiver confirmed its clone
    refused: dict[str, tuple[str, ExitCode]] = {}  # name -> why, its exit code

    def addr_of(name: str) -> str:
        return name.rsplit(":", 1)[0]

    guard = PairingGuard(receivers)
    handshakes = trio.CapacityLimiter(HANDSHAKES)
    blocked: set[str] = set()  # addresses refused for their failed pairings (shown once)
    locked: list[AuthenticationError] = []  # the run's failed pairings reached the limit
    door = trio.CancelScope()  # announcing and accepting control connections
    pairing: set[trio.CancelScope] = set()  # handshakes in progress

    async def open_door(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with door:
            async with trio.open_nursery() as both:
                both.start_soon(announce)
                await both.start(
                    functools.partial(trio.serve_listeners, handler_nursery=late),
                    member,
                    listeners,
                )
                task_status.started()
        for listener in listeners:  # closed: no more guesses (nor latecomers)
            await listener.aclose()

    stats: dict[str, int] = {"wire": 0, "zero": 0}
    wire = _Wire(sock, BurstSender(sock, group), governor, stats)
    # ``late``: member and unicast sessions, awaited at the very end.
    try:
        async with trio.open_nursery() as late, trio.open_nursery() as nursery:
            await nursery.start(open_door)
            with trio.move_on_after(wait):
                await joined.wait()
            if locked:  # before the group started: its members are told why, then stop
                for p in list(peers.values()):
                    with trio.move_on_after(5), contextlib.suppress(P2PCloneError):
                        await p.channel.send(
                            Error(code=locked[0].code, message=locked[0].message, exit=3)
                        )
                raise locked[0]
            if not [p for p in peers.values() if not p.member.evicted]:
                raise TransportError(
                    f"no receiver joined the multicast group {transport.group}:{transport.port} "
                    f"within {wait:.0f} s: start the receivers first (same group and code)"
                )
            phase["data"] = True
            where = {"name": f"the multicast group {transport.group}:{transport.port}"}
            report(Planned(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, where))
            await tell_all(peers, lambda p: Group(key=key, session=session), show)
            await _stream(source, plan, peers, aead, session, wire, reports, report, show)
            await tell_all(
                peers,
                lambda p: End(chunk_count=plan.chunk_count, root=p.channel.conn.root_digest()),
                show,
            )
            for p in peers.values():
                if not p.member.evicted:
                    # No time limit: a --verify or a refetch can take long, and a dead
                    # link ends within a minute (the control connections' keepalive).
                    await p.finished.wait()
                    if p.result:
                        finished_hosts.add(addr_of(p.name))
                    show(p.name, "done" if p.result else "failed")
            # Evicted members (and killed ones, once restarted) come back for unicast:
            # keep the door open for them as long as for joining.
            with trio.move_on_after(0 if locked else wait):
                for p in peers.values():
                    if p.member.evicted and p.expelled is None:
                        await returning.setdefault(addr_of(p.name), trio.Event()).wait()
            close_door()  # stop announcing, accepting and pairing
            nursery.cancel_scope.cancel()
    finally:
        source.close()
        sock.close()
    if locked:
        raise locked[0]
    failed = [
        (
            p.name,
            f"{p.member.evicted or 'it did not confirm its clone'}",
            p.expelled or ExitCode.LINK,
        )
        for p in peers.values()
        if addr_of(p.name) not in finished_hosts
    ] + [
        (name, f"refused: {why}", code)
        for name, (why, code) in refused.items()
        if addr_of(name) not in finished_hosts
    ]
    if failed:
        details = "; ".join(f"{name}: {why}" for name, why, _ in failed[:3]) + (
            f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        )
        codes = {code for _, _, code in failed}
        raise GroupError(
            f"{len(failed)} of {len(peers) + len(refused)} receivers did not finish "
            f"({details}); the sender waited {wait:.0f} s for them to come back: see each "
            "receiver's own message, then start them again and run the sender again",
            codes.pop() if len(codes) == 1 else ExitCode.LINK,
        )
    ok = [p for p in peers.values() if p.result is not None]
    return Done(
        source_bytes=plan.source_size,
        wire_bytes=stats["wire"],
        chunks=plan.chunk_count,
        zero_chunks=stats["zero"],
        digest=ok[0].result.root.hex() if ok and ok[0].result else "",
        seconds=trio.current_time() - started_at,
    )


async def _expel(channel: Channel, exc: RemoteProtocolError) -> None:
    """End a member's session that broke the protocol, telling it why (best effort: an
    ERROR frame, if the link can still carry one)."""
    message = (
        f"the multicast sender ended this receiver's session: {exc.message} (a bug, or "
        "not a p2pclone receiver); run it again (it resumes)"
    )
    with trio.move_on_after(5), contextlib.suppress(P2PCloneError):
        if channel.conn.can_send_error:
            await channel.send(Error(code=exc.code, message=message, exit=int(exc.exit_code)))
    await channel.close()


async def tell(p: _Peer, event: Event, show: Show) -> None:
    """Send to one member; a member whose link broke leaves the group, the rest go on."""
    if p.member.evicted:
        return
    try:
        await p.channel.send(event)
    except P2PCloneError as exc:
        p.member.evicted = f"its control link broke ({exc.message})"
        p.evicted_sent = True
        show(p.name, "evicted", why=p.member.evicted)


async def tell_all(peers: dict[str, _Peer], make: Callable[[_Peer], Event], show: Show) -> None:
    for p in list(peers.values()):
        if not p.member.evicted:
            await tell(p, make(p), show)


class _Paced(trio.abc.HalfCloseableStream):
    """A stream whose sending is held to ``rate`` bytes per second (a token bucket)."""

    def __init__(self, inner: trio.SocketStream, rate: float) -> None:
        self.inner = inner
        self.bucket = RateGovernor(rate=rate, limit=rate)
        self.piece = max(1024, min(64 * 1024, int(rate * 0.05)))  # fits the 50 ms burst

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            piece = view[: self.piece]
            while self.bucket.allowance(time.monotonic(), burst=0.05) < len(piece):
                await trio.sleep(self.bucket.wait_for(len(piece)))
            self.bucket.spend(len(piece))
            await self.inner.send_all(piece)
            view = view[len(piece) :]

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class _Wire:
    """The group's side of the data plane: the socket, the pace, what went out."""

    sock: socket.socket
    burst: BurstSender
    governor: RateGovernor
    stats: dict[str, int]
    #: one sender at a time: the slices' repairs and the next slice share the socket
    #: (two tasks waiting for it to be writable is an error in trio)
    lock: trio.Lock = field(default_factory=trio.Lock)

    async def multicast(self, sealed: list[bytes], which: list[int]) -> None:
        """Send fragments ``which`` in non-blocking bursts, paced by the governor."""
        async with self.lock:
            await self._multicast(sealed, which)

    async def _multicast(self, sealed: list[bytes], which: list[int]) -> None:
        governor = self.governor
        pos = 0
        while pos < len(which):
            allowance = governor.allowance(time.monotonic())
            n = 0
            size = 0
            while pos + n < len(which) and size + len(sealed[which[pos + n]]) <= max(
                allowance, 1500
            ):
                size += len(sealed[which[pos + n]])
                n += 1
            if n == 0 or allowance < len(sealed[which[pos]]):
                await trio.sleep(governor.wait_for(len(sealed[which[pos]])))
                continue
            batch = [sealed[k] for k in which[pos : pos + n]]
            sent = self.burst.send(batch)
            nbytes = sum(len(d) for d in batch[:sent])
            governor.spend(nbytes)
            self.stats["wire"] += nbytes
            pos += sent
            if sent < n:
                await trio.lowlevel.wait_writable(self.sock)
            else:
                await trio.lowlevel.checkpoint()


class _Reports:
    """The members' REPORTs, per slice, and a way to wait for them (several slices are
    in their repair rounds at once)."""

    def __init__(self) -> None:
        self._got: dict[int, dict[str, bytes]] = {}
        self._wake: dict[int, trio.Event] = {}
        # (slice, member) -> POLLs sent, REPORTs received: a REPORT counts only when it
        # answers the latest POLL (one that arrives after its round timed out is stale)
        self._polls: dict[tuple[int, str], int] = {}
        self._answers: dict[tuple[int, str], int] = {}
        self.ends: dict[int, int] = {}  # slice -> the source offset where it ends
        self.counts: dict[int, int] = {}  # slice -> its fragments, while in repair rounds
        self.last_polled = -1
        self.held: dict[str, int] = {}  # member -> bytes it holds whole (progress)

    def opened(self, slice_no: int, fragments: int) -> None:
        """The slice's repair rounds begin: REPORTs on it are checked against its size."""
        self.counts[slice_no] = fragments

    def polled(self, slice_no: int, name: str) -> None:
        key = (slice_no, name)
        self._polls[key] = self._polls.get(key, 0) + 1
        self.last_polled = max(self.last_polled, slice_no)

    def finished(self, slice_no: int) -> None:
        """The slice's repair rounds are over: forget its bookkeeping."""
        self._got.pop(slice_no, None)
        self.counts.pop(slice_no, None)
        for key in [k for k in self._polls if k[0] == slice_no]:
            del self._polls[key]
            self._answers.pop(key, None)

    def add(self, slice_no: int, name: str, missing: bytes) -> None:
        """A member's REPORT, checked against the slice it answers before it is used.

        Raises:
            RemoteProtocolError: a REPORT on a slice never polled, more REPORTs than
                POLLs, or a bitmap that does not fit the slice (a bug or a forged
                receiver: that member leaves, the group goes on).
        """
        key = (slice_no, name)
        if slice_no > self.last_polled:
            raise RemoteProtocolError(
                f"it sent a REPORT on multicast slice {slice_no}, never polled"
            )
        if slice_no not in self.counts or key not in self._polls:
            return  # late: that slice's rounds are over
        wrong = check_bitmap(missing, self.counts[slice_no])
        if wrong:
            raise RemoteProtocolError(f"its REPORT on multicast slice {slice_no} has {wrong}")
        self._answers[key] = self._answers.get(key, 0) + 1
        if self._answers[key] > self._polls[key]:
            raise RemoteProtocolError(
                f"it sent more REPORTs on multicast slice {slice_no} than POLLs"
            )
        if self._answers[key] < self._polls[key]:
            return  # answers an earlier POLL, whose round is over: a fresher one is due
        self._got.setdefault(slice_no, {})[name] = missing
        if not missing:
            self.held[name] = max(self.held.get(name, 0), self.ends.get(slice_no, 0))
        if slice_no in self._wake:
            self._wake.pop(slice_no).set()

    def wake_all(self) -> None:
        for event in self._wake.values():
            event.set()
        self._wake.clear()

    async def wait(self, slice_no: int, peers: list[_Peer], timeout: float) -> dict[str, bytes]:
        """Until every one of ``peers`` still in the group has reported on ``slice_no``
        (or ``timeout``): the reports, taken."""
        with trio.move_on_after(timeout):
            while True:
                got = self._got.get(slice_no, {})
                if all(p.name in got or p.member.evicted or p.finished.is_set() for p in peers):
                    break
                event = self._wake[slice_no] = trio.Event()
                await event.wait()
        return self._got.pop(slice_no, {})


async def _stream(
    source: Source,
    plan: Plan,
    peers: dict[str, _Peer],
    aead: AESGCM,
    session: int,
    wire: _Wire,
    reports: _Reports,
    report: Reporter,
    show: Show,
) -> None:
    """Read, encode and multicast every chunk, slice by slice; each slice's repair
    rounds run while the next slices go out (IN_FLIGHT at most)."""
    threads = default_threads()
    limiter = trio.CapacityLimiter(threads)
    stats = wire.stats
    last_show = 0.0

    # Chunks are encoded up to READ_AHEAD_BYTES ahead, in order, on the worker threads
    # (as the unicast sender does): waiting for a few at a time left cores idle.
    ahead = max(4, READ_AHEAD_BYTES // plan.chunk_size)
    encoded_send, encoded_recv = trio.open_memory_channel[tuple[trio.Event, list[Encoded]]](ahead)

    async def encode(i: int, ready: trio.Event, box: list[Encoded]) -> None:
        box.append(await trio.to_thread.run_sync(encode_chunk, source, plan, i, limiter=limiter))
        ready.set()

    async def encode_all(workers: trio.Nursery) -> None:
        async with encoded_send:
            for i in range(plan.chunk_count):
                ready, box = trio.Event(), list[Encoded]()
                await encoded_send.send((ready, box))
                workers.start_soon(encode, i, ready, box)

    async def produce(out: trio.MemorySendChannel[_Slice]) -> None:
        """Read, hash, compress and seal the next slice while the last one is on the wire
        and in its repair rounds."""
        index = 0
        slice_no = 0
        async with out, trio.open_nursery() as workers, encoded_recv:
            workers.start_soon(encode_all, workers)
            while index < plan.chunk_count:
                payload = bytearray()
                members = [p for p in peers.values() if not p.member.evicted]
                # Per member: (zero|ref|same, first, hashes) runs.  A member that holds
                # a chunk already (a resumed one: its HAVE said so) gets SAME for it;
                # the chunk goes on the wire only if some member lacks it.
                coverage: dict[str, list[tuple[str, int, list[bytes]]]] = {
                    p.name: [] for p in members
                }
                first = index
                while (
                    index < plan.chunk_count
                    and len(payload) < SLICE_BYTES
                    and index - first < SLICE_CHUNKS
                ):
                    ready, box = await encoded_recv.receive()
                    await ready.wait()
                    enc = box[0]
                    chunk = enc.chunk
                    digest = chunk.digest if chunk else zero_digest(plan.chunk_length(index))
                    needed = False
                    for p in members:
                        held = await p.have.get(index)
                        p.have.subs(index)  # a delta's sub-hashes: not used in a group
                        kind = "same" if held == digest else "ref" if chunk else "zero"
                        needed = needed or kind == "ref"
                        runs = coverage[p.name]
                        last = runs[-1] if runs else None
                        if last and last[0] == kind and last[1] + len(last[2]) == index:
                            last[2].append(digest)
                        else:
                            runs.append((kind, index, [digest]))
                    if chunk is None:
                        stats["zero"] += 1
                    elif needed:
                        payload += pack_entry(chunk)
                    index += 1
                sealed = await trio.to_thread.run_sync(
                    _seal, aead, session, slice_no, bytes(payload), limiter=limiter
                )
                await out.send(_Slice(slice_no, coverage, sealed, index, len(payload)))
                slice_no += 1

    send_slices, recv_slices = trio.open_memory_channel[_Slice](1)
    in_flight = trio.Semaphore(IN_FLIGHT)

    async def repair(sl: _Slice) -> None:
        try:
            await _repair(sl.number, sl.sealed, peers, reports, wire, show)
        finally:
            in_flight.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, send_slices)
        async for sl in recv_slices:
            await in_flight.acquire()
            await _coverage(sl, peers, show)
            if sl.sealed:
                await wire.multicast(sl.sealed, list(range(len(sl.sealed))))
                nursery.start_soon(repair, sl)
            else:
                in_flight.release()
            done = min(plan.source_size, sl.end * plan.chunk_size)
            reports.ends[sl.number] = done
            report(Progress(done, plan.source_size, stats["wire"]))
            now = time.monotonic()
            if now - last_show >= 1.0:
                last_show = now
                for p in peers.values():
                    if not p.member.evicted:
                        held = reports.held.get(p.name, 0)
                        show(p.name, "receiving", done_bytes=held, repairs=p.member.repairs)


def _seal(aead: AESGCM, session: int, number: int, payload: bytes) -> list[bytes]:
    return seal_slice(aead, session, number, payload) if payload else []


@dataclass
class _Slice:
    number: int
    coverage: dict[str, list[tuple[str, int, list[bytes]]]]  # member -> its runs
    sealed: list[bytes]
    end: int  # the first chunk after it
    length: int  # payload bytes


async def _coverage(sl: _Slice, peers: dict[str, _Peer], show: Show) -> None:
    """Tell every member what the slice covers: ZERO runs, SAME for what it holds
    already, and REF with the hashes of what comes in the slice."""
    for p in list(peers.values()):
        for kind, first, hashes in sl.coverage.get(p.name, []):
            if kind == "zero":
                await tell(p, Zero(index=first, count=len(hashes)), show)
            elif kind == "same":
                for k in range(0, len(hashes), 1024):
                    await tell(
                        p, Same(index=first + k, hashes=b"".join(hashes[k : k + 1024])), show
                    )
            else:
                for k in range(0, len(hashes), 1024):
                    ref = Ref(
                        index=first + k,
                        hashes=b"".join(hashes[k : k + 1024]),
                        slice=sl.number,
                        fragments=len(sl.sealed),
                        length=sl.length,
                    )
                    await tell(p, ref, show)


async def _repair(
    slice_no: int,
    sealed: list[bytes],
    peers: dict[str, _Peer],
    reports: _Reports,
    wire: _Wire,
    show: Show,
) -> None:
    """POLL, collect REPORTs, multicast the union of the losses; until all hold the slice."""
    n = len(sealed)
    members = {p.name: p.member for p in peers.values() if not p.member.evicted}
    state = RepairState(slice_no, n, members)
    reports.opened(slice_no, n)
    sent_this_round = n
    try:
        while not state.done:
            waiting = [peers[name] for name in state.waiting]
            for p in waiting:
                reports.polled(slice_no, p.name)
                await tell(p, Poll(slice=slice_no), show)
            for name, bits in (await reports.wait(slice_no, waiting, ROUND_WAIT)).items():
                state.report(name, from_bitmap(bits, n) if bits else [], trio.current_time())
            missing = state.next_round(trio.current_time())
            if state.losses:  # a round nobody answered says nothing about the rate
                wire.governor.on_round(sent_this_round, state.typical_loss())
            evicted = False
            for p in peers.values():
                if p.member.evicted and not p.evicted_sent:
                    p.evicted_sent = evicted = True
                    show(p.name, "evicted", why=p.member.evicted)
                    with contextlib.suppress(P2PCloneError):  # it comes back for unicast
                        await p.channel.send(Evict(reason=p.member.evicted))
            if evicted:
                reports.wake_all()  # other slices' rounds need not wait for them
            if missing:
                await wire.multicast(sealed, missing)
                sent_this_round = len(missing)
    finally:
        reports.finished(slice_no)
