"""tcp://HOST[:PORT] — a direct TCP link (crossover cable, switch, or routed).

The receiver listens (``tcp://`` or ``tcp://:PORT`` = every address, both IPv4 and
IPv6, announced over mDNS with the code's nameplate: transports/mdns.py;
``tcp://BIND[:PORT]`` = one address); the sender connects to ``tcp://HOST[:PORT]``, or,
given ``tcp://`` alone, finds the receiver of its code's nameplate and connects to
whichever of its addresses answers first.  IPv6 literals go in brackets:
``tcp://[fe80::1%eth0]:7411``.  Default port 7411.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import trio

from p2pclone.errors import TransportError, UsageError

from . import Dial, LinkListener, Listen, Transport, said_after, split_url, url_host

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
    """ "Connection refused" (trio's own text also names the address, said already)."""
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


def _scoped(host: str) -> list[str]:
    """``host``, or for an IPv6 link-local address whose zone is missing or names no
    interface here (the receiver's own, say) the address on each of our interfaces
    that has IPv6 link-local: which one the cable is on, the attempts tell.  RFC 6874's
    ``%25`` form of the zone is read too."""
    address, _, zone = host.partition("%")
    try:
        link_local = ipaddress.IPv6Address(address).is_link_local
    except ValueError:
        return [host]
    if not link_local:
        return [host]
    if zone.startswith("25") and len(zone) > 2 and not zone.isdigit():
        zone = zone[2:]  # fe80::1%25eth0 (RFC 6874)
    if zone:
        try:
            socket.if_nametoindex(zone) if not zone.isdigit() else socket.if_indextoname(int(zone))
        except OSError:
            zone = ""
        else:
            return [f"{address}%{zone}"]
    from .mdns import link_local_zones

    zones = link_local_zones()
    if not zones:
        raise TransportError(
            f"{host} is an IPv6 link-local address, but this machine has no interface with "
            "IPv6 link-local up: bring the cable's interface up"
        )
    return [f"{address}%{z}" for z in zones]


#: how long a sender with no host looks for its receiver at least (send --wait: longer)
FIND_WAIT = 5.0
#: seconds of looking before the sender says what it looks for
SAY_AFTER = 3.0
#: Happy Eyeballs (RFC 8305): start the next address this long after the previous one
NEXT_ADDRESS = 0.25


async def _race(addresses: list[str], port: int, failed: str) -> tuple[trio.SocketStream, str]:
    """A stream to the first of ``addresses`` that answers, and which; the others are
    given up."""
    winner: list[tuple[trio.SocketStream, str]] = []
    failures: list[str] = []
    async with trio.open_nursery() as nursery:

        async def attempt(address: str, delay: float) -> None:
            await trio.sleep(delay)
            try:
                stream = await trio.open_tcp_stream(address, port)
            except OSError as exc:
                failures.append(f"{url_host(address)}: {exc.strerror or exc}")
                return
            if winner:
                await stream.aclose()
                return
            winner.append((stream, address))
            nursery.cancel_scope.cancel()

        for k, address in enumerate(addresses):
            nursery.start_soon(attempt, address, k * NEXT_ADDRESS)
    if not winner:
        raise TransportError(
            f"{failed} ({'; '.join(failures) or 'no address to try'}): check the cable, the "
            "firewall, and that `p2pclone receive` is running"
        )
    return winner[0]


class TcpListener(LinkListener):
    def __init__(self, listeners: list[trio.SocketListener], url: str) -> None:
        self._listeners = listeners
        self.url = url
        self.announcement: Any = None  # mdns.Announcement, while we wait

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
        if self.announcement is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.announcement.stop)
            self.announcement = None
        for listener in self._listeners:
            await listener.aclose()


