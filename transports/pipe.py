"""An in-process stream pair with flow control that hands buffers over without copying.

The image recorder and player talk to the sender and receiver in the same process.
A socket pair would copy every byte through the kernel in 200 KiB pieces (measured:
a fifth of a restore's time); trio's testing streams never push back, so a fast sender
would pile a whole disk up in memory.  Here a buffer written is queued as it is (bytes
are immutable; other buffers are copied once) and a writer waits while more than
``limit`` bytes are queued.
"""

from __future__ import annotations

import operator
from collections import deque

import trio


class _Direction:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: deque[bytes] = deque()
        self.size = 0
        self.eof = False  # the writer is done (send_eof or aclose)
        self.reader_gone = False  # the reader closed: writes fail
        self.changed = trio.lowlevel.ParkingLot()


class PipeStream(trio.abc.HalfCloseableStream):
    #: readers may take a whole queued buffer at once (p2pclone's Channel looks at this)
    receive_size = None

    def __init__(self, inbox: _Direction, outbox: _Direction) -> None:
        self._in = inbox
        self._out = outbox
        self._closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await self._send(data)
        finally:
            self._sending = False

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        out = self._out
        if self._closed or out.eof:
            raise trio.ClosedResourceError("this end is closed for sending")
        while out.size >= out.limit and not out.reader_gone:
            await out.changed.park()
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        if out.reader_gone:
            raise trio.BrokenResourceError("the other end was closed")
        if data:
            part = data if isinstance(data, bytes) else bytes(data)
            out.parts.append(part)
            out.size += len(part)
            out.changed.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        out = self._out
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this end is closed")
        while out.size >= out.limit and not out.reader_gone and not self._closed:
            await out.changed.park()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._out.eof = True
        self._out.changed.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int | None) -> bytes:
        box = self._in
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        while not box.parts and not box.eof:
            await box.changed.park()
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        if not box.parts:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return b""
        head = box.parts[0]
        if max_bytes is None or len(head) <= max_bytes:
            box.parts.popleft()
            out = head
        else:
            out, box.parts[0] = head[:max_bytes], head[max_bytes:]
        box.size -= len(out)
        box.changed.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return out

    async def aclose(self) -> None:
        self._closed = True
        self._out.eof = True
        self._in.reader_gone = True
        self._in.parts.clear()
        self._in.size = 0
        self._out.changed.unpark_all()
        self._in.changed.unpark_all()
        await trio.lowlevel.checkpoint()


def pipe_pair(limit: int = 8 << 20) -> tuple[PipeStream, PipeStream]:
    """Two connected streams; each direction queues at most about ``limit`` bytes."""
    a_to_b, b_to_a = _Direction(limit), _Direction(limit)
    return PipeStream(b_to_a, a_to_b), PipeStream(a_to_b, b_to_a)
