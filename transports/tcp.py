"""tcp://HOST[:PORT] — a direct TCP link (crossover cable, switch, or routed).

The receiver listens (``tcp://`` or ``tcp://:PORT`` = every address, both IPv4 and
IPv6; ``tcp://BIND[:PORT]`` = one address); the sender connects to ``tcp://HOST[:PORT]``.
IPv6 literals go in brackets: ``tcp://[fe80::1%eth0]:7411``.  Default port 7411.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import trio

from p2pclone.errors import TransportError, UsageError

from . import LinkListener, Transport

DEFAULT_PORT = 7411

#: A silent peer (pulled cable, powered-off machine) is declared dead after about
#: KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds when the link is
#: idle, and after USER_TIMEOUT seconds when sent data goes unacknowledged.  Long
#: enough for a busy disk to catch up, short enough that nobody waits forever.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 4
USER_TIMEOUT = 60


#: Failures that mean "no receiver there yet": not started, its machine still booting,
#: the link not up.  A sender with a wait (send --wait) tries again on these alone.
NOT_THERE_YET = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
    }
)
#: Pause between attempts, doubling from the first to the last: a receiver started a
#: moment late is reached within half a second, a long wait costs one SYN per 2 s.
RETRY_PAUSE_FIRST = 0.5
RETRY_PAUSE_MAX = 2.0


def _failures(exc: OSError) -> list[OSError]:
    """One OSError per address tried (trio raises one OSError whose cause groups them)."""
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        found = [e for e in group.exceptions if isinstance(e, OSError)]
        if found:
            return found
    return [exc]


def _reason(failures: list[OSError]) -> str:
    """"Connection refused" (trio's own text also names the address, said already)."""
    texts = [os.strerror(e.errno) if e.errno else str(e) for e in failures]
    return "; ".join(dict.fromkeys(texts))


def dead_peer_options() -> list[tuple[int, int, int]]:
    """(level, option, value) for keepalives and a user timeout, so a dead link ends in
    an error, never a hang (Linux has them all; elsewhere only SO_KEEPALIVE)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return options


def tune(stream: trio.SocketStream) -> trio.SocketStream:
    """Keepalives and a user timeout, so a dead link ends in an error, never a hang."""
    for level, option, value in dead_peer_options():
        stream.setsockopt(level, option, value)
    return stream


def _bracket_form(netloc: str) -> str | None:
    """``tcp://[ADDRESS]:PORT`` for a netloc that holds an IPv6 literal without brackets
    (``::1:23010`` -> ``tcp://[::1]:23010``), else None.  Unbracketed, the text after the
    last colon would be the port: that split is kept when what is left is an address,
    else the whole text is taken for the address."""
    if netloc.startswith("[") or netloc.count(":") < 2:
        return None
    head, _, tail = netloc.rpartition(":")
    if tail.isdigit() and _is_ipv6(head):
        return f"tcp://[{head}]:{tail}"
    return f"tcp://[{netloc}]:{DEFAULT_PORT}" if _is_ipv6(netloc) else None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return False
    return True


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class TcpListener(LinkListener):
    def __init__(self, listeners: list[trio.SocketListener], url: str) -> None:
        self._listeners = listeners
        self.url = url

    async def accept(self) -> trio.abc.Stream:
        # One listener per address family when binding everywhere: take whichever
        # sender arrives first, on any of them.
        accepted: list[trio.SocketStream] = []
        async with trio.open_nursery() as nursery:

            async def one(listener: trio.SocketListener) -> None:
                stream = await listener.accept()
                if accepted:
                    await stream.aclose()
                    return
                accepted.append(tune(stream))
                nursery.cancel_scope.cancel()

            for listener in self._listeners:
                nursery.start_soon(one, listener)
        return accepted[0]

    async def aclose(self) -> None:
        for listener in self._listeners:
            await listener.aclose()


class TcpTransport(Transport):
    scheme = "tcp"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            parts = urlsplit(url)
            if fix := _bracket_form(parts.netloc.rpartition("@")[2]):
                raise UsageError(f"bad TCP URL {url!r}: write IPv6 addresses in brackets: {fix}")
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"bad TCP URL {url!r}: {exc}; write tcp://HOST:PORT") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise UsageError(f"bad TCP URL {url!r}: write tcp://HOST:PORT and nothing more")
        self.host: str | None = parts.hostname or None
        self.port = DEFAULT_PORT if port is None else port

    async def connect(self) -> trio.abc.Stream:
        """Sender side: connect to the receiver.

        ``options["wait"]`` (seconds, default 0: one attempt) is how long to keep trying
        while nobody answers (refused, unreachable: see ``NOT_THERE_YET``), pausing 0.5 s,
        then 1 s, then 2 s between attempts; ``options["waiting"]``, a callable taking one
        sentence, is told once, when the first attempt fails and the waiting starts.

        Raises:
            UsageError: no host, or port 0.
            TransportError: the name does not resolve, or nobody answered in time.
        """
        if not self.host:
            raise UsageError(
                f"{self.url!r} names no host to connect to: write tcp://HOST[:PORT], "
                f"e.g. tcp://192.0.2.7:{DEFAULT_PORT}"
            )
        if self.port == 0:
            raise UsageError(f"{self.url!r}: port 0 can't be connected to")
        where = f"tcp://{_format_host(self.host)}:{self.port}"
        wait = float(self.options.get("wait") or 0.0)
        waiting: Callable[[str], None] | None = self.options.get("waiting")
        deadline = trio.current_time() + wait
        pause = RETRY_PAUSE_FIRST
        while True:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except socket.gaierror:
                raise TransportError(
                    f"cannot resolve the host {self.host!r}: check the name or use an IP address"
                ) from None
            except OSError as exc:
                failures = _failures(exc)
                reason = _reason(failures)
                left = deadline - trio.current_time()
                if left <= 0 or any(e.errno not in NOT_THERE_YET for e in failures):
                    tried = pause > RETRY_PAUSE_FIRST and left <= 0
                    raise TransportError(
                        f"nobody is listening at {where} ({reason})"
                        + (f" after trying for {wait:g} s" if tried else "")
                        + ": start `p2pclone receive` on the target machine first and check "
                        "the address and port"
                        + (" (--wait sets how long to try)" if tried else "")
                    ) from None
            else:
                return tune(stream)
            if pause == RETRY_PAUSE_FIRST and waiting is not None:
                waiting(
                    f"nobody is listening at {where} yet ({reason}); waiting up to {wait:g} s "
                    "for the receiver to start (--wait)"
                )
            # The last attempt is made at the deadline; one under way runs to its end
            # (a slow but working route is not cut short by a short wait).
            await trio.sleep(min(pause, left))
            pause = min(2 * pause, RETRY_PAUSE_MAX)

    async def listen(self) -> TcpListener:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            if self.port == 0 and len(listeners) > 1:
                # Port 0 on every address gives each family its own random port; the
                # URL we print must hold for all of them, so take the first one's.
                port = listeners[0].socket.getsockname()[1]
                for listener in listeners:
                    await listener.aclose()
                listeners = await trio.open_tcp_listeners(port, host=self.host)
        except socket.gaierror:
            raise TransportError(f"cannot resolve the address {self.host!r} to listen on") from None
        except OSError as exc:
            raise TransportError(
                f"cannot listen on tcp://{_format_host(self.host or '')}:{self.port} "
                f"({exc.strerror or exc}): choose another port or address"
            ) from None
        sockname = listeners[0].socket.getsockname()
        host = self.host or "0.0.0.0"
        return TcpListener(listeners, f"tcp://{_format_host(host)}:{sockname[1]}")
