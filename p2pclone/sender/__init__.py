"""The sending driver: source -> pipeline -> frames -> transport.

One nursery per session.  In the data phase three kinds of task run:

* the *encode-ahead* (ahead.py) walks the chunk indices in order, skipping holes of a
  sparse source, and starts one worker per chunk (read, zero check, hash, compress in
  a thread; at most ``threads`` at once), running up to READ_AHEAD_BYTES ahead;
* the *writer* (this task) takes the workers' results strictly in index order,
  merges zero, held and lost chunks into runs (runs.py), and sends frames;
* the *watcher* reads the back-channel, so a receiver's ERROR ends the session at
  once with the receiver's own sentence.

Where a URL leads, and how its far end is opened, is p2pclone/jobs.py's business:
this package runs the session over the stream it is given.
"""

from __future__ import annotations

import functools
from typing import assert_never

import trio

from ..disks import Source
from ..disks.hit import files_hit
from ..errors import (
    IntegrityError,
    PeerError,
    TransportError,
    UsageError,
)
from ..image.reader import ImageSource
from ..meter import Meter
from ..options import SendOptions
from ..pipeline import DiskSource, default_threads
from ..protocol import (
    MAX_CHUNK_SIZE,
    Accept,
    Ack,
    Connection,
    End,
    Have,
    Nak,
    Plan,
    Result,
    Role,
)
from ..session import (
    Channel,
    Done,
    Notice,
    Planned,
    Reporter,
    no_report,
    pair,
    pick_error,
)
from ..transports import said_after
from ..units import merged
from ..volumes.layout import partitions_hit
from .runs import ChunkKind, HaveMap, answer_nak
from .shrink import shrink_advice
from .source import cut_off
from .stream import Ticker, stream_chunks

DEFAULT_CHUNK_SIZE = 1024 * 1024
#: seconds of silence before a waiting sender says what it waits for
WAIT_SAY = 3.0
WAITING_FOR_ACCEPT = (
    "waiting for the receiver to accept the plan: its operator is asked to confirm that "
    "the target may be overwritten (or it is checking what the target holds)"
)


async def send_stream(
    stream: trio.abc.Stream,
    source: DiskSource,
    options: SendOptions,
    *,
    code: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    url: str = "stream",
    report: Reporter = no_report,
    seal: bool = True,
) -> Done:
    """Run a sending session over an already open ``stream`` (closed on return), paired
    with ``code``; ``options``: its ``delta`` (the far end's options were used to open
    it, the source's to open the source).

    ``seal=False``: see :class:`~p2pclone.protocol.Connection` (in-process links only).
    """
    check_chunk_size(chunk_size)
    channel = Channel(Connection(Role.SENDER, code=code, seal=seal), stream, url)
    return await send_channel(channel, source, options, chunk_size=chunk_size, report=report)


async def send_channel(
    channel: Channel,
    source: DiskSource,
    options: SendOptions,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    report: Reporter = no_report,
    paired: bool = False,
) -> Done:
    """``send_stream`` over a channel; ``paired``: it has paired already (the multicast
    sender pairs every connection itself, to count the failures)."""
    try:
        return await _session(
            channel, source, chunk_size, default_threads(), options.delta, report, paired
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
    plan = Plan(
        source_size=source.size,
        chunk_size=chunk_size,
        source=source.info,
        delta=delta,
        free=source.free,
    )
    await channel.send(plan)
    accept, dropped = await _accepted(channel, source, plan, report)
    report(Planned.of(plan, accept.target))

    result: list[Result] = []
    acks: list[int] = []
    have = HaveMap(accept.have, plan, accept.sub, rescue=accept.rescue)
    ticker = Ticker(channel, Meter(plan.source_size, source.free), report)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, channel, source, plan, have, acks, result)
            nursery.start_soon(ticker.run, result)
            runs = await stream_chunks(
                channel, source, plan, have, threads, nursery, report, ticker
            )
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
        zero_chunks=runs.totals[ChunkKind.ZERO],
        same_chunks=runs.totals[ChunkKind.SAME],
        digest=channel.conn.root_digest().hex(),
        seconds=trio.current_time() - started,
        verified=result[0].verified,
        free_bytes=plan.free.total,
        unreadable=merged(runs.unreadable),
        unreadable_in=partitions_hit(plan.source, merged(runs.unreadable)),
        unreadable_files=await _files_hit(source, plan, merged(runs.unreadable)),
        cut_at=accept.cut,
        dropped_bytes=dropped,
    )
    await channel.close()
    return done


async def _files_hit(source: DiskSource, plan: Plan, ranges: list[list[int]]) -> list[str]:
    """The files a disk's unreadable ranges fall in (disks/hit.py); none for an image."""
    if not ranges or not isinstance(source, Source):
        return []
    return await trio.to_thread.run_sync(files_hit, source.path, plan.source, ranges)


async def _accepted(
    channel: Channel, source: DiskSource, plan: Plan, report: Reporter
) -> tuple[Accept, int]:
    """The receiver's ACCEPT, and the bytes of data a smaller target lets go (``--cut``);
    after WAIT_SAY seconds without it, what we wait for is said.

    Raises:
        PeerError: the receiver refused the plan (a target too small: with how far our
            last partition could shrink, and how).
        SourceError: data past a smaller target's end that it did not let go.
    """
    try:
        accept = await said_after(
            WAIT_SAY,
            lambda: report(Notice(WAITING_FOR_ACCEPT)),
            functools.partial(channel.expect, Accept, "the receiver to accept the plan"),
        )
    except PeerError as exc:
        # Asked only now: the estimate reads the filesystem.
        if exc.code == "too-small" and (advice := await trio.to_thread.run_sync(
            shrink_advice, source
        )):  # fmt: skip
            raise PeerError(exc.message + advice, code=exc.code, exit_code=exc.exit_code) from None
        raise
    if not accept.cut:
        return accept, 0
    dropped = await trio.to_thread.run_sync(
        functools.partial(
            cut_off,
            source,
            accept.cut,
            plan.chunk_size,
            target=str(accept.target.get("name", "the receiver's")),
            drop=accept.drop,
        )
    )
    return accept, dropped


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
        assert isinstance(event, (Have, Ack, Nak, Result))  # what was asked for
        match event:
            case Have():
                have.add(event)
            case Ack():
                acks[:] = [event.durable]  # chunks the receiver holds durably so far
            case Nak():  # the receiver's verify read these back wrong: send them again
                await answer_nak(channel, source, plan, event)
            case Result():
                result.append(event)
                return
            case _:
                assert_never(event)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "check_chunk_size",
    "send_channel",
    "send_stream",
]
