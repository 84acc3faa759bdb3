"""The data phase of a unicast send: every chunk in order (the first pass), then the
chunks a failing disk left for later (the second pass); and the progress the person
sees, which follows what the receiver has taken, not what was queued (meter.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..disks import Source
from ..meter import Meter
from ..pipeline import DiskSource, encode_repair
from ..protocol import Plan, Result
from ..protocol.root import zero_digest
from ..session import TICK, Channel, Progress, Reporter, Rescuing
from .ahead import EncodeAhead, Slot
from .runs import ChunkKind, HaveMap, Runs, run_frame


@dataclass
class Ticker:
    """Reports the progress the receiver has taken, every :data:`TICK` seconds, until
    its RESULT arrives (``finished``); paused while a failing disk's second pass
    reports its own."""

    channel: Channel
    meter: Meter
    report: Reporter
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    paused: bool = False
    #: the disk position the frame being sent now covers up to
    upcoming: int = 0

    async def run(self, finished: list[Result]) -> None:
        while not finished:
            if not self.paused:
                self.report(self.progress())
            await trio.sleep(TICK)
        self.report(Progress.of(self.meter.total, self.meter.total, self.channel.handed,
                                self.unreadable))  # fmt: skip

    def progress(self) -> Progress:
        delivered = self.channel.delivered()
        done = self.meter.taken(delivered, (self.channel.framed, self.upcoming))
        return Progress.of(done, self.meter.total, delivered, self.unreadable)


async def stream_chunks(
    channel: Channel,
    source: DiskSource,
    plan: Plan,
    have: HaveMap,
    threads: int,
    nursery: trio.Nursery,
    report: Reporter,
    ticker: Ticker,
) -> Runs:
    async def emit(kind: ChunkKind, first: int, count: int, hashes: bytes) -> None:
        await channel.send(run_frame(kind, first, count, hashes))

    defer = False  # leave failing chunks for a second pass (a disk, a peer that takes it)
    if isinstance(source, Source) and channel.conn.peer_takes_later:
        source.first_pass()
        defer = True
    slots = EncodeAhead(source, plan, threads, have, defer=defer).start(nursery)
    runs = Runs(emit)
    ticker.unreadable = runs.unreadable
    async with slots:
        while True:
            # Never sit on an open ZERO/SAME run while waiting: the receiver paces
            # its HAVE reports by the chunks it has seen, so a run held back while we
            # wait for a report would leave both sides waiting for each other.
            try:
                slot = slots.receive_nowait()
            except trio.WouldBlock:
                await runs.flush()
                try:
                    slot = await slots.receive()
                except trio.EndOfChannel:
                    break
            except trio.EndOfChannel:
                break
            if not slot.ready.is_set():
                await runs.flush()
            covered = min(plan.source_size, (slot.index + max(slot.zero_run, 1)) * plan.chunk_size)
            ticker.upcoming = covered
            await _send_slot(channel, plan, have, runs, slot)
            ticker.meter.mark(channel.handed, covered)
        await runs.flush()
    ticker.meter.mark(channel.handed, plan.source_size)
    if runs.later:
        ticker.paused = True
    await _second_pass(channel, source, plan, runs, report)
    return runs


async def _second_pass(
    channel: Channel, source: DiskSource, plan: Plan, runs: Runs, report: Reporter
) -> None:
    """The chunks a failing disk did not read on the first pass (LATER), each narrowed
    down to its unreadable sectors now, and sent (GNU ddrescue's order: everything
    readable first, then the bad areas, touched as little as possible)."""
    if not runs.later:
        return
    if isinstance(source, Source):
        source.second_pass()
    total = sum(plan.chunk_length(i) for i in runs.later)
    report(Rescuing(len(runs.later), total))
    done = 0
    for index in runs.later:
        chunk = await trio.to_thread.run_sync(encode_repair, source, plan, index)
        runs.unreadable += chunk.unreadable
        await channel.send(chunk)
        done += chunk.length
        report(Progress.of(done, total, channel.conn.bytes_out, runs.unreadable))


async def _send_slot(channel: Channel, plan: Plan, have: HaveMap, runs: Runs, slot: Slot) -> None:
    """One chunk (or a hole's run of zero chunks) to the receiver."""
    if slot.zero_run and not have.expected:
        await runs.add(ChunkKind.ZERO, slot.index, count=slot.zero_run)
    elif slot.zero_run:
        for i in range(slot.index, slot.index + slot.zero_run):
            if have.covered <= i:
                await runs.flush()
            held = await have.get(i)
            have.subs(i)  # not needed: a hole is sent whole (as ZERO)
            if held is not None and held == zero_digest(plan.chunk_length(i)):
                await runs.add(ChunkKind.SAME, i, held)
            else:
                await runs.add(ChunkKind.ZERO, i)
    else:
        encoded = await slot.encoded()
        if encoded.same is not None:
            await runs.add(ChunkKind.SAME, slot.index, encoded.same)
        elif encoded.zero:
            await runs.add(ChunkKind.ZERO, slot.index)
        elif encoded.lost:
            await runs.add(ChunkKind.LOST, slot.index)
        elif encoded.later:
            runs.later.append(slot.index)
            await runs.add(ChunkKind.LATER, slot.index)
        else:
            await runs.flush()
            event = encoded.patch or encoded.chunk
            assert event is not None
            if encoded.chunk is not None:
                runs.unreadable += encoded.chunk.unreadable
            await channel.send(event)
