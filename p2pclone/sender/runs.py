"""What both senders (one receiver, or a multicast group) share about the chunks they
send: what the receiver holds already (HAVE), runs of chunks sent as one frame, and
answers to a receiver's NAK."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from ..pipeline import DiskSource, encode_repair
from ..protocol import (
    HASH_SIZE,
    MAX_HASHES,
    SUB_HASH_SIZE,
    Have,
    Later,
    Lost,
    Nak,
    Plan,
    Same,
    Zero,
)
from ..session import Channel


class ChunkKind(enum.Enum):
    """How a chunk that is not sent whole reaches a receiver."""

    ZERO = "zero"  # all zeros: a ZERO range, no payload
    SAME = "same"  # the receiver holds it already: a SAME range with its hash
    LOST = "lost"  # the source cannot provide it (a damaged image): a LOST range
    LATER = "later"  # a failing disk did not read it on the first pass: a LATER range
    REF = "ref"  # it comes through a multicast group's slice: a REF with its hash
    # a group member gets it whole over its own link: a chunk naming unreadable source
    # ranges (each member must learn them from the sender, never from the group)
    WHOLE = "whole"


#: what a run becomes: (kind, first chunk, count, the chunks' hashes for SAME and REF)
Emit = Callable[[ChunkKind, int, int, bytes], Awaitable[None]]


class Runs:
    """Merges consecutive chunks of one kind into runs, each handed to ``emit`` once
    it ends: ZERO and LOST runs of any length, SAME and REF runs of at most MAX_HASHES
    chunks (their hashes travel in one frame)."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.kind: ChunkKind | None = None
        self.start = 0
        self.count = 0
        self.hashes = bytearray()
        self.totals: Counter[ChunkKind] = Counter()
        #: source ranges sent as unreadable (zeros), for the done line
        self.unreadable: list[tuple[int, int]] = []
        #: chunks left for the second pass (LATER), in order
        self.later: list[int] = []

    async def add(self, kind: ChunkKind, index: int, digest: bytes = b"", count: int = 1) -> None:
        """Add ``count`` chunks from ``index`` (SAME and REF: one chunk and its hash)."""
        full = bool(self.hashes) and self.count >= MAX_HASHES
        if kind is not self.kind or index != self.start + self.count or full:
            await self.flush()
            self.kind, self.start = kind, index
        self.count += count
        self.hashes += digest
        self.totals[kind] += count

    async def flush(self) -> None:
        if self.count:
            assert self.kind is not None
            await self.emit(self.kind, self.start, self.count, bytes(self.hashes))
        self.kind, self.count, self.hashes = None, 0, bytearray()


def run_frame(kind: ChunkKind, first: int, count: int, hashes: bytes) -> Zero | Same | Lost | Later:
    """The unicast frame for a run (a REF run exists only in a multicast group)."""
    match kind:
        case ChunkKind.ZERO:
            return Zero(index=first, count=count)
        case ChunkKind.SAME:
            return Same(index=first, hashes=hashes)
        case ChunkKind.LOST:
            return Lost(index=first, count=count)
        case ChunkKind.LATER:
            return Later(index=first, count=count)
        case ChunkKind.REF | ChunkKind.WHOLE:
            raise AssertionError("REF and WHOLE runs are a multicast group's")


async def answer_nak(channel: Channel, source: DiskSource, plan: Plan, nak: Nak) -> None:
    """Send again, whole, the chunks a receiver asks for (its verify read them back
    wrong, or a multicast slice never gave them)."""
    for index in nak.indices:
        chunk = await trio.to_thread.run_sync(encode_repair, source, plan, index)
        await channel.send(chunk)


class HaveMap:
    """What the receiver reports it holds (HAVE frames), consumed in index order.

    Entries are dropped as they are used, so memory follows how far the receiver's
    report runs ahead of the sender (32 bytes a chunk at most).
    """

    def __init__(self, expected: bool, plan: Plan, sub: int = 0, rescue: bool = False) -> None:
        self.expected = expected
        self.plan = plan
        self.sub = sub
        #: the held chunks are an earlier run's of this clone, which ended with
        #: unreadable ranges: they are taken as they are, not read again (ddrescue's
        #: mapfile), and only what is not held is read
        self.rescue = rescue
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
