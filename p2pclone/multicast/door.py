"""The multicast sender's door: announcing the group, accepting control connections,
and pairing them, HANDSHAKES at a time, counting failed pairings (guard.py) until
too many close the door for the run (docs/security.md#multicast)."""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Awaitable, Callable

import trio

from ..errors import AuthenticationError, ExitCode, P2PCloneError, TransportError
from ..session import Channel, greet, pair
from ..transports.multicast import MulticastGroup, encode_announce
from .guard import PairingGuard
from .members import Show

ANNOUNCE_EVERY = 0.5
#: Pairings in progress at once (the others wait their turn), and how long one may take
#: from its turn to the receiver's key confirmation (docs/security.md#multicast).  A
#: connection takes a turn only once it has said HELLO (within HELLO_TIMEOUT), and one
#: address holds one turn at a time: silent connections, however many, hold none.
HANDSHAKES = 4
HANDSHAKE_TIMEOUT = 30.0
HELLO_TIMEOUT = 30.0
#: connections from one address that may wait for their HELLO at once (more: closed)
GREETING_PER_ADDRESS = 64


class Door:
    """What the group sender's door knows: who failed to pair, who is refused, and
    whether the run is locked (too many failed pairings: ``locked`` holds the error)."""

    def __init__(
        self,
        transport: MulticastGroup,
        session: int,
        receivers: int,
        show: Show,
        on_lock: Callable[[], None],
        code: str = "",
    ) -> None:
        self.transport, self.session, self.receivers = transport, session, receivers
        self._show, self.on_lock = show, on_lock
        self.refused: dict[str, tuple[str, ExitCode]] = {}  # name -> why, its exit code
        self.guard = PairingGuard(receivers, code)
        self.handshakes = trio.CapacityLimiter(HANDSHAKES)
        self.blocked: set[str] = set()  # addresses refused for failed pairings (shown once)
        self.locked: list[AuthenticationError] = []  # the failed pairings reached the limit
        self.door = trio.CancelScope()  # announcing and accepting control connections
        self.pairing: set[trio.CancelScope] = set()  # handshakes in progress
        self.turns: dict[str, trio.Lock] = {}  # one handshake turn per address at a time
        self.ended = trio.Event()  # set (and replaced) when a counted pairing ends
        self.greeting: dict[str, int] = {}  # connections waiting for their HELLO

    def admits(self, host: str, name: str) -> bool:
        """False for an address that failed too often (no more guesses); shown once."""
        if self.guard.admits(host):
            return True
        if host not in self.blocked:
            self.blocked.add(host)
            self._show(name, "refused", why="too many failed pairings from this address")
        return False

    async def open(
        self,
        sock: socket.socket,
        port: int,
        listeners: list[trio.SocketListener],
        late: trio.Nursery,
        handler: Callable[[trio.SocketStream], Awaitable[None]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with self.door:
            async with trio.open_nursery() as both:
                both.start_soon(self._announce, sock, port)
                await both.start(
                    functools.partial(trio.serve_listeners, handler_nursery=late),
                    handler,
                    listeners,
                )
                task_status.started()
        for listener in listeners:  # closed: no more guesses (nor latecomers)
            await listener.aclose()

    async def _announce(self, sock: socket.socket, port: int) -> None:
        group = (self.transport.group, self.transport.port)
        while True:
            with contextlib.suppress(OSError):
                sock.sendto(encode_announce(self.session, port), group)
            await trio.sleep(ANNOUNCE_EVERY)

    async def _greet(self, channel: Channel, host: str) -> None:
        """HELLO both ways before a handshake turn is taken (nothing in it tests the
        code); at most GREETING_PER_ADDRESS connections from one address wait for it.

        Raises:
            P2PCloneError: too many from this address, or the HELLO did not come.
        """
        if self.greeting.get(host, 0) >= GREETING_PER_ADDRESS:
            raise TransportError(f"more than {GREETING_PER_ADDRESS} silent connections")
        self.greeting[host] = self.greeting.get(host, 0) + 1
        try:
            with trio.move_on_after(HELLO_TIMEOUT) as waited:
                await greet(channel)
            if waited.cancelled_caught:
                raise TransportError(f"no HELLO within {HELLO_TIMEOUT:.0f} s")
        finally:
            self.greeting[host] -= 1

    def close(self) -> None:
        self.door.cancel()
        for scope in self.pairing:  # and pairings in progress, or waiting for their turn
            scope.cancel()

    def _lock_out(self) -> None:
        """Too many failed pairings: no more (the control port closes), and the run
        ends with exit 3 (at once if the group has not started; else once the members
        in it have finished)."""
        guard = self.guard
        self.locked.append(
            AuthenticationError(
                f"{guard.failures} pairings with this sender failed (from "
                + ", ".join(f"{host} x{n}" for host, n in guard.worst())
                + f"), the limit for {self.receivers} receivers with this code: someone on "
                "the network may "
                "be guessing the code, so the sender stopped accepting receivers; check those "
                "hosts, then run the receivers and the sender again with a new code (the "
                "receivers resume)"
            )
        )
        self.close()
        self.on_lock()  # wakes the wait for the group to form

    async def handshake(self, channel: Channel, host: str, name: str) -> bool:
        """Pair, HANDSHAKES at a time and within HANDSHAKE_TIMEOUT each; a failure
        after our CONFIRM is a spent guess (guard.py), and too many stop the run."""
        spent = False

        async def confirm() -> None:
            # A guess may go out only while the run can afford it: with pairings in
            # progress counted as spent, a code that allows few guesses makes the
            # others wait for theirs to end (not refused: they may be right).
            nonlocal spent
            while not self.guard.begin(host):
                if not self.guard.admits(host):
                    raise AuthenticationError("too many failed pairings: not paired")
                await self.ended.wait()
            spent = True

        why = ""
        with trio.CancelScope() as scope:  # cancelled when the sender stops pairing
            self.pairing.add(scope)
            try:
                await self._greet(channel, host)
                async with self.turns.setdefault(host, trio.Lock()), self.handshakes:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await pair(channel, before_confirm=confirm, greeted=True)
            except trio.TooSlowError:
                why = f"no pairing within {HANDSHAKE_TIMEOUT:.0f} s"
            except P2PCloneError as exc:
                why = exc.message
            finally:
                self.pairing.discard(scope)
        if scope.cancelled_caught:
            why = "the sender stopped pairing"
        if spent:
            self.guard.end(host, paired=not why)
            self.ended.set()  # a guess is no longer out: the next may go
            self.ended = trio.Event()
        if not why:
            return True
        if spent:
            # A receiver with a wrong code is one of the lab that will not be cloned,
            # and a guess at the code all the same; a stranger's garbage, a port scan
            # or a silent connection never got that far.
            self.refused[name] = (
                why if "pairing failed" in why else f"pairing failed ({why})",
                ExitCode.AUTH,
            )
            if self.guard.exhausted:
                self._lock_out()
        self._show(name, "refused", why=why)
        await channel.close()
        return False
