"""The multicast sender's members: one control connection each, and how to talk to them
without letting one member's broken link stop the group."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..errors import ExitCode, P2PCloneError, RemoteProtocolError
from ..meter import Meter
from ..protocol import Error, Event, Result
from ..protocol.dataplane import Member
from ..sender.runs import HaveMap
from ..session import Channel, GroupProgress, GroupReporter

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


class Board:
    """What the display is told about each member (``show``): its state, how far it is
    in the bytes to copy, its rate, and its name as a person knows it: the host name
    its ACCEPT gave, with its address (IPv6 in brackets), once known."""

    def __init__(self, report: GroupReporter | None, clock: Clock) -> None:
        self.report, self.clock = report, clock
        self.meter: Meter | None = None  # the plan's, once made
        self.rates: dict[str, tuple[float, int]] = {}  # name -> (time, done) last shown
        self.labels: dict[str, str] = {}  # address -> "pc07 (192.0.2.7)"

    def named(self, name: str, target: dict[str, str | int]) -> None:
        """A member's ACCEPT told its host name."""
        address = name.rsplit(":", 1)[0]
        if host := str(target.get("host", "")):
            self.labels[address] = f"{host} ({address})"

    def label(self, name: str) -> str:
        return self.labels.get(name.rsplit(":", 1)[0], name)

    def show(
        self,
        name: str,
        state: str,
        *,
        why: str = "",
        done_bytes: int | None = None,
        at: int | None = None,
        repairs: int = 0,
    ) -> None:
        """``done_bytes``: bytes to copy it has (a unicast session's progress); ``at``:
        the disk position it holds up to (the group's slices)."""
        if self.report is None:
            return
        now = self.clock()
        total = self.meter.total if self.meter else 0
        if at is not None and self.meter is not None:
            done_bytes = self.meter.used_before(at)
        if state == "done":
            done_bytes = total
        then, before = self.rates.get(name, (now, 0))
        done = before if done_bytes is None else done_bytes
        moving = state in ("receiving", "unicast") and now > then and done >= before
        rate = (done - before) / (now - then) if moving else 0.0
        self.rates[name] = (now, done)
        self.report(GroupProgress(self.label(name), state, done, total, rate, repairs, why))


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