class TcpTransport(Transport):
    scheme = "tcp"
    honours = frozenset({"wait", "limit_rate"})  # wait: a receiver late, or to be found
    receive_honours = frozenset({"limit_rate"})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            netloc = urlsplit(url).netloc
        except ValueError:  # said below
            netloc = ""
        if fix := _bracket_form(netloc.rpartition("@")[2]):
            raise UsageError(f"bad TCP URL {url!r}: write IPv6 addresses in brackets: {fix}")
        parts = split_url(url, "write tcp://HOST:PORT (an IPv6 address in brackets)")
        port = parts.port
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise UsageError(f"bad TCP URL {url!r}: write tcp://HOST:PORT and nothing more")
        self.host: str | None = parts.hostname or None
        self.port = DEFAULT_PORT if port is None else port

    async def connect(self, dial: Dial) -> trio.abc.Stream:
        """Sender side: connect to the receiver.

        ``dial.wait`` (seconds; 0: one attempt) is how long to keep trying while nobody
        answers (refused, unreachable: see ``NOT_THERE_YET``), pausing 0.5 s, then 1 s,
        then 2 s between attempts; ``dial.notice`` is told once, when the first attempt
        fails and the waiting starts.  With no host (``tcp://``), the receiver announcing
        ``dial.nameplate`` is looked for, at least FIND_WAIT seconds.

        Raises:
            UsageError: no host, or port 0.
            TransportError: the name does not resolve, or nobody answered in time.
        """
        if not self.host and self.url.rstrip("/") == "tcp:":  # no URL: find it by the code
            return await self._find_and_connect(dial)
        if not self.host:
            raise UsageError(
                f"{self.url!r} names no host to connect to: write tcp://HOST[:PORT], "
                f"e.g. tcp://192.0.2.7:{DEFAULT_PORT}, or give no URL to find the receiver "
                "by the code"
            )
        if self.port == 0:
            raise UsageError(f"{self.url!r}: port 0 can't be connected to")
        hosts = _scoped(self.host)
        if len(hosts) > 1:  # a link-local address without a zone we have: try them all
            bare = self.host.partition("%")[0]
            stream, address = await _race(
                hosts, self.port, f"nobody answered at [{bare}]:{self.port} on any interface here"
            )
            self.url = f"tcp://{url_host(address)}:{self.port}"
            return tune(stream)
        where = f"tcp://{url_host(hosts[0])}:{self.port}"
        if hosts[0] != self.host:  # a zone of ours given to a link-local address
            self.host, self.url = hosts[0], where
        wait = dial.wait
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
                        "the address and port" + (" (--wait sets how long to try)" if tried else "")
                    ) from None
            else:
                return tune(stream)
            if pause == RETRY_PAUSE_FIRST:
                dial.notice(
                    f"nobody is listening at {where} yet ({reason}); waiting up to {wait:g} s "
                    "for the receiver to start (--wait)"
                )
            # The last attempt is made at the deadline; one under way runs to its end
            # (a slow but working route is not cut short by a short wait).
            await trio.sleep(min(pause, left))
            pause = min(2 * pause, RETRY_PAUSE_MAX)

    async def listen(self, how: Listen) -> TcpListener:
        """Receiver side: listen; with no address (``tcp://`` or ``tcp://:PORT``) and a
        nameplate, also announce it over mDNS (transports/mdns.py)."""
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
                f"cannot listen on tcp://{url_host(self.host or '')}:{self.port} "
                f"({exc.strerror or exc}): choose another port or address"
            ) from None
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]  # listening again (another try after a typo): the same port
        host = self.host or "0.0.0.0"
        found = TcpListener(listeners, f"tcp://{url_host(host)}:{sockname[1]}")
        if not self.host and how.nameplate:
            await self._announce(found, sockname[1], how)
        return found

    async def _announce(self, listener: TcpListener, port: int, how: Listen) -> None:
        """Every address: tell the links around, by the code's nameplate (mDNS)."""
        from .mdns import Announcement

        announcement = Announcement(how.nameplate, port, how.size, how.version)
        try:
            await trio.to_thread.run_sync(announcement.start)
        except Exception as exc:  # noqa: BLE001 - no multicast here: the URL still works
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(announcement.stop)
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            how.notice(
                f"this receiver could not announce itself on the network ({why}): "
                f"senders need its address, tcp://ADDRESS:{port}"
            )
            return
        listener.announcement = announcement

    async def _find_and_connect(self, dial: Dial) -> trio.abc.Stream:
        """No host: find the receiver announcing our code's nameplate, then connect to
        the first of its addresses that answers (Happy Eyeballs: one more every 0.25 s)."""
        from .mdns import browse

        nameplate = dial.nameplate
        if not nameplate:
            raise UsageError("give the receiver's address, tcp://HOST[:PORT], or its code")
        wait = max(dial.wait, FIND_WAIT)
        others: list[Any] = []
        looking = (
            f"looking for the receiver with the code {nameplate}-… on the network "
            f"(up to {wait:g} s)"
        )
        try:
            found = await said_after(
                SAY_AFTER,
                lambda: dial.notice(looking),
                functools.partial(
                    trio.to_thread.run_sync,
                    functools.partial(browse, wait, nameplate, others=others),
                ),
            )
        except OSError as exc:
            raise TransportError(
                f"cannot look for the receiver on the network ({exc.strerror or exc}): give "
                f"its address, p2pclone send SOURCE tcp://ADDRESS:{DEFAULT_PORT}"
            ) from None
        if not found and others:
            codes = sorted({f"{a.nameplate}-… (on {a.host})" for a in others})
            waiting = (
                f"a receiver with the code {codes[0]} is waiting"
                if len(codes) == 1
                else f"receivers with the codes {', '.join(codes)} are waiting"
            )
            raise TransportError(
                f"no receiver with the code {nameplate}-… answered, but {waiting}: check "
                "the number (give the code the receiver shows)"
            )
        if not found:
            raise TransportError(
                f"no receiver with the code {nameplate}-… answered on the links around within "
                f"{wait:g} s: start `p2pclone receive` on the target machine first; if this "
                "network drops multicast (mDNS), give the receiver's address: "
                f"p2pclone send SOURCE tcp://ADDRESS:{DEFAULT_PORT}"
            )
        if len(found) > 1:
            listing = "; ".join(f"{a.host} ({', '.join(a.urls()) or 'no address'})" for a in found)
            raise UsageError(
                f"{len(found)} receivers announce the code {nameplate}-…: {listing}; p2pclone "
                "does not guess: give the one you mean by its URL, or restart one of them "
                "with another code"
            )
        peer = found[0]
        stream, address = await _race(
            peer.addresses,
            peer.port,
            f"found the receiver {peer.host}, but none of its addresses answered on port "
            f"{peer.port}",
        )
        self.url = f"tcp://{url_host(address)}:{peer.port}"  # the one reached
        return tune(stream)
