"""A receiver's multicast data plane, plugged into its ordinary session as a feed
(p2pclone/receiver/feed.py).

Over the receiver's own sealed control connection the sender says what comes through
the group: GROUP (the group key), REF (which chunks, with which hashes, come in which
slice), POLL (what of a slice is missing?  answered with REPORT) and EVICT (leave the
group: the session ends, and the receiver connects again for unicast).  Completed
slices are handed to the session only at a POLL or at END, once every REF before them
has been read, and only the chunks a REF vouched for are taken from them.
"""

from __future__ import annotations

import trio

from ..errors import IntegrityError, RemoteProtocolError
from ..protocol import HASH_SIZE, Chunk, Event, Evict, Group, Poll, Ref, Report
from ..protocol.dataplane import DatagramError
from ..receiver.feed import Feed, Reconnect, Sink
from .plane import ReceivePlane, unpack_entries


class GroupFeed(Feed):
    def __init__(self, plane: ReceivePlane) -> None:
        self.plane = plane
        self.slices_due: set[int] = set()
        self._scope = trio.CancelScope()

    @property
    def bytes_in(self) -> int:
        return self.plane.bytes_in

    async def handle(self, frame: Event, sink: Sink) -> None:
        plane = self.plane
        match frame:
            case Group():
                plane.start(frame.key, frame.session)
                sink.start_soon(self._run)
            case Ref():
                hashes = {
                    frame.index + k: frame.hashes[HASH_SIZE * k : HASH_SIZE * (k + 1)]
                    for k in range(frame.count)
                }
                sink.promised(hashes)
                plane.expect(frame.slice, frame.fragments, frame.length, hashes)
                self.slices_due.add(frame.slice)
            case Poll():
                await trio.sleep(0.002)  # datagrams sent just before the POLL
                plane.drain()
                plane.polled(frame.slice)
                # Answer first, then write: the group should not wait for our disk.
                await sink.send(Report(slice=frame.slice, missing=plane.missing(frame.slice)))
                await self._take_slices(sink, frame.slice)
            case Evict():
                raise Reconnect(frame.reason)
            case _:
                raise RemoteProtocolError(
                    f"unexpected {type(frame).__name__} frame in a multicast session"
                )

    async def end(self, sink: Sink) -> None:
        # Slices completed since the last POLL (or still in the socket): hand them to
        # the writers before judging.
        await self._take_slices(sink, None)
        self._scope.cancel()
        if self.slices_due:
            raise IntegrityError(
                f"multicast slices {sorted(self.slices_due)[:5]} never arrived "
                "whole, yet the sender ended: run the receiver again (it resumes)"
            )

    async def _run(self) -> None:
        with self._scope:
            await self.plane.run()

    async def _take_slices(self, sink: Sink, upto: int | None) -> None:
        """Hand the whole slices numbered ``upto`` or less (all: None) to the writers."""
        self.plane.drain()
        for slice_no, data in self.plane.take_ready(upto):
            await self._slice(sink, slice_no, data)

    async def _slice(self, sink: Sink, slice_no: int, data: bytes) -> None:
        """A multicast slice arrived whole: deliver the chunks our plan expects from it."""
        expected = self.plane.expected.pop(slice_no, {})
        try:
            entries = unpack_entries(data)
        except DatagramError:
            entries = []  # garbage sealed with the group key: a rogue member's, or a bug
        for index, length, encoding, body in entries:
            digest = expected.pop(index, None)
            if digest is None:
                continue  # not ours to take: only what our own plan vouches for
            chunk = Chunk(index=index, length=length, digest=digest, encoding=encoding, body=body)
            await sink.deliver(chunk)
        # Announced but absent from the slice: the group's copy is not the sender's.
        sink.fetch_again(expected)
        self.slices_due.discard(slice_no)
