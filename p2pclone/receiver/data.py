"""The receiver's data phase: frames -> checked chunks -> target, with HAVE reports,
journal commits, and a feed (a multicast group's data plane) if the session has one.

A semaphore (``room``) bounds the chunks received but not yet written, so memory does
not grow with the disk; writes run in worker threads.  The connection checks that the
chunks cover the plan once, in order; this loop checks that each is what its hash says
(in ``write_chunk``) and that SAME only names chunks this receiver reported.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, assert_never

import blake3
import trio

from ..disks import Target
from ..errors import IntegrityError, RemoteProtocolError, TransportError
from ..journal import Journal
from ..meter import Meter, in_flight
from ..pipeline import (
    SUB_BLOCK,
    apply_patch,
    chunk_span,
    sub_hashes,
    write_chunk,
    zero_chunks,
)
from ..protocol import (
    HASH_SIZE,
    SUB_HASH_SIZE,
    Ack,
    Chunk,
    End,
    Error,
    Event,
    Later,
    Lost,
    Patch,
    Plan,
    Same,
    State,
    Zero,
)
from ..protocol.root import zero_digest
from ..session import TICK, Channel, HaveReport, Notice, Progress, Reporter, Rescuing
from .feed import Feed
from .verify import NullLog, fetch_again

UNKNOWN = bytes(HASH_SIZE)
#: Start writeback after this many bytes, so the final fsync has little left to do.
WRITEBACK_EVERY = 64 * 1024 * 1024
#: Commit the journal (fsync target, append, fsync journal, ACK) this often ...
COMMIT_SECONDS = 1.0
#: ... or after this many bytes written, whichever comes first.
COMMIT_BYTES = 64 * 1024 * 1024
#: Chunks per HAVE frame when the target is hashed (a delta scan, or re-checking what
#: the journal claims): small, so the first report goes out after a short read.
DELTA_BATCH = 64

#: the frames the unicast data phase handles itself; any other goes to the feed
DataFrame = Chunk | Zero | Same | Lost | Later | Patch | End | Error
_DATA_FRAMES = (Chunk, Zero, Same, Lost, Later, Patch, End, Error)


class DataState:
    """The receiver's data phase: writes, HAVE reports, journal commits."""

    def __init__(
        self,
        channel: Channel,
        target: Target,
        plan: Plan,
        journal: Journal | None,
        log: IO[bytes] | NullLog,
        threads: int,
        report: Reporter,
        feed: Feed | None = None,
    ) -> None:
        self.channel, self.target, self.plan = channel, target, plan
        self.journal, self.log, self.threads, self.report = journal, log, threads, report
        self.feed = feed
        self.limiter = trio.CapacityLimiter(threads)
        # Chunks received but not yet written: a few per thread, at most ~32 MiB of them.
        self.room = trio.Semaphore(max(2, min(2 * threads + 4, (32 << 20) // plan.chunk_size)))
        self.pending: list[tuple[int, bytes | None]] = []  # not journaled yet (None: bad)
        self.pending_bytes = 0
        self.commit_now = trio.Event()
        self.commit_lock = trio.Lock()
        self.announced: dict[int, bytes] = {}  # what our HAVE frames said, until used
        self.zero_total = 0
        self.same_total = 0
        self.lost: list[int] = []  # chunks the sender could not provide (LOST)
        #: source byte ranges the sender could not read (zeros here): exit 7
        self.unreadable: list[tuple[int, int]] = []
        #: chunks a failing source left for its second pass (LATER), not yet here; and
        #: the bytes of that pass, and how many have come
        self.later: set[int] = set()
        self.late_total = self.late_done = 0
        #: counts progress in used bytes (a smaller target's cut is free here too)
        self.meter = Meter(plan.source_size, target.free or plan.free)
        # Chunks the feed held wrong (or not at all): fetched again over our own
        # connection after END.  A feed's data is never trusted by itself.
        self.refetch: dict[int, bytes] = {}
        self.have: HaveReport | None = None
        self.told_changed = False  # a Notice said the target changed since the journal
        self._writers: trio.Nursery | None = None
        self._unflushed = 0

    async def run(self, delta: bool) -> End:
        async with trio.open_nursery() as nursery:
            if self.channel.conn.have_expected:
                self.have = self._have_report(delta)
                nursery.start_soon(self.have.run)
            if self.journal is not None:
                nursery.start_soon(self._committer)
            nursery.start_soon(self._tick)
            end = await self._receive()
            nursery.cancel_scope.cancel()  # the helpers; writers finish (threads can't stop)
        if self.refetch:
            await self._fetch(self.refetch)
        await self.commit(ack=True)
        self.report(self._progress(done=True))
        return end

    async def _tick(self) -> None:
        """The progress every TICK seconds; a chunk under way by its bytes arrived."""
        while True:
            self.report(self._progress())
            await trio.sleep(TICK)

    def _progress(self, *, done: bool = False) -> Progress:
        conn = self.channel.conn
        if self.late_done:  # the second pass over a failing source
            finished = self.late_total if done else self.late_done
            return Progress.of(finished, self.late_total, conn.bytes_in, self.unreadable)
        chunk = self.plan.chunk_size
        position = in_flight(conn.chunks_done * chunk, *conn.chunk_arriving(), chunk)
        used = self.meter.total if done else self.meter.used_before(position)
        return Progress.of(used, self.meter.total, conn.bytes_arrived, self.unreadable)

    async def _receive(self) -> End:
        async with trio.open_nursery() as writers:
            self._writers = writers
            while True:
                event = await self.channel.receive()
                if event is None:
                    raise TransportError(
                        f"the sender closed the link {self.channel.url} before the end: the "
                        "transfer was interrupted and the target is incomplete; run both sides "
                        "again (the receiver resumes where it stopped)"
                    )
                if not isinstance(event, _DATA_FRAMES):
                    await self._other(event)
                elif isinstance(event, End):
                    if self.feed is not None:
                        await self.feed.end(self)
                    break
                else:
                    await self._data(event)
                if self.have is not None:
                    self.have.moved()
        return event

    async def _other(self, event: Event) -> None:
        """A frame that is not unicast data: the feed's, or a protocol error."""
        if self.feed is None:
            raise RemoteProtocolError(
                f"{type(event).__name__} frame in a session without a multicast group"
            )
        await self.feed.handle(event, self)

    async def _data(self, event: DataFrame) -> None:
        match event:
            case Chunk() if event.index in self.later:
                self._late(event)
                await self.room.acquire()
                self.start_soon(lambda: self._write(event))
            case Chunk():
                self.unreadable += event.unreadable
                await self.room.acquire()
                self.promised({event.index: event.digest})
                self.start_soon(lambda: self._write(event))
                self._unflushed += event.length
                if self._unflushed >= WRITEBACK_EVERY and self.journal is None:
                    self._unflushed = 0
                    await self.room.acquire()
                    self.start_soon(self._writeback)
            case Patch():
                await self.room.acquire()
                self.promised({event.index: event.digest})
                self.start_soon(lambda: self._patch(event))
            case Zero():
                await self.room.acquire()
                self.zero_total += event.count
                plan = self.plan
                self.promised(
                    {
                        i: zero_digest(plan.chunk_length(i))
                        for i in range(event.index, event.index + event.count)
                    }
                )
                self.start_soon(lambda: self._zero(event))
            case Same():
                self._same(event)
            case Lost():
                for i in range(event.index, event.index + event.count):
                    self.announced.pop(i, None)
                    self.lost.append(i)
            case Later():
                span = range(event.index, event.index + event.count)
                for i in span:
                    self.announced.pop(i, None)
                self.later.update(span)
                self.late_total += sum(self.plan.chunk_length(i) for i in span)
                self.log.write(bytes(HASH_SIZE) * event.count)  # its place, for now
            case Error():
                raise self.channel.peer_error(event)
            case End():  # handled by the loop
                pass
            case _:
                assert_never(event)

    def _late(self, chunk: Chunk) -> None:
        """A chunk the first pass left for later: its hash into its place in the log."""
        if not self.late_done:
            self.report(Rescuing(len(self.later), self.late_total))
        self.later.discard(chunk.index)
        self.late_done += chunk.length
        self.unreadable += chunk.unreadable
        if not isinstance(self.log, NullLog):
            self.log.flush()
            os.pwrite(self.log.fileno(), chunk.digest, HASH_SIZE * chunk.index)

    # -- what a feed may use (feed.Sink) ------------------------------------------------

    def promised(self, hashes: dict[int, bytes]) -> None:
        for i, digest in hashes.items():
            self.announced.pop(i, None)
            self.log.write(digest)

    async def deliver(self, chunk: Chunk) -> None:
        if chunk.length != self.plan.chunk_length(chunk.index):
            self.refetch[chunk.index] = chunk.digest  # not the chunk promised: fetch it
            return
        await self.room.acquire()
        self.start_soon(lambda: self._write_delivered(chunk))

    def fetch_again(self, wanted: dict[int, bytes]) -> None:
        self.refetch.update(wanted)

    async def send(self, event: Event) -> None:
        await self.channel.send(event)

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._writers is not None
        self._writers.start_soon(fn)

    # -- writing --------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., None], *args: object) -> None:
        try:
            await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.room.release()

    async def _writeback(self) -> None:
        await self._in_thread(self.target.start_writeback)

    async def _write(self, chunk: Chunk) -> None:
        await self._in_thread(write_chunk, self.target, chunk, self.plan)
        # A chunk with unreadable source sectors is journaled as such: a rerun reads
        # it again (and, the rest held, nothing else: ACCEPT's rescue).
        self._written([(chunk.index, None if chunk.unreadable else chunk.digest)], chunk.length)

    async def _write_delivered(self, chunk: Chunk) -> None:
        """A chunk from the feed: anyone holding a multicast group's key can seal one,
        so one that fails our plan's hash is fetched again, not fatal (nothing of it
        is written: the check comes first)."""
        try:
            await self._write(chunk)
        except IntegrityError:
            self.refetch[chunk.index] = chunk.digest

    async def _fetch(self, wanted: dict[int, bytes]) -> None:
        """Ask the sender for these chunks again (NAK) over our own connection and
        write them; they must carry the hashes our plan gave."""
        await fetch_again(self.channel, self.target, self.plan, wanted)
        for index in sorted(wanted):
            self._written([(index, wanted[index])], self.plan.chunk_length(index))

    async def _patch(self, patch: Patch) -> None:
        await self._in_thread(apply_patch, self.target, patch, self.plan, SUB_BLOCK)
        self._written([(patch.index, patch.digest)], patch.length)

    async def _zero(self, event: Zero) -> None:
        await self._in_thread(zero_chunks, self.target, self.plan, event.index, event.count)
        plan = self.plan
        self._written(
            [
                (i, zero_digest(plan.chunk_length(i)))
                for i in range(event.index, event.index + event.count)
            ],
            0,
        )

    def _same(self, event: Same) -> None:
        """Chunks we said we hold: check the sender agrees with what we announced."""
        fresh: list[tuple[int, bytes]] = []
        for k in range(event.count):
            i = event.index + k
            digest = event.hashes[HASH_SIZE * k : HASH_SIZE * (k + 1)]
            if self.announced.pop(i, None) != digest:
                raise RemoteProtocolError(
                    f"the sender called chunk {i} unchanged although it differs from what this "
                    "receiver reported: refusing to trust it"
                )
            self.log.write(digest)
            if self.journal is not None and i not in self.journal.have:
                fresh.append((i, digest))
        self.same_total += event.count
        self._written(fresh, 0)

    # -- the journal ----------------------------------------------------------------------

    def _written(self, entries: Sequence[tuple[int, bytes | None]], nbytes: int) -> None:
        self.pending += entries
        self.pending_bytes += nbytes
        if self.pending_bytes >= COMMIT_BYTES:
            self.commit_now.set()

    async def _committer(self) -> None:
        while True:
            with trio.move_on_after(COMMIT_SECONDS):
                await self.commit_now.wait()
            await self.commit(ack=True)

    async def commit(self, *, ack: bool) -> None:
        """Make what is written durable, then journal it, then tell the sender."""
        if self.journal is None:
            return
        async with self.commit_lock:
            self.commit_now = trio.Event()
            entries, self.pending, self.pending_bytes = self.pending, [], 0
            if not entries:
                return
            # Shielded: once taken off ``pending`` these entries are journaled or lost.
            # A cancellation (Ctrl-C, SIGTERM, END) during the fsync used to drop them,
            # often every chunk since the last commit: a rerun sent them all again.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.target.sync)
                await trio.to_thread.run_sync(self.journal.commit, entries)
            if ack and self.channel.conn.state in (State.DATA, State.FINISH):
                await self.channel.send(Ack(durable=len(self.journal.have)))

    # -- what the target holds already (HAVE) --------------------------------------------

    def _have_report(self, delta: bool) -> HaveReport:
        """HAVE frames for every chunk, in order: target hashes (a delta), or the
        journal's entries that the target still backs."""
        plan = self.plan
        # A delta HAVE carries sub-hashes too: keep its meta well inside MAX_META.
        per_chunk = HASH_SIZE + SUB_HASH_SIZE * -(-plan.chunk_size // SUB_BLOCK)
        step = max(1, min(DELTA_BATCH, (48 * 1024) // per_chunk)) if delta else DELTA_BATCH

        async def batch(indices: Sequence[int]) -> tuple[list[bytes], bytes]:
            if delta:
                hashes, subs = await self._hash_batch(indices, subs=True)
            else:
                hashes, subs = await self._held(indices), b""
            for i, digest in zip(indices, hashes, strict=True):
                if digest != UNKNOWN:
                    self.announced[i] = digest
            return hashes, subs

        return HaveReport(self.channel, plan, step, batch)

    async def _hash_batch(self, indices: Sequence[int], *, subs: bool) -> tuple[list[bytes], bytes]:
        """Hash these target chunks on all worker threads at once; results in order
        (with ``subs``, also each chunk's sub-block hashes)."""
        parts = max(1, min(self.threads, len(indices)))
        bounds = [len(indices) * k // parts for k in range(parts + 1)]
        results: list[tuple[list[bytes], bytes]] = [([], b"")] * parts

        async def one(k: int) -> None:
            results[k] = await trio.to_thread.run_sync(
                _hash_chunks,
                self.target,
                self.plan,
                indices[bounds[k] : bounds[k + 1]],
                subs,
                limiter=self.limiter,
            )

        async with trio.open_nursery() as nursery:
            for k in range(parts):
                nursery.start_soon(one, k)
        return [h for part, _ in results for h in part], b"".join(s for _, s in results)

    async def _held(self, indices: Sequence[int]) -> list[bytes]:
        """What the journal says the target holds at ``indices``, each claim re-hashed
        on the target first (UNKNOWN where it holds nothing or something else).

        The journal proves what was written, not that it is still there: the target may
        have been wiped or rewritten between the runs.  A claim the target does not back
        is withdrawn, durably, and the chunk is sent again.  This costs a read of the
        part already cloned, in parallel with the sender's read of its source.
        """
        assert self.journal is not None
        claimed = {i: h for i in indices if (h := self.journal.have.get(i)) is not None}
        if not claimed:
            return [UNKNOWN] * len(indices)
        actual, _ = await self._hash_batch(list(claimed), subs=False)
        bad = [i for i, digest in zip(claimed, actual, strict=True) if digest != claimed[i]]
        if bad:
            async with self.commit_lock:  # the journal's file and table: one writer
                await trio.to_thread.run_sync(self.journal.forget, bad)
            if not self.told_changed:
                self.told_changed = True
                self.report(
                    Notice(
                        f"the target {self.target.path} changed since the interrupted run "
                        f"({chunk_span(self.plan, bad[0])} no longer hold what was cloned "
                        "there): what the journal claims is checked chunk by chunk, and "
                        "whatever differs is sent again"
                    )
                )
            for i in bad:
                del claimed[i]
        return [claimed.get(i, UNKNOWN) for i in indices]


def _hash_chunks(
    target: Target, plan: Plan, indices: Sequence[int], subs: bool
) -> tuple[list[bytes], bytes]:
    """Whole-chunk hashes of these target chunks, and with ``subs`` their sub-block hashes."""
    if not indices:
        return [], b""
    # Have the kernel fetch what follows while this batch is hashed: reading and
    # hashing then overlap, and the scan runs at the disk's sequential speed.
    target.prefetch((indices[-1] + 1) * plan.chunk_size, len(indices) * plan.chunk_size)
    hashes, sub = [], []
    for i in indices:
        data = target.read(i * plan.chunk_size, plan.chunk_length(i))
        hashes.append(blake3.blake3(data).digest())
        if subs:
            sub.append(sub_hashes(data, SUB_BLOCK))
    return hashes, b"".join(sub)
