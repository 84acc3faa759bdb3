"""Transports: a URL scheme -> something that moves p2pclone's bytes.

A transport is a class constructed from a URL (which it parses and validates,
raising :class:`p2pclone.errors.UsageError` for a bad one).  Two-way transports
give the sender :meth:`Transport.connect` -> ``trio.abc.Stream`` and the receiver
:meth:`Transport.listen` -> :class:`LinkListener`, whose ``accept()`` returns the
stream of the first peer.  Everything above works on ``trio.abc.Stream`` alone.

Built-in schemes are known directly (no other package can take them over); any other
scheme is looked up in the entry-point group ``p2pclone.transports`` (name = the
scheme, value = ``module:Class``), so another distribution can add one without
touching p2pclone.  See docs/transports.md.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar

import trio

from p2pclone.errors import TransportError, UsageError

ENTRY_POINT_GROUP = "p2pclone.transports"

_BUILTIN = {
    "tcp": "transports.tcp:TcpTransport",
    "memory": "transports.memory:MemoryTransport",
    "serial": "transports.serial:SerialTransport",
    "file": "transports.share:ShareTransport",
    "smb": "transports.share:ShareTransport",
    "multicast": "transports.multicast:MulticastTransport",
}


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


class Transport(abc.ABC):
    scheme: ClassVar[str]
    #: the chunk size a sender uses over this transport unless told otherwise
    #: (None: p2pclone's default, 1 MiB)
    chunk_size: ClassVar[int | None] = None
    #: both ends of the link are in this process (an image's recorder or player):
    #: frames are not sealed after pairing (see p2pclone.protocol.Connection)
    local: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url
        #: what the caller passed to open_transport() besides the URL (code, password,
        #: fresh): transports that need them look them up, the others ignore them
        self.options: dict[str, Any] = {}

    @abc.abstractmethod
    async def connect(self) -> trio.abc.Stream:
        """Sender side: open the link.  Raises TransportError."""

    @abc.abstractmethod
    async def listen(self) -> LinkListener:
        """Receiver side: start listening.  Raises TransportError."""


def split_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise UsageError(
            f"{url!r} is not a transport URL: write it as SCHEME://..., e.g. tcp://192.0.2.7:7411"
        )
    return scheme.lower()


def available_schemes() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def transport_class(scheme: str) -> type[Transport]:
    # Built-in schemes first: no installed package can take over tcp:// (and the
    # entry-point scan, ~50 ms, is only paid for schemes p2pclone doesn't ship).
    target = _BUILTIN.get(scheme)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == scheme:
                target = ep.value
                break
    if target is None:
        raise UsageError(
            f"unknown transport {scheme}://; known ones are "
            + ", ".join(f"{s}://" for s in available_schemes())
        )
    module, _, attr = target.partition(":")
    cls: type[Transport] = getattr(import_module(module), attr)
    return cls


def open_transport(url: str, **options: Any) -> Transport:
    """The transport for ``url``, with the URL parsed and checked.

    ``options`` (the pairing code, an SMB password, ``fresh``...) are kept in
    ``Transport.options`` for the transports that need them.

    Raises:
        UsageError: unknown scheme or malformed URL.
    """
    transport = transport_class(split_scheme(url))(url)
    transport.options.update(options)
    return transport


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


__all__ = [
    "ENTRY_POINT_GROUP",
    "LinkListener",
    "Transport",
    "available_schemes",
    "link_errors",
    "open_transport",
    "split_scheme",
    "transport_class",
]
