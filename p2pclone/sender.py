"""The sending driver: source -> pipeline -> frames -> transport.

One nursery per session.  In the data phase three kinds of task run:

* the *producer* walks the chunk indices in order, skipping holes of a sparse
  source, and starts one worker per chunk (read, zero check, hash, compress in a
  thread; at most ``threads`` at once);
* the *writer* (this task) takes the workers' results strictly in index order
  through a bounded channel, merges zero chunks into ZERO runs, and sends frames;
* the *watcher* reads the back-channel, so a receiver's ERROR ends the session at
  once with the receiver's own sentence.

The channel's bound (``READ_AHEAD_BYTES`` of chunks) caps memory: at most that
plus ``threads`` chunks exist at a time, whatever the disk size.  It is deep
on purpose: when the link is the bottleneck, the reader runs up to that many chunks
ahead, so reading a long zero region (which sends nothing) overlaps with sending the
data queued before it instead of leaving the link idle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .disks import Source
from .endpoints import Kind, is_image_url, resolve
from .errors import IntegrityError, P2PCloneError, TransportError, UsageError
from .image.link import clean_url, open_recording
from .image.reader import ImageSource
from .pipeline import (
    DiskSource,
    Encoded,
    default_threads,
    encode_chunk,
    encode_repair,
)
from .protocol import (
    HASH_SIZE,
    MAX_CHUNK_SIZE,
    MAX_HASHES,
    SUB_HASH_SIZE,
    Accept,
    Ack,
    Connection,
    End,
    Have,
    Lost,
    Nak,
    Plan,
    Result,
    Role,
    Same,
    Zero,
    zero_digest,
)
from .session import (
    Channel,
    Connected,
    Done,
    Notice,
    Planned,
    Progress,
    Reporter,
    no_report,
    pair,
    pick_error,
)

if TYPE_CHECKING:
    from .multicast.sender import GroupProgress

DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Bytes of chunks the reader may run ahead of the link (32 chunks of 1 MiB; at
#: least 4 chunks whatever their size).  Measured on a 1 Gbit link: 16 -> 32 MiB
#: saves ~0.3 s per GiB of a disk with long zero regions.
READ_AHEAD_BYTES = 32 * 1024 * 1024


@dataclass
class _Slot:
    index: int
    zero_run: int = 0  # >0: a run of this many hole chunks, known without reading
    result: Encoded | None = None

    def __post_init__(self) -> None:
        self.ready = trio.Event()
        if self.zero_run:
            self.ready.set()


async def send(
    source_path: str,
    url: str,
    *,
    code: str,
    chunk_size: int | None = None,
    threads: int | None = None,
    allow_mounted: bool = False,
    delta: bool = False,
    passphrase: str | None = None,
    password: str | None = None,
    fresh: bool = False,
    receivers: int = 1,
    wait: float = 60.0,
    group_report: Callable[[GroupProgress], None] | None = None,
    report: Reporter = no_report,
) -> Done:
    """Clone ``source_path`` to the receiver at ``url``; return the final statistics.

    ``allow_mounted`` accepts a source mounted read-write (the copy may be inconsistent);
    ``delta`` asks the receiver to hash its target so only differing chunks are sent.
    ``source_path`` may be an image URL (file:// or smb://, opened with ``passphrase``);
    ``url`` may be one too: the clone is saved as an image encrypted with ``code``
    (``fresh`` starts it over instead of resuming).  ``password`` is for SMB.
    ``wait``: over tcp://, how long to keep trying to reach a receiver that is not
    listening yet (reported once as a Notice); over multicast://, how long to wait for
    ``receivers`` to join and for evicted ones to come back.

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    endpoint = resolve(url)
    if endpoint.kind is Kind.GROUP:
        return await endpoint.group().send(
            source_path,
            url,
            code=code,
            report=report,
            chunk_size=chunk_size,
            threads=threads,
            allow_mounted=allow_mounted,
            passphrase=passphrase,
            password=password,
            receivers=receivers,
            wait=wait,
            group_report=group_report,
        )
    transport = None
    if endpoint.kind is Kind.LINK:
        transport = endpoint.transport(
            code=code,
            wait=wait,  # tcp://: how long to keep trying to reach a receiver not started yet
            waiting=lambda sentence: report(Notice(sentence)),
        )
    else:
        clean_url(url)  # a malformed image URL is a usage error before the source is opened
    # The transport's own default fits its speed (serial: small chunks, so progress and
    # resume are not a minute apart); an explicit size wins.
    chunk_size = chunk_size or (transport and transport.chunk_size) or DEFAULT_CHUNK_SIZE
    check_chunk_size(chunk_size)
    source, chunk_size = await open_source(
        source_path,
        chunk_size,
        allow_mounted=allow_mounted,
        passphrase=passphrase,
        password=password,
    )
    try:
        if transport is not None:
            stream = await transport.connect()
            url = transport.url  # as the transport shows it
        else:
            url, stream = await open_recording(url, code=code, password=password, fresh=fresh)
        report(Connected(url))
        done = await send_stream(
            stream,
            source,
            url=url,
            code=code,
            chunk_size=chunk_size,
            threads=threads,
            delta=delta,
            report=report,
            seal=transport is not None,  # an image's recorder is in this process
        )
        if isinstance(source, ImageSource) and (note := source.salvage_note()):
            raise IntegrityError(note, code="salvaged")
        return done
    finally:
        source.close()


async def open_source(
    source_path: str,
    chunk_size: int,
    *,
    allow_mounted: bool = False,
    passphrase: str | None = None,
    password: str | None = None,
) -> tuple[DiskSource, int]:
    """The SOURCE opened for reading (a disk, a file, or an image URL, whose own chunk
    size then wins), and the chunk size to send it with."""
    if is_image_url(source_path):
        image_url, in_url = clean_url(source_path)
        image = await trio.to_thread.run_sync(
            ImageSource.open, image_url, passphrase or "", password or in_url
        )
        return image, image.chunk_size
    source = await trio.to_thread.run_sync(
        functools.partial(Source.open, source_path, allow_mounted=allow_mounted)
    )
    return source, chunk_size


async def send_stream(
    stream: trio.abc.Stream,
    source: DiskSource,
    *,
    code: str,
    url: str = "stream",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int | None = None,
    delta: bool = False,
    report: Reporter = no_report,
    seal: bool = True,
) -> Done:
    """Run a sending session over an already open ``stream`` (closed on return).

    ``seal=False``: see :class:`~p2pclone.protocol.Connection` (in-process links only).
    """
    check_chunk_size(chunk_size)
    channel = Channel(Connection(Role.SENDER, code=code, seal=seal), stream, url)
    return await send_channel(
        channel, source, chunk_size=chunk_size, threads=threads, delta=delta, report=report
    )


async def send_channel(
    channel: Channel,
    source: DiskSource,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int | None = None,
    delta: bool = False,
    report: Reporter = no_report,
    paired: bool = False,
) -> Done:
    """``send_stream`` over a channel; ``paired``: it has paired already (the multicast
    sender pairs every connection itself, to count the failures)."""
    try:
        return await _session(
            channel, source, chunk_size, threads or default_threads(), delta, report, paired
        )
    except BaseException as exc:
        await channel.fail(pick_error(exc))
        raise


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 4096 or chunk_size % 4096 or chunk_size > MAX_CHUNK_SIZE:
        raise UsageError("the chunk size must be a multiple of 4 KiB between 4 KiB and 64 MiB")


async def _session(
    channel: Channel,
    source: DiskSource,
    chunk_size: int,
    threads: int,
    delta: bool,
    report: Reporter,
    paired: bool = False,
) -> Done:
    started = trio.current_time()
    if not paired:
        await pair(channel)
    plan = Plan(source_size=source.size, chunk_size=chunk_size, source=source.info, delta=delta)
    await channel.send(plan)
    accept = await channel.expect(Accept, "the receiver to accept the plan")
    report(Planned(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, accept.target))

    result: list[Result] = []
    acks: list[int] = []
    have = HaveMap(accept.have, plan, accept.sub)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, channel, source, plan, have, acks, result)
            runs = await _stream_chunks(channel, source, plan, have, threads, nursery, report)
            # A salvaged image over a real link: the receiver must not call its copy
            # done either, so the session ends in this error, not in END.
            if (
                channel.conn.sealed
                and isinstance(source, ImageSource)
                and (note := source.salvage_note())
            ):
                raise IntegrityError(note, code="salvaged")
            await channel.send(End(chunk_count=plan.chunk_count, root=channel.conn.root_digest()))
    except BaseException as exc:
        raise pick_error(exc) from None
    if result[0].root != channel.conn.root_digest():
        raise IntegrityError(
            "the receiver computed a different root hash than this sender: the copy is not "
            "identical; run the clone again"
        )
    done = Done(
        source_bytes=plan.source_size,
        wire_bytes=channel.conn.bytes_out + channel.conn.bytes_in,
        chunks=plan.chunk_count,
        zero_chunks=runs.zero_total,
        same_chunks=runs.same_total,
        digest=channel.conn.root_digest().hex(),
        seconds=trio.current_time() - started,
        verified=result[0].verified,
    )
    await channel.close()
    return done


