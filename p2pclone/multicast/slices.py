"""The group's data: chunks encoded once (the senders' shared encode-ahead), packed
into slices, each member told its coverage over its own connection, the slice
multicast, and repair rounds until every member holds it.

Per slice: each member gets, in chunk order, ZERO runs, SAME for what it holds already
(a resumed member: its HAVE said so) and REF with the hashes of the chunks that come
in the slice (the senders' shared run merging, runs.py); the slice is sealed and
multicast; then POLL -> REPORT bitmaps -> the union of the losses multicast again,
until all hold it.  IN_FLIGHT slices may be in their repair rounds while the next
goes out.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import P2PCloneError, RemoteProtocolError
from ..pipeline import DiskSource, default_threads
from ..protocol import Chunk, Evict, Lost, Plan, Poll, Ref, Same, Zero
from ..protocol.dataplane import RateGovernor, RepairState, check_bitmap
from ..protocol.group import from_bitmap
from ..protocol.root import zero_digest
from ..sender.ahead import EncodeAhead, Slot
from ..sender.runs import ChunkKind, Emit, Runs
from ..session import Progress, Reporter
from ..transports.multicast import BurstSender
from .members import Clock, Peer, Show, tell
from .plane import pack_entry, seal_slice

#: Payload bytes per slice: big enough that a repair round's round trip is cheap next
#: to the slice's airtime, small enough that a lost-and-repaired slice stays in memory.
SLICE_BYTES = 4 << 20
#: ...and at most this many chunks (zero ones add no bytes): the encode-ahead waits for
#: resumed members' HAVE of each chunk, which they send at most HAVE_AHEAD (4096)
#: chunks past what they were told, and it runs up to two slices ahead of that
SLICE_CHUNKS = 1024
#: How long to wait for the members' reports after a round before judging the silent.
ROUND_WAIT = 2.0
#: Slices on the wire or in their repair rounds at once: the next slice goes out while
#: the members answer for the last (one at a time, the link idled a round trip per
#: slice, and more than a round trip when the receivers' cores were busy).
IN_FLIGHT = 3

#: a member's runs in one slice: (kind, first chunk, count, hashes)
Coverage = list[tuple[ChunkKind, int, int, bytes]]


@dataclass
class Wire:
    """The group's side of the data plane: the socket, the pace, what went out."""

    sock: socket.socket
    burst: BurstSender
    governor: RateGovernor
    stats: dict[str, int]
    clock: Clock = trio.current_time
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
            allowance = governor.allowance(self.clock())
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


class LossReports:
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

    async def wait(self, slice_no: int, peers: list[Peer], timeout: float) -> dict[str, bytes]:
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


@dataclass
class Slice:
    number: int
    coverage: dict[str, Coverage]  # member -> its runs
    sealed: list[bytes]
    end: int  # the first chunk after it
    length: int  # payload bytes
    whole: dict[int, Chunk]  # chunks each member gets whole over its own link (WHOLE)


