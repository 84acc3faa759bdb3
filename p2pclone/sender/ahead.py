"""Encode-ahead: every chunk of the source read, hashed and compressed in index order
on worker threads, running ahead of whoever sends them.

The channel's bound (``READ_AHEAD_BYTES`` of chunks) caps memory: at most that plus
``threads`` chunks exist at a time, whatever the disk size.  It is deep on purpose:
when the link is the bottleneck, the reader runs up to that many chunks ahead, so
reading a long zero region (which sends nothing) overlaps with sending the data queued
before it instead of leaving the link idle.  Holes of a sparse source are known
without reading: they come as runs of zero chunks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import trio

from ..image.reader import ImageSource
from ..pipeline import DiskSource, Encoded, encode_chunk
from ..protocol import Plan
from .runs import HaveMap

#: Bytes of chunks the reader may run ahead of the link (32 chunks of 1 MiB; at
#: least 4 chunks whatever their size).  Measured on a 1 Gbit link: 16 -> 32 MiB
#: saves ~0.3 s per GiB of a disk with long zero regions.
READ_AHEAD_BYTES = 32 * 1024 * 1024


@dataclass
class Slot:
    """One chunk (or a run of hole chunks) on its way: ``result`` once ``ready``."""

    index: int
    zero_run: int = 0  # >0: a run of this many hole chunks, known without reading
    result: Encoded | None = None
    ready: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if self.zero_run:
            self.ready.set()

    async def encoded(self) -> Encoded:
        await self.ready.wait()
        assert self.result is not None
        return self.result


class EncodeAhead:
    """The slots of every chunk, in order, through a bounded channel.

    ``have``: what the receiver holds (one receiver): its hash for a chunk is awaited
    before the chunk is encoded, so a chunk it holds costs a hash and no compression
    (SAME), and a delta's sub-block hashes make a PATCH.  Without it every chunk is
    encoded whole (a multicast group compares each member's hashes afterwards).
    ``defer``: a chunk a failing disk does not read is left for later (``Encoded.later``),
    for the sender's second pass, instead of being narrowed down in place.
    """

    def __init__(
        self,
        source: DiskSource,
        plan: Plan,
        threads: int,
        have: HaveMap | None = None,
        *,
        defer: bool = False,
    ) -> None:
        self.source, self.plan, self.have, self.defer = source, plan, have, defer
        self.limiter = trio.CapacityLimiter(threads)
        depth = max(4, READ_AHEAD_BYTES // plan.chunk_size)
        self._send, self.slots = trio.open_memory_channel[Slot](depth)

    def start(self, nursery: trio.Nursery) -> trio.MemoryReceiveChannel[Slot]:
        """Start producing in ``nursery``; the slots arrive on the returned channel."""
        nursery.start_soon(self._produce, nursery)
        return self.slots

    async def _produce(self, nursery: trio.Nursery) -> None:
        source, plan, have = self.source, self.plan, self.have
        async with self._send:
            index = 0
            while index < plan.chunk_count:
                data_at = source.next_data(index * plan.chunk_size)
                first_data = min(data_at // plan.chunk_size, plan.chunk_count)
                if first_data > index:  # whole chunks inside a hole: zero, unread
                    await self._send.send(Slot(index, zero_run=first_data - index))
                    index = first_data
                    continue
                slot = Slot(index)
                held = await have.get(index) if have else None
                if held is not None and have is not None and have.rescue:
                    # A rescue resumed: what the earlier run wrote is not read again.
                    slot.result = Encoded(index, same=held)
                    slot.ready.set()
                    await self._send.send(slot)
                    index += 1
                    continue
                await self._send.send(slot)
                nursery.start_soon(self._work, slot, held, have.subs(index) if have else b"")
                index += 1

    async def _work(self, slot: Slot, held: bytes | None, subs: bytes) -> None:
        source, plan = self.source, self.plan
        if isinstance(source, ImageSource):  # its payloads go out as they are stored
            slot.result = await trio.to_thread.run_sync(
                source.encode, plan, slot.index, held, limiter=self.limiter
            )
        else:
            sub = self.have.sub if self.have else 0
            slot.result = await trio.to_thread.run_sync(
                functools.partial(encode_chunk, defer=self.defer),
                source, plan, slot.index, held, subs, sub,
                limiter=self.limiter,
            )  # fmt: skip
        slot.ready.set()