class HaveMap:
    """What the receiver reports it holds (HAVE frames), consumed in index order.

    Entries are dropped as they are used, so memory follows how far the receiver's
    report runs ahead of the sender (32 bytes a chunk at most).
    """

    def __init__(self, expected: bool, plan: Plan, sub: int = 0) -> None:
        self.expected = expected
        self.plan = plan
        self.sub = sub
        self.covered = 0
        self._hashes: dict[int, bytes] = {}
        self._subs: dict[int, bytes] = {}
        self._changed = trio.Event()

    def add(self, event: Have) -> None:
        unknown = bytes(HASH_SIZE)
        pos = 0
        for k in range(event.count):
            index = event.index + k
            digest = event.hashes[HASH_SIZE * k : HASH_SIZE * (k + 1)]
            if digest != unknown:
                self._hashes[index] = digest
            if self.sub:
                n = -(-self.plan.chunk_length(index) // self.sub) * SUB_HASH_SIZE
                self._subs[index] = event.subs[pos : pos + n]
                pos += n
        self.covered = event.index + event.count
        self._changed.set()
        self._changed = trio.Event()

    def subs(self, index: int) -> bytes:
        """The receiver's sub-block hashes for ``index`` (delta), once; b"" if none."""
        return self._subs.pop(index, b"")

    async def get(self, index: int) -> bytes | None:
        """The receiver's hash for chunk ``index`` (waiting for its report), or None."""
        while self.expected and self.covered <= index:
            await self._changed.wait()
        return self._hashes.pop(index, None)

    def close(self) -> None:
        """No more reports will come (the receiver is gone): nobody waits for them."""
        self.expected = False
        self._changed.set()


async def _watch(
    channel: Channel,
    source: DiskSource,
    plan: Plan,
    have: HaveMap,
    acks: list[int],
    result: list[Result],
) -> None:
    """Read the back-channel: HAVE, ACK and NAK as they come; RESULT ends it, ERROR aborts."""
    while True:
        try:
            event = await channel.expect_one_of((Have, Ack, Nak, Result), "the receiver's RESULT")
        except TransportError:
            raise TransportError(
                f"the receiver closed the link {channel.url} before confirming the clone: "
                "the transfer was interrupted and the target is incomplete; run both sides "
                "again (the receiver resumes where it stopped)"
            ) from None
        if isinstance(event, Have):
            have.add(event)
        elif isinstance(event, Ack):
            acks[:] = [event.durable]  # chunks the receiver holds durably so far
        elif isinstance(event, Nak):
            # The receiver's verify read these back wrong: send them again, whole.
            for index in event.indices:
                chunk = await trio.to_thread.run_sync(encode_repair, source, plan, index)
                await channel.send(chunk)
        elif isinstance(event, Result):
            result.append(event)
            return


class _Runs:
    """Merges consecutive zero chunks into ZERO frames and held chunks into SAME frames."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.kind = ""
        self.start = 0
        self.count = 0
        self.hashes = bytearray()
        self.zero_total = 0
        self.same_total = 0
        self.lost_total = 0

    async def add(self, kind: str, index: int, digest: bytes = b"", count: int = 1) -> None:
        """Add ``count`` chunks from ``index`` (a SAME adds one chunk and its hash)."""
        full = kind == "same" and self.count >= MAX_HASHES
        if kind != self.kind or index != self.start + self.count or full:
            await self.flush()
            self.kind, self.start = kind, index
        self.count += count
        if kind == "same":
            self.hashes += digest
            self.same_total += 1
        elif kind == "lost":
            self.lost_total += count
        else:
            self.zero_total += count

    async def flush(self) -> None:
        if self.count:
            if self.kind == "zero":
                await self.channel.send(Zero(index=self.start, count=self.count))
            elif self.kind == "lost":
                await self.channel.send(Lost(index=self.start, count=self.count))
            else:
                await self.channel.send(Same(index=self.start, hashes=bytes(self.hashes)))
        self.kind, self.count, self.hashes = "", 0, bytearray()


async def _stream_chunks(
    channel: Channel,
    source: DiskSource,
    plan: Plan,
    have: HaveMap,
    threads: int,
    nursery: trio.Nursery,
    report: Reporter,
) -> _Runs:
    read_ahead = max(4, READ_AHEAD_BYTES // plan.chunk_size)
    slots_send, slots_recv = trio.open_memory_channel[_Slot](read_ahead)
    limiter = trio.CapacityLimiter(threads)

    async def work(slot: _Slot, held: bytes | None, subs: bytes) -> None:
        if isinstance(source, ImageSource):  # its payloads go out as they are stored
            slot.result = await trio.to_thread.run_sync(
                source.encode, plan, slot.index, held, limiter=limiter
            )
        else:
            slot.result = await trio.to_thread.run_sync(
                encode_chunk, source, plan, slot.index, held, subs, have.sub, limiter=limiter
            )
        slot.ready.set()

    async def produce() -> None:
        async with slots_send:
            index = 0
            while index < plan.chunk_count:
                offset = index * plan.chunk_size
                data_at = source.next_data(offset)
                first_data = min(data_at // plan.chunk_size, plan.chunk_count)
                if first_data > index:  # whole chunks inside a hole: zero, unread
                    await slots_send.send(_Slot(index, zero_run=first_data - index))
                    index = first_data
                    continue
                slot = _Slot(index)
                held = await have.get(index)
                await slots_send.send(slot)
                nursery.start_soon(work, slot, held, have.subs(index))
                index += 1

    nursery.start_soon(produce)
    runs = _Runs(channel)
    last_report = -1.0
    async with slots_recv:
        while True:
            # Never sit on an open ZERO/SAME run while waiting: the receiver paces
            # its HAVE reports by the chunks it has seen, so a run held back while we
            # wait for a report would leave both sides waiting for each other.
            try:
                slot = slots_recv.receive_nowait()
            except trio.WouldBlock:
                await runs.flush()
                try:
                    slot = await slots_recv.receive()
                except trio.EndOfChannel:
                    break
            except trio.EndOfChannel:
                break
            if not slot.ready.is_set():
                await runs.flush()
                await slot.ready.wait()
            if slot.zero_run and not have.expected:
                await runs.add("zero", slot.index, count=slot.zero_run)
            elif slot.zero_run:
                for i in range(slot.index, slot.index + slot.zero_run):
                    if have.covered <= i:
                        await runs.flush()
                    held = await have.get(i)
                    have.subs(i)  # not needed: a hole is sent whole (as ZERO)
                    if held is not None and held == zero_digest(plan.chunk_length(i)):
                        await runs.add("same", i, held)
                    else:
                        await runs.add("zero", i)
            else:
                encoded = slot.result
                assert encoded is not None
                if encoded.same is not None:
                    await runs.add("same", slot.index, encoded.same)
                elif encoded.zero:
                    await runs.add("zero", slot.index)
                elif encoded.lost:
                    await runs.add("lost", slot.index)
                else:
                    await runs.flush()
                    event = encoded.patch or encoded.chunk
                    assert event is not None
                    await channel.send(event)
            now = trio.current_time()
            if now - last_report >= 0.1:
                last_report = now
                done = min(plan.source_size, (slot.index + max(slot.zero_run, 1)) * plan.chunk_size)
                report(Progress(done, plan.source_size, channel.conn.bytes_out))
        await runs.flush()
    report(Progress(plan.source_size, plan.source_size, channel.conn.bytes_out))
    return runs


__all__ = ["DEFAULT_CHUNK_SIZE", "P2PCloneError", "send", "send_stream"]