class SliceStream:
    """Read, encode and multicast every chunk, slice by slice; each slice's repair
    rounds run while the next slices go out (IN_FLIGHT at most)."""

    def __init__(
        self,
        source: DiskSource,
        plan: Plan,
        peers: dict[str, Peer],
        aead: AESGCM,
        session: int,
        wire: Wire,
        reports: LossReports,
        show: Show,
    ) -> None:
        self.source, self.plan, self.peers = source, plan, peers
        self.threads = default_threads()
        self.aead, self.session, self.wire, self.reports = aead, session, wire, reports
        self.show = show
        self.stats = wire.stats
        #: source ranges sent as unreadable (zeros), for the done line
        self.unreadable: list[tuple[int, int]] = []
        self.limiter = trio.CapacityLimiter(self.threads)
        self.in_flight = trio.Semaphore(IN_FLIGHT)

    async def run(self, report: Reporter) -> None:
        plan, stats = self.plan, self.stats
        last_show = self.wire.clock()
        send_slices, recv_slices = trio.open_memory_channel[Slice](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._produce, send_slices)
            async for sl in recv_slices:
                await self.in_flight.acquire()
                await self._coverage(sl)
                if sl.sealed:
                    await self.wire.multicast(sl.sealed, list(range(len(sl.sealed))))
                    nursery.start_soon(self._repair_then_release, sl)
                else:
                    self.in_flight.release()
                done = min(plan.source_size, sl.end * plan.chunk_size)
                self.reports.ends[sl.number] = done
                report(Progress(done, plan.source_size, stats["wire"]))
                if self.wire.clock() - last_show >= 1.0:
                    last_show = self.wire.clock()
                    self._show_members()

    def _show_members(self) -> None:
        for p in self.peers.values():
            if not p.member.evicted:
                held = self.reports.held.get(p.name, 0)
                self.show(p.name, "receiving", at=held, repairs=p.member.repairs)

    async def _produce(self, out: trio.MemorySendChannel[Slice]) -> None:
        """Encode (the shared encode-ahead), pack and seal the next slice while the last
        one is on the wire and in its repair rounds."""
        ahead = EncodeAhead(self.source, self.plan, self.threads)
        async with out, trio.open_nursery() as workers:
            slots = ahead.start(workers)
            async with slots:
                pending: Slot | None = None
                slice_no = 0
                while True:
                    sl, pending = await self._fill(slice_no, slots, pending)
                    if sl is None:
                        break
                    await out.send(sl)
                    slice_no += 1

    async def _fill(
        self, slice_no: int, slots: trio.MemoryReceiveChannel[Slot], pending: Slot | None
    ) -> tuple[Slice | None, Slot | None]:
        """The next slice: chunks until SLICE_BYTES or SLICE_CHUNKS; None at the end.
        Also returns the slot read past the slice's end (a hole run that did not fit)."""
        members = [p for p in self.peers.values() if not p.member.evicted]
        coverage: dict[str, Coverage] = {p.name: [] for p in members}
        runs = {p.name: Runs(self._collect(coverage[p.name])) for p in members}
        whole: dict[int, Chunk] = {}
        payload = bytearray()
        first: int | None = None
        index = 0
        while len(payload) < SLICE_BYTES:
            if pending is None:
                try:
                    pending = await slots.receive()
                except trio.EndOfChannel:
                    break
            if first is None:
                first = pending.index
            if pending.index - first >= SLICE_CHUNKS:
                break
            slot, pending = self._split(pending, first + SLICE_CHUNKS)
            index = slot.index + max(1, slot.zero_run)
            payload += await self._add(slot, members, runs, whole)
        if first is None:
            return None, None
        for r in runs.values():
            await r.flush()
        sealed = await trio.to_thread.run_sync(
            _seal, self.aead, self.session, slice_no, bytes(payload), limiter=self.limiter
        )
        return Slice(slice_no, coverage, sealed, index, len(payload), whole), pending

    @staticmethod
    def _split(slot: Slot, limit: int) -> tuple[Slot, Slot | None]:
        """A hole run that crosses ``limit`` is cut there; the rest waits for the next slice."""
        if slot.zero_run and slot.index + slot.zero_run > limit:
            return Slot(slot.index, zero_run=limit - slot.index), Slot(
                limit, zero_run=slot.index + slot.zero_run - limit
            )
        return slot, None

    @staticmethod
    def _collect(into: Coverage) -> Emit:
        async def emit(kind: ChunkKind, first: int, count: int, hashes: bytes) -> None:
            into.append((kind, first, count, hashes))

        return emit

    async def _add(
        self, slot: Slot, members: list[Peer], runs: dict[str, Runs], whole: dict[int, Chunk]
    ) -> bytes:
        """One slot into every member's runs; the payload it adds to the slice."""
        plan = self.plan
        if slot.zero_run:
            self.stats["zero"] += slot.zero_run
            for i in range(slot.index, slot.index + slot.zero_run):
                digest = zero_digest(plan.chunk_length(i))
                for p in members:
                    held = await p.have.get(i)
                    kind = ChunkKind.SAME if held == digest else ChunkKind.ZERO
                    await runs[p.name].add(kind, i, digest if kind is ChunkKind.SAME else b"")
            return b""
        enc = await slot.encoded()
        chunk, needed = enc.chunk, False
        if chunk is not None and chunk.unreadable:
            # Whole, to each member over its own link, even to one that holds it: every
            # member must hear which ranges are zeros from the sender itself.
            whole[slot.index] = chunk
            self.unreadable += chunk.unreadable
            for p in members:
                await p.have.get(slot.index)
                p.have.subs(slot.index)
                await runs[p.name].add(ChunkKind.WHOLE, slot.index)
            return b""
        digest = chunk.digest if chunk else zero_digest(plan.chunk_length(slot.index))
        for p in members:
            held = await p.have.get(slot.index)
            p.have.subs(slot.index)  # a delta's sub-hashes: not used in a group
            if enc.lost:
                kind = ChunkKind.LOST
            elif held == digest:
                kind = ChunkKind.SAME
            else:
                kind = ChunkKind.REF if chunk else ChunkKind.ZERO
            needed = needed or kind is ChunkKind.REF
            hashes = digest if kind in (ChunkKind.SAME, ChunkKind.REF) else b""
            await runs[p.name].add(kind, slot.index, hashes)
        if chunk is None and not enc.lost:
            self.stats["zero"] += 1
        return pack_entry(chunk) if chunk is not None and needed else b""

    async def _coverage(self, sl: Slice) -> None:
        """Tell every member what the slice covers, in chunk order."""
        for p in list(self.peers.values()):
            for kind, first, count, hashes in sl.coverage.get(p.name, []):
                match kind:
                    case ChunkKind.ZERO:
                        await tell(p, Zero(index=first, count=count), self.show)
                    case ChunkKind.SAME:
                        await tell(p, Same(index=first, hashes=hashes), self.show)
                    case ChunkKind.LOST:
                        await tell(p, Lost(index=first, count=count), self.show)
                    case ChunkKind.WHOLE:
                        for i in range(first, first + count):
                            await tell(p, sl.whole[i], self.show)
                    case ChunkKind.REF:
                        ref = Ref(
                            index=first,
                            hashes=hashes,
                            slice=sl.number,
                            fragments=len(sl.sealed),
                            length=sl.length,
                        )
                        await tell(p, ref, self.show)

    async def _repair_then_release(self, sl: Slice) -> None:
        try:
            await self._repair(sl.number, sl.sealed)
        finally:
            self.in_flight.release()

    async def _repair(self, slice_no: int, sealed: list[bytes]) -> None:
        """POLL, collect REPORTs, multicast the union of the losses; until all hold it."""
        peers, reports, clock = self.peers, self.reports, self.wire.clock
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
                    await tell(p, Poll(slice=slice_no), self.show)
                for name, bits in (await reports.wait(slice_no, waiting, ROUND_WAIT)).items():
                    state.report(name, from_bitmap(bits, n) if bits else [], clock())
                missing = state.next_round(clock())
                if state.losses:  # a round nobody answered says nothing about the rate
                    self.wire.governor.on_round(sent_this_round, state.typical_loss())
                if await self._evict_new():
                    reports.wake_all()  # other slices' rounds need not wait for them
                if missing:
                    await self.wire.multicast(sealed, missing)
                    sent_this_round = len(missing)
        finally:
            reports.finished(slice_no)

    async def _evict_new(self) -> bool:
        """Tell the members evicted since the last round (they come back for unicast)."""
        evicted = False
        for p in self.peers.values():
            if p.member.evicted and not p.evicted_sent:
                p.evicted_sent = evicted = True
                self.show(p.name, "evicted", why=p.member.evicted)
                with contextlib.suppress(P2PCloneError):
                    await p.channel.send(Evict(reason=p.member.evicted))
        return evicted


def _seal(aead: AESGCM, session: int, number: int, payload: bytes) -> list[bytes]:
    return seal_slice(aead, session, number, payload) if payload else []
