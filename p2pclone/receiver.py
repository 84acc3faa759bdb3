"""The receiving driver: transport -> frames -> checked chunks -> target.

Order of a session, and why:

1. The target is checked (and a block device opened exclusively) *before* listening,
   so a wrong path fails at once, not after the sender has connected.
2. HELLO both ways, then the sender's PLAN.  The target refuses a plan it can't hold
   (ERROR, exit 4) before a single byte is written; ``confirm`` (the CLI's question
   to the operator) runs here too.  Only then does the target get created or sized
   and the receiver answer STATE (accept).
3. Data: each CHUNK is decompressed (bounded by its declared length), hashed and
   written by a worker thread; ZERO runs are zeroed (holes in a file, BLKZEROOUT on
   a device).  A semaphore bounds the chunks in flight, so memory does not grow with
   the disk.  The connection checks that chunks cover the plan once, in order.
4. END: wait for every write, fsync, compare root hashes; with ``verify``, drop the
   cache and re-read the whole target against the chunk hashes.  Only then RESULT.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import blake3
import trio

from .disks import Target
from .endpoints import Kind, resolve
from .errors import (
    IntegrityError,
    P2PCloneError,
    RemoteProtocolError,
    TargetError,
    TransportError,
)
from .image.link import PlayerListener, clean_url
from .image.reader import ImageSource
from .journal import Header, Journal, check_state_dir, default_state_dir
from .multicast.dataplane import DatagramError
from .multicast.plane import ReceivePlane, unpack_entries
from .pipeline import (
    SUB_BLOCK,
    apply_patch,
    chunk_span,
    default_threads,
    hash_target_chunk,
    sub_hashes,
    write_chunk,
    zero_chunks,
)
from .protocol import (
    HASH_SIZE,
    MAX_HASHES,
    SUB_HASH_SIZE,
    Accept,
    Ack,
    Chunk,
    Connection,
    End,
    Error,
    Evict,
    Group,
    Have,
    Lost,
    Nak,
    Patch,
    Plan,
    Poll,
    Ref,
    Report,
    Result,
    Role,
    Same,
    State,
    Zero,
)
from .protocol.connection import zero_digest
from .sender import send_stream
from .session import (
    Channel,
    Connected,
    Done,
    Listening,
    Notice,
    Planned,
    Progress,
    Reporter,
    Verifying,
    no_report,
    pair,
    pick_error,
)
from .units import human_bytes

Confirm = Callable[[Plan, Target], None]

#: Start writeback after this many bytes, so the final fsync has little left to do.
WRITEBACK_EVERY = 64 * 1024 * 1024


def _no_confirm(plan: Plan, target: Target) -> None:
    pass


@dataclass
class Options:
    """How a receiver runs (see :func:`receive`)."""

    verify: bool = False
    confirm: Confirm = _no_confirm
    threads: int = 1
    journal: bool = True
    state_dir: Path | None = None
    fresh: bool = False
    delta: bool = False
    #: multicast: the group's data plane (chunks referenced by REF frames arrive there)
    plane: ReceivePlane | None = None


class Evicted(Exception):
    """Multicast: the sender took this receiver out of the group (EVICT); the caller
    connects again for a unicast session, which resumes from the journal."""


async def receive(
    target_path: str,
    url: str,
    *,
    code: str,
    verify: bool = False,
    confirm: Confirm = _no_confirm,
    threads: int | None = None,
    journal: bool = True,
    state_dir: str | Path | None = None,
    fresh: bool = False,
    delta: bool = False,
    password: str | None = None,
    report: Reporter = no_report,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> Done:
    """Listen at ``url``, receive one clone into ``target_path``; return the statistics.

    ``task_status.started()`` gets the URL actually listened on (with the real port).
    ``confirm(plan, target)`` may raise to refuse the plan (before anything is written).
    With ``journal`` (the default) progress is journaled in ``state_dir`` and an
    interrupted clone resumes where it stopped (``fresh`` ignores an old journal);
    ``delta`` hashes the current target so only chunks that differ are sent.
    ``url`` may be an image (file:// or smb://; ``code`` is its passphrase, ``password``
    the SMB password): the image is restored onto the target.

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    endpoint = resolve(url)
    if journal:  # before listening: a sender should not connect only to hear of it
        await trio.to_thread.run_sync(
            check_state_dir, Path(state_dir) if state_dir else default_state_dir()
        )
    if endpoint.kind is Kind.GROUP:
        return await endpoint.group().receive(
            target_path,
            url,
            code=code,
            report=report,
            task_status=task_status,
            verify=verify,
            confirm=confirm,
            threads=threads,
            journal=journal,
            state_dir=state_dir,
            fresh=fresh,
            delta=delta,
        )
    image = endpoint.kind is Kind.IMAGE
    # An image's player plays the sender's part in this process: the sending session.
    transport = None if image else endpoint.transport(code=code, password=password)
    if image:
        clean_url(url)  # a malformed image URL is a usage error before the target is opened
    target = await trio.to_thread.run_sync(Target.open, target_path)
    try:
        listener = (
            PlayerListener(url, code=code, password=password, play=_play)
            if transport is None
            else await transport.listen()
        )
        try:
            # An image's passphrase is nobody's business on the screen.
            report(Listening(listener.url, "" if image else code))
            task_status.started(listener.url)
            stream = await listener.accept()
            url = listener.url  # name the link by the real address from now on
        finally:
            await listener.aclose()
        report(Connected(url))
        done = await receive_stream(
            stream,
            target,
            code=code,
            url=url,
            verify=verify,
            confirm=confirm,
            threads=threads,
            journal=journal,
            state_dir=state_dir,
            fresh=fresh,
            delta=delta,
            report=report,
            seal=not image,
        )
        if listener.caveat:
            raise IntegrityError(listener.caveat, code="salvaged")
        return done
    finally:
        target.close()


