"""The multicast sender's members: one control connection each, and how to talk to them
without letting one member's broken link stop the group."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..errors import ExitCode, P2PCloneError, RemoteProtocolError
from ..protocol import Error, Event, Result
from ..protocol.dataplane import Member, RateGovernor
from ..sender.runs import HaveMap
from ..session import Channel

#: report a member's state: show(name, state, why=..., done_bytes=..., repairs=...)
Show = Callable[..., None]
#: the group sender's one clock (seconds): trio's, so a test's mock clock drives it all
Clock = Callable[[], float]


@dataclass
class Peer:
    name: str
    channel: Channel
    member: Member
    have: HaveMap  # what it holds already (its journal's HAVE frames): a resumed member
    result: Result | None = None
    finished: trio.Event = field(default_factory=trio.Event)
    evicted_sent: bool = False
    #: it broke the protocol: its session was ended, it is not waited for to come back
    expelled: ExitCode | None = None

    @property
    def host(self) -> str:
        return self.name.rsplit(":", 1)[0]


async def tell(p: Peer, event: Event, show: Show) -> None:
    """Send to one member; a member whose link broke leaves the group, the rest go on."""
    if p.member.evicted:
        return
    try:
        await p.channel.send(event)
    except P2PCloneError as exc:
        p.member.evicted = f"its control link broke ({exc.message})"
        p.evicted_sent = True
        show(p.name, "evicted", why=p.member.evicted)


async def tell_all(peers: dict[str, Peer], make: Callable[[Peer], Event], show: Show) -> None:
    for p in list(peers.values()):
        if not p.member.evicted:
            await tell(p, make(p), show)


async def expel(channel: Channel, exc: RemoteProtocolError) -> None:
    """End a member's session that broke the protocol, telling it why (best effort: an
    ERROR frame, if the link can still carry one)."""
    message = (
        f"the multicast sender ended this receiver's session: {exc.message} (a bug, or "
        "not a p2pclone receiver); run it again (it resumes)"
    )
    with trio.move_on_after(5), contextlib.suppress(P2PCloneError):
        if channel.conn.can_send_error:
            await channel.send(Error(code=exc.code, message=message, exit=int(exc.exit_code)))
    await channel.close()


class Paced(trio.abc.HalfCloseableStream):
    """A stream whose sending is held to ``rate`` bytes per second (a token bucket)."""

    def __init__(self, inner: trio.SocketStream, rate: float, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.bucket = RateGovernor(rate=rate, limit=rate)
        self.piece = max(1024, min(64 * 1024, int(rate * 0.05)))  # fits the 50 ms burst

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            piece = view[: self.piece]
            while self.bucket.allowance(self.clock(), burst=0.05) < len(piece):
                await trio.sleep(self.bucket.wait_for(len(piece)))
            self.bucket.spend(len(piece))
            await self.inner.send_all(piece)
            view = view[len(piece) :]

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()
