"""The data phase of a unicast send: every chunk in order (the first pass), then the
chunks a failing disk left for later (the second pass)."""

from __future__ import annotations

import trio

from ..disks import Source
from ..pipeline import DiskSource, encode_repair
from ..protocol import Plan
from ..protocol.root import zero_digest
from ..session import Channel, Progress, Reporter, Rescuing
from .ahead import EncodeAhead, Slot
from .runs import ChunkKind, HaveMap, Runs, run_frame


async def stream_chunks(
    channel: Channel,
    source: DiskSource,
    plan: Plan,
    have: HaveMap,
    threads: int,
    nursery: trio.Nursery,
    report: Reporter,
) -> Runs:
    async def emit(kind: ChunkKind, first: int, count: int, hashes: bytes) -> None:
        await channel.send(run_frame(kind, first, count, hashes))

    defer = False  # leave failing chunks for a second pass (a disk, a peer that takes it)
    if isinstance(source, Source) and channel.conn.peer_takes_later:
        source.first_pass()
        defer = True
    slots = EncodeAhead(source, plan, threads, have, defer=defer).start(nursery)
    runs = Runs(emit)
    last_report = -1.0
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
            await _send_slot(channel, plan, have, runs, slot)
            now = trio.current_time()
            if now - last_report >= 0.1:
                last_report = now
                done = min(plan.source_size, (slot.index + max(slot.zero_run, 1)) * plan.chunk_size)
                out = channel.conn.bytes_out
                report(Progress.of(done, plan.source_size, out, runs.unreadable))
        await runs.flush()
    report(Progress(plan.source_size, plan.source_size, channel.conn.bytes_out))
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