async def _play(stream: trio.abc.Stream, source: ImageSource, url: str, code: str) -> None:
    """An image's player: the sending session, reading the image."""
    await send_stream(stream, source, code=code, url=url, chunk_size=source.chunk_size, seal=False)


async def receive_stream(
    stream: trio.abc.Stream,
    target: Target,
    *,
    code: str,
    url: str = "stream",
    verify: bool = False,
    confirm: Confirm = _no_confirm,
    threads: int | None = None,
    journal: bool = True,
    state_dir: str | Path | None = None,
    fresh: bool = False,
    delta: bool = False,
    report: Reporter = no_report,
    seal: bool = True,
    plane: ReceivePlane | None = None,
) -> Done:
    """Run a receiving session over an already open ``stream`` (closed on return)."""
    opts = Options(
        verify=verify,
        confirm=confirm,
        threads=threads or default_threads(),
        journal=journal,
        state_dir=Path(state_dir) if state_dir else None,
        fresh=fresh,
        delta=delta,
        plane=plane,
    )
    channel = Channel(Connection(Role.RECEIVER, code=code, seal=seal), stream, url)
    try:
        return await _session(channel, target, opts, report)
    except BaseException as exc:
        await channel.fail(pick_error(exc))
        raise


async def _session(channel: Channel, target: Target, opts: Options, report: Reporter) -> Done:
    started = trio.current_time()
    await pair(channel)
    plan = await channel.expect(Plan, "the sender's PLAN")
    target.check_plan(plan.source_size, plan.source)
    opts.confirm(plan, target)
    await trio.to_thread.run_sync(target.prepare, plan.source_size)
    short = target.space_shortfall(plan.source_size)
    if short:
        report(
            Notice(
                f"the filesystem holding {target.path} has {human_bytes(short)} less free "
                f"space than the source's {human_bytes(plan.source_size)}: the clone fits "
                "only if enough of the source is zero (kept as holes); else it stops and "
                "resumes once space is freed"
            )
        )
    journal = None
    if opts.journal:
        header = Header(plan.chunk_size, plan.source_size, target.identity(), target.medium())
        journal = await trio.to_thread.run_sync(
            functools.partial(
                Journal.open, opts.state_dir or default_state_dir(), header, fresh=opts.fresh
            )
        )
        if journal.replaced:
            report(
                Notice(
                    f"the target {target.path} was replaced since the interrupted run "
                    "(another file at the same path): that run's journal was discarded and "
                    "the clone starts over"
                )
            )
    delta = opts.delta or plan.delta
    await channel.send(
        Accept(
            target=target.describe(),
            have=delta or bool(journal and journal.have),
            sub=SUB_BLOCK if delta else 0,
        )
    )
    report(
        Planned(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, target.describe())
    )
    repaired = 0
    try:
        hash_log = tempfile.TemporaryFile(prefix="p2pclone-") if opts.verify else _NullLog()  # noqa: SIM115 - closed by the with below
        with hash_log as log:
            state = _DataState(channel, target, plan, journal, log, opts.threads, report)
            state.plane = opts.plane
            try:
                end = await state.run(delta)
                repaired = len(state.refetch)
            except BaseException as exc:
                # Keep what was written: a re-run resumes after it.
                with trio.CancelScope(shield=True), contextlib.suppress(P2PCloneError):
                    await state.commit(ack=False)
                raise pick_error(exc) from None
            try:
                await trio.to_thread.run_sync(target.sync)
                if end.root != channel.conn.root_digest():
                    raise IntegrityError(
                        "the root hash over all chunks differs from the sender's: the copy is "
                        "not identical; run the clone again"
                    )
                if opts.verify and not state.lost:
                    bad = await _verify(target, plan, log, opts.threads, report)
                    if bad:
                        await _repair(channel, target, plan, bad, journal)
                        repaired += len(bad)
            except (IntegrityError, TargetError):
                # The journal vouches for data the target may not hold: a re-run must
                # not trust it.
                if journal is not None:
                    await trio.to_thread.run_sync(journal.finish)
                    journal = None
                raise
    finally:
        if journal is not None:
            journal.close()
    if state.lost:
        # Everything else is written, durable and journaled: a run from a repaired
        # source resumes after it.  This is still not a clone.
        raise IntegrityError(
            f"the sender could not provide {len(state.lost)} chunks ({_spans(plan, state.lost)}): "
            "its image is damaged or incomplete there; those ranges of the target were not "
            "written, everything else was written and checked"
        )
    if journal is not None:
        await trio.to_thread.run_sync(journal.finish)
    why = await trio.to_thread.run_sync(target.reread_partitions)
    if why is not None:
        report(
            Notice(
                f"the kernel did not re-read the partition table of {target.path} ({why}): "
                f"its new partitions appear after `partprobe {target.path}` or a reboot"
            )
        )
    # Our own root (equal to END's, checked above): the sender checks it against its own.
    await channel.send(Result(root=channel.conn.root_digest(), verified=opts.verify))
    done = Done(
        source_bytes=plan.source_size,
        # the control connection, both ways, and the group's datagrams it received
        wire_bytes=channel.conn.bytes_in
        + channel.conn.bytes_out
        + (opts.plane.bytes_in if opts.plane else 0),
        chunks=plan.chunk_count,
        zero_chunks=state.zero_total,
        same_chunks=state.same_total,
        digest=end.root.hex(),
        seconds=trio.current_time() - started,
        verified=opts.verify,
        repaired_chunks=repaired,
    )
    await channel.close()
    return done


