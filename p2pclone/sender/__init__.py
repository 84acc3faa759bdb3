"""The sending driver: source -> pipeline -> frames -> transport.

One nursery per session.  In the data phase three kinds of task run:

* the *encode-ahead* (ahead.py) walks the chunk indices in order, skipping holes of a
  sparse source, and starts one worker per chunk (read, zero check, hash, compress in
  a thread; at most ``threads`` at once), running up to READ_AHEAD_BYTES ahead;
* the *writer* (this task) takes the workers' results strictly in index order,
  merges zero, held and lost chunks into runs (runs.py), and sends frames;
* the *watcher* reads the back-channel, so a receiver's ERROR ends the session at
  once with the receiver's own sentence.

Where a URL leads is the registry's business (p2pclone/endpoints.py): a link gives a
stream, an image a recorder over an in-process pipe, a group its own driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

import trio

from ..disks.rescue import RescueOptions
from ..endpoints import Kind, resolve
from ..errors import (
    IntegrityError,
    P2PCloneError,
    TransportError,
    UsageError,
)
from ..image.link import clean_url, open_recording
from ..image.reader import ImageSource
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
    Connected,
    Done,
    GroupProgress,
    Notice,
    Planned,
    Reporter,
    no_report,
    pair,
    pick_error,
)
from ..transports import Transport
from ..units import merged, partitions_hit
from .ahead import READ_AHEAD_BYTES
from .runs import ChunkKind, HaveMap, answer_nak
from .source import cut_off, open_source
from .stream import stream_chunks

DEFAULT_CHUNK_SIZE = 1024 * 1024


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
    exact: bool = False,
    rescue: RescueOptions = RescueOptions(),  # noqa: B008 - frozen
    report: Reporter = no_report,
) -> Done:
    """Clone ``source_path`` to the receiver at ``url``; return the final statistics.

    Only used blocks are sent (``exact``: every byte); ``rescue``: how a failing disk
    is read (retries, read timeout).  ``allow_mounted`` accepts a source mounted
    read-write; ``delta`` has the receiver hash its target first (only changes sent).
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
            exact=exact,
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
        exact=exact,
        rescue=rescue,
        report=report,
    )
    try:
        return await _deliver(
            source, transport, url, code, chunk_size, threads, delta, fresh, password, report
        )
    finally:
        source.close()


async def _deliver(
    source: DiskSource,
    transport: Transport | None,
    url: str,
    code: str,
    chunk_size: int,
    threads: int | None,
    delta: bool,
    fresh: bool,
    password: str | None,
    report: Reporter,
) -> Done:
    """Open the far end (a link, or an image's recorder: ``transport`` None) and run
    the session to it."""
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
    plan = Plan(
        source_size=source.size,
        chunk_size=chunk_size,
        source=source.info,
        delta=delta,
        free=source.free,
    )
    await channel.send(plan)
    accept = await channel.expect(Accept, "the receiver to accept the plan")
    if accept.cut:
        cut_off(source, accept.cut)
    report(Planned(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, accept.target))

    result: list[Result] = []
    acks: list[int] = []
    have = HaveMap(accept.have, plan, accept.sub)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, channel, source, plan, have, acks, result)
            runs = await stream_chunks(channel, source, plan, have, threads, nursery, report)
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
    )
    await channel.close()
    return done


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
    "READ_AHEAD_BYTES",
    "P2PCloneError",
    "check_chunk_size",
    "open_source",
    "send",
    "send_channel",
    "send_stream",
]
