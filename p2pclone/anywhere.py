"""A receiver given no URL: a sender on any address, or a group announced for its code.

It opens its target, listens on every address (announced over mDNS by the code's
nameplate, so a sender with no URL finds it) and, at the same time, looks for a
multicast sender announcing a group for the same nameplate.  Whichever sender first
*proves the code* (pairs) is the session; until then both ways stay open:

* a group announced for the code is joined while the TCP listener keeps listening,
  and the listener closes only once the group's sender has paired.  Announcements are
  not authenticated (anyone on the LAN can make one): a forged one costs one failed
  join (a note), never the receiver's TCP listening;
* a unicast sender that pairs first ends the attempt at a group;
* two groups announced for one code are joined neither (a note names them; the
  receiver goes on waiting): p2pclone does not guess.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import trio

from p2pclone.transports import Listen
from p2pclone.transports.mdns import browse, interface_towards
from p2pclone.transports.multicast import MulticastGroup
from p2pclone.transports.tcp import TcpListener, TcpTransport

from .disks import Target
from .endpoints import Link
from .errors import P2PCloneError, TransportError
from .jobs import Typos, check_receive, nameplate
from .journal import check_state_dir, default_state_dir
from .multicast.receiver import receive_multicast
from .options import Approve, ReceiveOptions
from .protocol import PROTOCOL_VERSION
from .receiver import approve_all, receive_stream
from .session import Connected, Done, Listening, Notice, Reporter, no_report

#: how long a group found by its announcement may take to show its sender's ANNOUNCE
FIND_SENDER = 10.0


async def receive_anywhere(
    target: str,
    options: ReceiveOptions,
    *,
    report: Reporter = no_report,
    approve: Approve = approve_all,
) -> Done:
    """``receive(target, "tcp://", …)``, or a group announced for the code's nameplate:
    the first sender to pair (see the module docstring).

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    transport = TcpTransport("tcp://")
    check_receive(Link(transport), options)
    if options.journal:
        await trio.to_thread.run_sync(check_state_dir, options.state_dir or default_state_dir())
    disk = await trio.to_thread.run_sync(Target.open, target)
    try:
        return await _Race(disk, transport, options, report, approve).run()
    finally:
        disk.close()


class _Race:
    """A unicast sender on the listener and the groups announced for the code: the
    first whose sender pairs has the target."""

    def __init__(
        self,
        disk: Target,
        transport: TcpTransport,
        options: ReceiveOptions,
        report: Reporter,
        approve: Approve,
    ) -> None:
        self.disk, self.transport, self.options = disk, transport, options
        self.report, self.approve = report, approve
        self.plate = nameplate(options.code)
        self.winner = ""  # "unicast" or the group's URL, once its sender paired
        self.outcome: list[Done] = []
        self.unicast = trio.CancelScope()
        self.groups = trio.CancelScope()

    def claim(self, who: str) -> Callable[[], None]:
        """The ``paired`` hook of one contender: the first to pair wins, the other is
        stopped (a contender that pairs second is refused)."""

        def paired() -> None:
            if self.winner and self.winner != who:
                raise TransportError(f"another sender ({self.winner}) paired first")
            self.winner = who
            (self.groups if who == "unicast" else self.unicast).cancel()

        return paired

    async def _listen(self) -> TcpListener:
        return await self.transport.listen(
            Listen(
                nameplate=self.plate,
                size=self.disk.size,
                version=str(PROTOCOL_VERSION),
                notice=lambda sentence: self.report(Notice(sentence)),
            )
        )

    async def run(self) -> Done:
        listener = await self._listen()
        self.report(Listening(listener.url, self.options.code))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._unicast, listener, nursery.cancel_scope)
            nursery.start_soon(self._groups, nursery.cancel_scope)
        if not self.outcome:
            raise TransportError("the receiver stopped before any sender came")
        return self.outcome[0]

    async def _unicast(self, listener: TcpListener, everything: trio.CancelScope) -> None:
        typos = Typos(self.options.code, self.report)
        try:
            with self.unicast:
                while True:
                    stream = await listener.accept()
                    url = listener.url
                    await listener.aclose()  # one sender: no more listening, announcing
                    self.report(Connected(url))
                    with typos.another_try():
                        self.outcome.append(
                            await receive_stream(
                                stream,
                                self.disk,
                                self.options,
                                code=self.options.code,
                                url=url,
                                report=self.report,
                                approve=self.approve,
                                paired=self.claim("unicast"),
                            )
                        )
                        everything.cancel()
                        return
                    listener = await self._listen()  # a typo: the same code, again
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _groups(self, everything: trio.CancelScope) -> None:
        tried: set[str] = set()
        with self.groups:
            while True:
                stop = threading.Event()
                try:
                    found = await trio.to_thread.run_sync(
                        functools.partial(
                            browse,
                            float("inf"),
                            self.plate,
                            groups=True,
                            stop=stop,
                            ignore=frozenset(tried),
                        ),
                        abandon_on_cancel=True,
                    )
                finally:
                    stop.set()
                tried.update(a.group for a in found)
                if len(found) > 1:
                    listing = ", ".join(f"multicast://{a.group} from {a.host}" for a in found)
                    self.report(
                        Notice(
                            f"{len(found)} multicast senders announce the code "
                            f"{self.plate}-…: {listing}; joining none (give the one you "
                            "mean as the URL); still waiting for a sender"
                        )
                    )
                    continue
                # Join on the interface the announcement came from: a lab with no
                # router has no route for the group, so the kernel cannot choose one.
                iface = interface_towards(found[0].addresses) if found else None
                url = f"multicast://{found[0].group}" if found else ""
                if iface:
                    url += f"?iface={iface}"
                if found and await self._join(url):
                    everything.cancel()
                    return

    async def _join(self, url: str) -> bool:
        """Try the group at ``url``; True once its clone is done.  A group whose sender
        never shows or cannot pair is a note: the receiver goes on waiting."""
        self.report(Notice(f"joining the multicast group {url}, announced for this code"))
        try:
            done = await receive_multicast(
                self.disk,
                MulticastGroup(url),
                self.options,
                report=self.report,
                approve=self.approve,
                paired=self.claim(url),
                find_within=FIND_SENDER,
            )
        except P2PCloneError as exc:
            if self.winner == url:
                raise  # it paired: its failure is this run's
            self.report(
                Notice(
                    f"the multicast group {url} could not be joined ({exc.message}); still "
                    "waiting for a sender"
                )
            )
            return False
        self.outcome.append(done)
        return True


__all__ = ["receive_anywhere"]
