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

import tempfile
from collections.abc import Callable
from typing import IO

import trio

from transports import open_transport

from .disks import Target
from .errors import IntegrityError, P2PCloneError, PeerError, TransportError
from .pipeline import default_threads, hash_target_chunk, write_chunk, zero_chunks
from .protocol import Accept, Chunk, Connection, End, Error, Plan, Result, Role, Zero
from .protocol.connection import zero_digest
from .session import (
    Channel,
    Connected,
    Done,
    Listening,
    Planned,
    Progress,
    Reporter,
    Verifying,
    no_report,
    pair,
    pick_error,
)

Confirm = Callable[[Plan, Target], None]

#: Start writeback after this many bytes, so the final fsync has little left to do.
WRITEBACK_EVERY = 64 * 1024 * 1024


def _no_confirm(plan: Plan, target: Target) -> None:
    pass


async def receive(
    target_path: str,
    url: str,
    *,
    code: str,
    verify: bool = False,
    confirm: Confirm = _no_confirm,
    threads: int | None = None,
    report: Reporter = no_report,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> Done:
    """Listen at ``url``, receive one clone into ``target_path``; return the statistics.

    ``task_status.started()`` gets the URL actually listened on (with the real port).
    ``confirm(plan, target)`` may raise to refuse the plan (before anything is written).

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    transport = open_transport(url)
    target = await trio.to_thread.run_sync(Target.open, target_path)
    try:
        listener = await transport.listen()
        try:
            report(Listening(listener.url, code))
            task_status.started(listener.url)
            stream = await listener.accept()
        finally:
            await listener.aclose()
        report(Connected(url))
        return await receive_stream(
            stream,
            target,
            code=code,
            url=url,
            verify=verify,
            confirm=confirm,
            threads=threads,
            report=report,
        )
    finally:
        target.close()


async def receive_stream(
    stream: trio.abc.Stream,
    target: Target,
    *,
    code: str,
    url: str = "stream",
    verify: bool = False,
    confirm: Confirm = _no_confirm,
    threads: int | None = None,
    report: Reporter = no_report,
) -> Done:
    """Run a receiving session over an already open ``stream`` (closed on return)."""
    channel = Channel(Connection(Role.RECEIVER, code=code), stream, url)
    try:
        return await _session(
            channel, target, verify, confirm, threads or default_threads(), report
        )
    except BaseException as exc:
        await channel.fail(pick_error(exc))
        raise


async def _session(
    channel: Channel,
    target: Target,
    verify: bool,
    confirm: Confirm,
    threads: int,
    report: Reporter,
) -> Done:
    started = trio.current_time()
    await pair(channel)
    plan = await channel.expect(Plan, "the sender's PLAN")
    target.check_plan(plan.source_size, plan.source)
    confirm(plan, target)
    await trio.to_thread.run_sync(target.prepare, plan.source_size)
    await channel.send(Accept(target=target.describe()))
    report(
        Planned(plan.source_size, plan.chunk_size, plan.chunk_count, plan.source, target.describe())
    )

    with tempfile.TemporaryFile(prefix="p2pclone-hashes-") if verify else _NullLog() as log:
        try:
            end, zero_total = await _receive_chunks(channel, target, plan, threads, log, report)
        except BaseException as exc:
            raise pick_error(exc) from None
        await trio.to_thread.run_sync(target.sync)
        if end.root != channel.conn.root_digest():
            raise IntegrityError(
                "the root hash over all chunks differs from the sender's: the copy is not "
                "identical; run the clone again"
            )
        if verify:
            await _verify(target, plan, log, threads, report)
    # Our own root (equal to END's, checked above): the sender checks it against its own.
    await channel.send(Result(root=channel.conn.root_digest(), verified=verify))
    done = Done(
        source_bytes=plan.source_size,
        wire_bytes=channel.conn.bytes_in + channel.conn.bytes_out,
        chunks=plan.chunk_count,
        zero_chunks=zero_total,
        digest=end.root.hex(),
        seconds=trio.current_time() - started,
        verified=verify,
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


async def _receive_chunks(
    channel: Channel,
    target: Target,
    plan: Plan,
    threads: int,
    log: IO[bytes] | _NullLog,
    report: Reporter,
) -> tuple[End, int]:
    limiter = trio.CapacityLimiter(threads)
    # Chunks received but not yet written: a few per thread, at most ~32 MiB of them.
    room = trio.Semaphore(max(2, min(2 * threads + 4, (32 << 20) // plan.chunk_size)))
    zero_total = 0
    last_report = -1.0
    unflushed = 0  # bytes written since writeback was last started

    async def run(fn: Callable[..., None], *args: object) -> None:
        try:
            await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        finally:
            room.release()

    async with trio.open_nursery() as nursery:
        while True:
            event = await channel.receive()
            if event is None:
                raise TransportError(
                    f"the sender closed the link {channel.url} before the end: the transfer was "
                    "interrupted and the target is incomplete; run both sides again"
                )
            if isinstance(event, Error):
                raise PeerError(event.message, code=event.code, exit_code=event.exit)
            if isinstance(event, End):
                break
            await room.acquire()
            if isinstance(event, Chunk):
                log.write(event.digest)
                nursery.start_soon(run, write_chunk, target, event, plan)
                unflushed += event.length
                if unflushed >= WRITEBACK_EVERY:
                    unflushed = 0
                    await room.acquire()
                    nursery.start_soon(run, target.start_writeback)
            elif isinstance(event, Zero):
                zero_total += event.count
                for i in range(event.index, event.index + event.count):
                    log.write(zero_digest(plan.chunk_length(i)))
                nursery.start_soon(run, zero_chunks, target, plan, event.index, event.count)
            now = trio.current_time()
            if now - last_report >= 0.1:
                last_report = now
                done = min(plan.source_size, channel.conn.chunks_done * plan.chunk_size)
                report(Progress(done, plan.source_size, channel.conn.bytes_in))
    report(Progress(plan.source_size, plan.source_size, channel.conn.bytes_in))
    return event, zero_total


async def _verify(
    target: Target,
    plan: Plan,
    log: IO[bytes] | _NullLog,
    threads: int,
    report: Reporter,
) -> None:
    """Re-read the target from the medium and compare every chunk with its hash."""
    assert not isinstance(log, _NullLog)
    report(Verifying(plan.source_size))
    await trio.to_thread.run_sync(target.drop_cache)
    log.flush()
    log.seek(0)
    bad: list[int] = []
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
                bad.append(i)
        report(
            Progress(
                min(
                    plan.source_size, indices[-1] * plan.chunk_size + plan.chunk_length(indices[-1])
                ),
                plan.source_size,
                0,
            )
        )
    if bad:
        spans = ", ".join(
            f"bytes {i * plan.chunk_size}-{i * plan.chunk_size + plan.chunk_length(i) - 1}"
            for i in bad[:5]
        )
        more = f" and {len(bad) - 5} more chunks" if len(bad) > 5 else ""
        raise IntegrityError(
            f"verification read back different data at {spans}{more}: the target "
            f"{target.path} does not hold what was written; check the disk and clone again"
        )


__all__ = ["P2PCloneError", "receive", "receive_stream"]
