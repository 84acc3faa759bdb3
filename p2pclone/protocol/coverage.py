"""Which chunks a session has covered, in order, and the root hash over them.

Every chunk of the plan is covered once, in chunk order, by CHUNK, PATCH, ZERO, SAME,
LOST, REF (multicast) or LATER; a chunk LATER left for after the first pass comes as a
CHUNK once every chunk is covered, before END.  Pure checks on one side's view of the
stream: the Connection calls ``take`` for both directions.
"""

from __future__ import annotations

from ..errors import LocalProtocolError, RemoteProtocolError
from .fields import HASH_SIZE, Encoding
from .group import Ref
from .messages import Chunk, Event, Later, Lost, Patch, Same, Zero
from .plan import Plan
from .root import RootHash, zero_digest

Exc = type[LocalProtocolError] | type[RemoteProtocolError]


class Coverage:
    """The data frames of one session so far, against its plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.next_index = 0
        self.root = RootHash()
        #: sub-block size of a delta (0: none), from ACCEPT
        self.sub_size = 0

    def take(self, event: Event, exc: Exc) -> None:
        """Check one data frame against the stream so far, and count it."""
        match event:
            case Chunk() if event.index in self.root.holes:
                if self.next_index != self.plan.chunk_count:
                    raise exc(
                        f"chunk {event.index}, left for later, came before the first pass ended"
                    )
                self._body(event, exc)
                self.root.fill(event.index, event.digest)
            case Chunk() | Patch():
                if isinstance(event, Patch):
                    self._patch(event, exc)
                self._expect(event.index, 1, exc)
                self._body(event, exc)
                self.root.add(event.digest)
            case Zero():
                self._expect(event.index, event.count, exc)
                end = event.index + event.count
                plan = self.plan
                full = min(end, plan.source_size // plan.chunk_size) - event.index
                self.root.add(zero_digest(plan.chunk_size) * max(full, 0))
                if full < event.count:  # the run includes the short last chunk
                    self.root.add(zero_digest(plan.chunk_length(end - 1)))
            case Ref() | Same():  # BLAKE3 streams: the hashes at once, as one at a time
                self._expect(event.index, event.count, exc)
                self.root.add(event.hashes)
            case Lost():
                self._expect(event.index, event.count, exc)
                self.root.add(bytes(HASH_SIZE) * event.count)
            case Later():
                self._expect(event.index, event.count, exc)
                self.root.hole(event.count)

    def end(self, chunk_count: int, exc: Exc) -> None:
        """END: every chunk covered, none still to come."""
        if chunk_count != self.plan.chunk_count or self.next_index != self.plan.chunk_count:
            raise exc(
                f"END after {self.next_index} of {self.plan.chunk_count} chunks: "
                "the stream is incomplete"
            )
        if self.root.holes:
            raise exc(f"END before chunk {min(self.root.holes)}, left for later, came")

    def _expect(self, index: int, count: int, exc: Exc) -> None:
        if index != self.next_index:
            raise exc(f"chunk {index} arrived where chunk {self.next_index} was due")
        if index + count > self.plan.chunk_count:
            raise exc(f"chunks up to {index + count} exceed the plan's {self.plan.chunk_count}")
        self.next_index += count

    def _body(self, event: Chunk | Patch, exc: Exc) -> None:
        first, n = event.index * self.plan.chunk_size, self.plan.chunk_length(event.index)
        if event.length != n:
            raise exc(f"chunk {event.index} claims {event.length} bytes; the plan says {n}")
        bad = event.unreadable if isinstance(event, Chunk) else ()
        if any(a < first or b > first + n for a, b in bad):
            raise exc(f"chunk {event.index} names unreadable bytes outside itself")

    def _patch(self, event: Patch, exc: Exc) -> None:
        if not self.sub_size:
            raise exc("PATCH outside a delta re-sync (no sub-block size was agreed)")
        nsub = -(-event.length // self.sub_size)
        blocks = event.changed_blocks()
        if len(event.changed) != -(-nsub // 8) or not blocks or blocks[-1] >= nsub:
            raise exc(f"PATCH for chunk {event.index} has a bitmap that does not fit the chunk")
        if event.encoding == Encoding.RAW:
            plain = sum(min(self.sub_size, event.length - k * self.sub_size) for k in blocks)
            if len(event.body) != plain:
                raise exc(f"PATCH for chunk {event.index}: raw body length disagrees with its map")
