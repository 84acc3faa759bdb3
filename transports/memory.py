"""memory://NAME — an in-process link for tests, like pyserial's ``loop://``.

A receiver listening on ``memory://NAME`` registers the name; a sender connecting to
it gets one end of a ``trio.testing.memory_stream_pair()`` and the receiver the
other.  It lets the whole sender/receiver code run in one process with no sockets.
"""

from __future__ import annotations

import trio
import trio.testing

from p2pclone.errors import TransportError, UsageError

from . import Dial, LinkListener, Listen, Transport

_registry: dict[str, MemoryListener] = {}


class MemoryListener(LinkListener):
    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self._send, self._recv = trio.open_memory_channel[trio.abc.Stream](1)

    async def accept(self) -> trio.abc.Stream:
        return await self._recv.receive()

    async def aclose(self) -> None:
        _registry.pop(self.name, None)
        await self._send.aclose()
        await self._recv.aclose()


class MemoryTransport(Transport):
    scheme = "memory"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.name = url.partition("://")[2]
        if not self.name:
            raise UsageError("memory:// needs a name, e.g. memory://test1")

    async def connect(self, dial: Dial) -> trio.abc.Stream:
        listener = _registry.get(self.name)
        if listener is None:
            raise TransportError(f"nobody is listening at memory://{self.name}")
        ours, theirs = trio.testing.memory_stream_pair()
        await listener._send.send(theirs)
        return ours

    async def listen(self, how: Listen) -> MemoryListener:
        if self.name in _registry:
            raise TransportError(f"memory://{self.name} is already being listened on")
        listener = _registry[self.name] = MemoryListener(self.name)
        return listener
