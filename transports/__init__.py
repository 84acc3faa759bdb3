"""Transports: what moves p2pclone's bytes between two machines.

A link transport is a class constructed from a URL (which it parses and validates,
raising :class:`p2pclone.errors.UsageError` for a bad one).  It gives the sender
:meth:`Transport.connect` -> ``trio.abc.Stream`` and the receiver
:meth:`Transport.listen` -> :class:`LinkListener`, whose ``accept()`` returns the
stream of the first peer.  Everything above works on ``trio.abc.Stream`` alone.
What a link needs besides its URL comes typed: :class:`Dial` (how to reach the
receiver) and :class:`Listen` (what to tell the links around while waiting).

Transports move bytes only: they import nothing of p2pclone but its errors.  Which
class serves which URL scheme is p2pclone's registry (p2pclone/endpoints.py), where
another distribution can add a scheme through the entry-point group
``p2pclone.transports``.  Multicast is not a link: ``multicast.py`` holds a group's
sockets, which p2pclone's multicast driver runs.  See docs/transports.md.
"""

from __future__ import annotations

import abc
import fcntl
import re
import struct
import termios
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, TypeVar
from urllib.parse import SplitResult, urlsplit

import trio

from p2pclone.errors import TransportError, UsageError

T = TypeVar("T")


class LinkListener(abc.ABC):
    """A receiver's listening endpoint, waiting for one sender."""

    #: the URL a sender should use to reach us (with the real port, if 0 was asked)
    url: str
    #: set by accept() when the peer cannot vouch for all it will send (an image
    #: salvaged without its index): one sentence, which the receiver raises as an
    #: IntegrityError after an otherwise complete session, never reporting success
    caveat: str | None = None

    @abc.abstractmethod
    async def accept(self) -> trio.abc.Stream:
        """Wait for a sender and return its stream."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


def _say_nothing(sentence: str) -> None:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Dial:
    """How a sender reaches its receiver, besides the URL."""

    #: the number of the pairing code (never its words): a link that can find a
    #: receiver with no address (tcp:// alone) looks for the one announcing it
    nameplate: str = ""
    #: keep trying this long (seconds) while nobody answers; only a transport that
    #: honours the ``wait`` option is given more than 0
    wait: float = 0.0
    #: told once, in one sentence, when the waiting starts
    notice: Callable[[str], None] = _say_nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """What a listening receiver may tell the links around, besides the URL."""

    #: the number of the pairing code, for an announcement ("" : announce nothing)
    nameplate: str = ""
    size: int = 0  # the target's size in bytes
    version: str = ""  # the protocol version
    #: a sentence for the user (an announcement that could not be made)
    notice: Callable[[str], None] = _say_nothing


class Transport(abc.ABC):
    scheme: ClassVar[str]
    #: the chunk size a sender uses over this transport unless told otherwise
    #: (None: p2pclone's default, 1 MiB)
    chunk_size: ClassVar[int | None] = None
    #: the options (p2pclone.options field names) this link honours beyond what every
    #: session over a link does: a sender's ``wait`` reaches ``Dial.wait`` only here
    honours: ClassVar[frozenset[str]] = frozenset()
    #: the same, on the receiving side
    receive_honours: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    async def connect(self, dial: Dial) -> trio.abc.Stream:
        """Sender side: open the link.  Raises TransportError."""

    @abc.abstractmethod
    async def listen(self, how: Listen) -> LinkListener:
        """Receiver side: start listening.  Raises TransportError."""


@contextmanager
def link_errors(url: str, doing: str) -> Iterator[None]:
    """Turn the ways a trio stream fails into one TransportError naming the link."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        cause = exc.__cause__ or exc
        detail = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        raise TransportError(
            f"the link {url} broke while {doing} ({detail}): the transfer was interrupted; "
            "check the cable or network and run both sides again (the receiver resumes "
            "where it stopped)"
        ) from exc


#: HOST[:PORT] where HOST is in brackets: one IPv6 literal, then nothing or a port
_BRACKETED = re.compile(r"\[[^\[\]/]+\](?::\d*)?")


def split_url(url: str, how: str) -> SplitResult:
    """``url`` split into its parts, every one checked: a malformed URL (an IPv6 literal
    with a missing bracket, a bad port) is a usage error naming ``how`` to write it,
    never a ValueError from deep inside.

    Raises:
        UsageError: the URL does not parse.
    """
    try:
        parts = urlsplit(url)
        parts.hostname, parts.port  # noqa: B018 - each raises ValueError when malformed
    except ValueError as exc:
        raise UsageError(f"{url!r} is not a valid URL ({exc}): {how}") from None
    where = parts.netloc.rpartition("@")[2]
    if ("[" in where or "]" in where) and not _BRACKETED.fullmatch(where):
        raise UsageError(
            f"{url!r} is not a valid URL (an IPv6 address goes in brackets, then :PORT "
            f"or nothing): {how}"
        )
    return parts


def delivered(stream: trio.abc.Stream, handed: int) -> int:
    """Of the ``handed`` bytes whose ``stream.send_all`` returned, those that reached
    the far end as far as the link can tell: a stream's own count (``delivered()``: the
    serial link's acknowledged bytes), less a TCP socket's send queue (SIOCOUTQ: bytes
    the peer's TCP has not acknowledged), else all (in-process pipes hand over at once)."""
    own = getattr(stream, "delivered", None)
    if callable(own):
        return int(own())
    inner = getattr(stream, "inner", None)  # a wrapper (a paced stream): what it wraps
    if isinstance(inner, trio.abc.Stream):
        return delivered(inner, handed)
    if isinstance(stream, trio.SocketStream):
        try:
            got = fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return handed
        return max(0, handed - int(struct.unpack("i", got)[0]))
    return handed


async def said_after(delay: float, say: Callable[[], None], wait: Callable[[], Awaitable[T]]) -> T:
    """``await wait()``; if it takes longer than ``delay`` seconds, ``say()`` once (a
    wait long enough to wonder is told what it waits for).  Its exceptions come out
    as they are, not in an exception group."""
    got: list[T] = []
    failed: list[BaseException] = []

    async def later() -> None:
        await trio.sleep(delay)
        say()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        try:
            got.append(await wait())
        except Exception as exc:  # re-raised below, outside the nursery
            failed.append(exc)
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return got[0]


def url_host(host: str) -> str:
    """A host as it goes into a URL: an IPv6 address in brackets (``[fe80::1%eth0]``)."""
    return f"[{host}]" if ":" in host else host


__all__ = [
    "Dial",
    "LinkListener",
    "Listen",
    "Transport",
    "link_errors",
    "delivered",
    "said_after",
    "split_url",
    "url_host",
]