class _NullLog:
    """Stands in for the hash log when nothing will be verified."""

    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self) -> _NullLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


UNKNOWN = bytes(HASH_SIZE)
#: Commit the journal (fsync target, append, fsync journal, ACK) this often ...
COMMIT_SECONDS = 1.0
#: ... or after this many bytes written, whichever comes first.
COMMIT_BYTES = 64 * 1024 * 1024
#: Chunks per HAVE frame when the target is hashed (a delta scan, or re-checking what
#: the journal claims): small, so the first report goes out after a short read.
DELTA_BATCH = 64
#: How far (in chunks) HAVE reports may run ahead of the data received.
HAVE_AHEAD = 4096


class _DataState:
    """The receiver's data phase: writes, HAVE reports, journal commits."""

    def __init__(
        self,
        channel: Channel,
        target: Target,
        plan: Plan,
        journal: Journal | None,
        log: IO[bytes] | _NullLog,
        threads: int,
        report: Reporter,
    ) -> None:
        self.channel, self.target, self.plan = channel, target, plan
        self.journal, self.log, self.threads, self.report = journal, log, threads, report
        self.limiter = trio.CapacityLimiter(threads)
        # Chunks received but not yet written: a few per thread, at most ~32 MiB of them.
        self.room = trio.Semaphore(max(2, min(2 * threads + 4, (32 << 20) // plan.chunk_size)))
        self.pending: list[tuple[int, bytes]] = []  # written, not yet journaled
        self.pending_bytes = 0
        self.commit_now = trio.Event()
        self.commit_lock = trio.Lock()
        self.announced: dict[int, bytes] = {}  # what our HAVE frames said, until used
        self.zero_total = 0
        self.same_total = 0
        self.lost: list[int] = []  # chunks the sender could not provide (LOST)
        self.plane: ReceivePlane | None = None  # multicast data plane, if any
        self.slices_due: set[int] = set()
        # Chunks a whole multicast slice held wrong (or not at all): fetched again
        # over our own connection after END.  Group data is never trusted by itself.
        self.refetch: dict[int, bytes] = {}
        self._plane_scope = trio.CancelScope()
        self.progressed = trio.Event()  # the data moved on (wakes the HAVE sender)
        self.told_changed = False  # a Notice said the target changed since the journal

    async def run(self, delta: bool) -> End:
        async with trio.open_nursery() as nursery:
            if self.channel.conn.have_expected:
                nursery.start_soon(self._send_have, delta)
            if self.journal is not None:
                nursery.start_soon(self._committer)
            end = await self._receive(nursery)
            nursery.cancel_scope.cancel()  # the helpers; writers finish (threads can't stop)
        if self.refetch:
            await self._fetch(self.refetch)
        await self.commit(ack=True)
        self.report(
            Progress(self.plan.source_size, self.plan.source_size, self.channel.conn.bytes_in)
        )
        return end

    async def _receive(self, nursery: trio.Nursery) -> End:
        plan, conn = self.plan, self.channel.conn
        last_report = -1.0
        unflushed = 0
        async with trio.open_nursery() as writers:
            while True:
                event = await self.channel.receive()
                if event is None:
                    raise TransportError(
                        f"the sender closed the link {self.channel.url} before the end: the "
                        "transfer was interrupted and the target is incomplete; run both sides "
                        "again (the receiver resumes where it stopped)"
                    )
                if isinstance(event, Error):
                    raise self.channel.peer_error(event)
                if isinstance(event, End):
                    if self.plane is not None:
                        # Slices completed since the last POLL (or still in the socket):
                        # hand them to the writers before judging.
                        await self._take_slices(writers, None)
                    self._plane_scope.cancel()
                    if self.slices_due:
                        raise IntegrityError(
                            f"multicast slices {sorted(self.slices_due)[:5]} never arrived "
                            "whole, yet the sender ended: run the receiver again (it resumes)"
                        )
                    break
                if isinstance(event, Chunk):
                    await self.room.acquire()
                    self.announced.pop(event.index, None)
                    self.log.write(event.digest)
                    writers.start_soon(self._write, event)
                    unflushed += event.length
                    if unflushed >= WRITEBACK_EVERY and self.journal is None:
                        unflushed = 0
                        await self.room.acquire()
                        writers.start_soon(self._in_thread, self.target.start_writeback)
                elif isinstance(event, Zero):
                    await self.room.acquire()
                    self.zero_total += event.count
                    for i in range(event.index, event.index + event.count):
                        self.announced.pop(i, None)
                        self.log.write(zero_digest(plan.chunk_length(i)))
                    writers.start_soon(self._zero, event)
                elif isinstance(event, Same):
                    self._same(event)
                elif isinstance(event, Lost):
                    for i in range(event.index, event.index + event.count):
                        self.announced.pop(i, None)
                        self.lost.append(i)
                elif isinstance(event, Group):
                    if self.plane is None:
                        raise RemoteProtocolError("GROUP outside a multicast session")
                    self.plane.start(event.key, event.session)
                    writers.start_soon(self._run_plane)
                elif isinstance(event, Ref):
                    if self.plane is None:
                        raise RemoteProtocolError("REF outside a multicast session")
                    hashes = {
                        event.index + k: event.hashes[HASH_SIZE * k : HASH_SIZE * (k + 1)]
                        for k in range(event.count)
                    }
                    for i, digest in hashes.items():
                        self.announced.pop(i, None)
                        self.log.write(digest)
                    self.plane.expect(event.slice, event.fragments, event.length, hashes)
                    self.slices_due.add(event.slice)
                elif isinstance(event, Poll):
                    if self.plane is None:
                        raise RemoteProtocolError("POLL outside a multicast session")
                    await trio.sleep(0.002)  # datagrams sent just before the POLL
                    self.plane.drain()
                    self.plane.polled(event.slice)
                    # Answer first, then write: the group should not wait for our disk.
                    await self.channel.send(
                        Report(slice=event.slice, missing=self.plane.missing(event.slice))
                    )
                    await self._take_slices(writers, event.slice)
                elif isinstance(event, Evict):
                    raise Evicted(event.reason)
                elif isinstance(event, Patch):
                    await self.room.acquire()
                    self.announced.pop(event.index, None)
                    self.log.write(event.digest)
                    writers.start_soon(self._patch, event)
                self.progressed.set()
                now = trio.current_time()
                if now - last_report >= 0.1:
                    last_report = now
                    done = min(plan.source_size, conn.chunks_done * plan.chunk_size)
                    self.report(Progress(done, plan.source_size, conn.bytes_in))
        return event

    async def _run_plane(self) -> None:
        assert self.plane is not None
        with self._plane_scope:
            await self.plane.run()

    async def _take_slices(self, writers: trio.Nursery, upto: int | None) -> None:
        """Hand the whole slices numbered ``upto`` or less (all: None) to the writers;
        only the control connection does, once the REFs before them have been read."""
        assert self.plane is not None
        self.plane.drain()
        for slice_no, data in self.plane.take_ready(upto):
            await self._slice(writers, slice_no, data)

    async def _slice(self, writers: trio.Nursery, slice_no: int, data: bytes) -> None:
        """A multicast slice arrived whole: write the chunks our plan expects from it."""
        assert self.plane is not None
        expected = self.plane.expected.pop(slice_no, {})
        try:
            entries = unpack_entries(data)
        except DatagramError:
            entries = []  # garbage sealed with the group key: a rogue member's, or a bug
        for index, length, encoding, body in entries:
            digest = expected.pop(index, None)
            if digest is None or length != self.plan.chunk_length(index):
                continue  # not ours to take: only what our own plan vouches for
            chunk = Chunk(index=index, length=length, digest=digest, encoding=encoding, body=body)
            await self.room.acquire()
            writers.start_soon(self._write_group, chunk)
        # Announced but absent from the slice: the group's copy is not the sender's.
        self.refetch.update(expected)
        self.slices_due.discard(slice_no)

    async def _in_thread(self, fn: Callable[..., None], *args: object) -> None:
        try:
            await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.room.release()

    async def _write(self, chunk: Chunk) -> None:
        await self._in_thread(write_chunk, self.target, chunk, self.plan)
        self._written([(chunk.index, chunk.digest)], chunk.length)

    async def _write_group(self, chunk: Chunk) -> None:
        """A chunk from the multicast group: anyone holding the group key can seal one,
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

    def _written(self, entries: list[tuple[int, bytes]], nbytes: int) -> None:
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
            await trio.to_thread.run_sync(self.target.sync)
            await trio.to_thread.run_sync(self.journal.commit, entries)
            if ack and self.channel.conn.state in (State.DATA, State.FINISH):
                await self.channel.send(Ack(durable=len(self.journal.have)))

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

    async def _held(self, indices: range) -> list[bytes]:
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

    async def _send_have(self, delta: bool) -> None:
        """Stream HAVE frames for every chunk, in order: target hashes (a delta), or
        the journal's entries that the target still backs."""
        plan = self.plan
        # A delta HAVE carries sub-hashes too: keep its meta well inside MAX_META.
        per_chunk = HASH_SIZE + SUB_HASH_SIZE * -(-plan.chunk_size // SUB_BLOCK)
        step = max(1, min(DELTA_BATCH, (48 * 1024) // per_chunk)) if delta else DELTA_BATCH
        for first in range(0, plan.chunk_count, step):
            # Stay a bounded distance ahead of the data, so neither side's memory of
            # the report grows with the disk.
            while first >= self.channel.conn.chunks_done + HAVE_AHEAD:
                self.progressed = trio.Event()
                await self.progressed.wait()
            indices = range(first, min(first + step, plan.chunk_count))
            subs = b""
            if delta:
                hashes, subs = await self._hash_batch(indices, subs=True)
            else:
                hashes = await self._held(indices)
            for i, digest in zip(indices, hashes, strict=True):
                if digest != UNKNOWN:
                    self.announced[i] = digest
            await self.channel.send(Have(index=first, hashes=b"".join(hashes), subs=subs))


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


async def _verify(
    target: Target,
    plan: Plan,
    log: IO[bytes] | _NullLog,
    threads: int,
    report: Reporter,
) -> dict[int, bytes]:
    """Re-read the target from the medium; return the chunks that differ, with the hash
    each should have (the one that went into the root)."""
    assert not isinstance(log, _NullLog)
    report(Verifying(plan.source_size))
    await trio.to_thread.run_sync(target.drop_cache)
    log.flush()
    log.seek(0)
    bad: dict[int, bytes] = {}
    limiter = trio.CapacityLimiter(threads)
    batch = 4 * threads
    for first in range(0, plan.chunk_count, batch):
        indices = range(first, min(first + batch, plan.chunk_count))
        expected = log.read(32 * len(indices))
        got: dict[int, bytes] = {}

        async def one(i: int, got: dict[int, bytes] = got) -> None:
            got[i] = await trio.to_thread.run_sync(
                hash_target_chunk, target, plan, i, limiter=limiter
            )

        async with trio.open_nursery() as nursery:
            for i in indices:
                nursery.start_soon(one, i)
        for k, i in enumerate(indices):
            if got[i] != expected[32 * k : 32 * k + 32]:
                bad[i] = expected[32 * k : 32 * k + 32]
        report(
            Progress(
                min(
                    plan.source_size, indices[-1] * plan.chunk_size + plan.chunk_length(indices[-1])
                ),
                plan.source_size,
                0,
            )
        )
    return bad


#: A verify that finds more bad chunks than this does not try to repair: the disk is failing.
MAX_REPAIRS = 4 * MAX_HASHES


def _spans(plan: Plan, indices: list[int]) -> str:
    spans = ", ".join(chunk_span(plan, i) for i in indices[:5])
    return spans + (f" and {len(indices) - 5} more chunks" if len(indices) > 5 else "")


async def fetch_again(
    channel: Channel, target: Target, plan: Plan, wanted: dict[int, bytes]
) -> None:
    """NAK the chunks ``wanted`` (index -> the hash they must have) and write the
    sender's answers.

    Raises:
        IntegrityError: an answer is not the chunk wanted (the source changed).
    """
    indices = sorted(wanted)
    for first in range(0, len(indices), MAX_HASHES):
        await channel.send(Nak(indices=tuple(indices[first : first + MAX_HASHES])))
    for _ in indices:
        chunk = await channel.expect(Chunk, "the sender's repairs")
        if chunk.digest != wanted.get(chunk.index):
            raise IntegrityError(
                f"the source changed since it was cloned ({_spans(plan, [chunk.index])} differ "
                "from what the clone holds): the repair was refused; run the clone again"
            )
        await trio.to_thread.run_sync(write_chunk, target, chunk, plan)


async def _repair(
    channel: Channel, target: Target, plan: Plan, bad: dict[int, bytes], journal: Journal | None
) -> None:
    """Fetch the chunks that read back wrong again, rewrite and re-check them.

    Raises:
        IntegrityError: too many chunks are bad, a repair is not what was cloned (the
            source changed), or some chunks still read back wrong; names the ranges.
    """
    indices = sorted(bad)
    if journal is not None:  # whatever happens next, the journal must not vouch for them
        await trio.to_thread.run_sync(journal.forget, indices)
    if len(indices) > MAX_REPAIRS:
        raise IntegrityError(
            f"verification read back different data at {_spans(plan, indices)}: too many "
            f"chunks to fetch again; the target {target.path} is failing; check the disk"
        )
    await fetch_again(channel, target, plan, bad)
    await trio.to_thread.run_sync(target.sync)
    await trio.to_thread.run_sync(target.drop_cache)
    still = [
        i
        for i in indices
        if await trio.to_thread.run_sync(hash_target_chunk, target, plan, i) != bad[i]
    ]
    if still:
        raise IntegrityError(
            f"verification read back different data at {_spans(plan, still)}, even after "
            f"fetching it again: the target {target.path} does not keep what is written; "
            "check the disk"
        )


__all__ = ["P2PCloneError", "receive", "receive_stream"]
