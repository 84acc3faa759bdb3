"""Every URL scheme p2pclone knows, found one way: the scheme -> what the URL names.

A URL names one of three kinds of far end, and the drivers treat each kind its own way:

* ``LINK``: a two-way byte stream to one peer (``tcp``, ``serial``, ``memory``, and any
  scheme another distribution adds): a :class:`p2pclone.transports.Transport` class, whose
  ``connect()``/``listen()`` give the drivers a ``trio.abc.Stream``;
* ``IMAGE``: an image file on a share (``file``, ``smb``): the drivers run a recorder
  or player from :mod:`p2pclone.image.link` over an in-process pipe;
* ``GROUP``: one sender, many receivers (``multicast``): a :class:`GroupDriver`, which
  runs the group on top of the drivers' own pieces.

Built-in schemes are listed here and win over plug-ins (no other package can take over
``tcp://``, and the entry-point scan, ~50 ms, is only paid for schemes p2pclone does not
ship); any other scheme is looked up in the entry-point group ``p2pclone.transports``
(name = the scheme, value = ``module:Class``, a LINK), so another distribution can add
one without touching p2pclone.  See docs/transports.md.

Targets are named, not imported: the drivers use this registry, and what it names (the
image and multicast packages) may in turn use the drivers' pieces without a circle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Protocol

import trio

from p2pclone.transports import Transport

from .errors import UsageError
from .session import Done, Reporter

ENTRY_POINT_GROUP = "p2pclone.transports"


class Kind(enum.Enum):
    LINK = "link"
    IMAGE = "image"
    GROUP = "group"


_BUILTIN: dict[str, tuple[Kind, str]] = {
    "tcp": (Kind.LINK, "p2pclone.transports.tcp:TcpTransport"),
    "memory": (Kind.LINK, "p2pclone.transports.memory:MemoryTransport"),
    "serial": (Kind.LINK, "p2pclone.transports.serial:SerialTransport"),
    "file": (Kind.IMAGE, "p2pclone.image.link:clean_url"),
    "smb": (Kind.IMAGE, "p2pclone.image.link:clean_url"),
    "multicast": (Kind.GROUP, "p2pclone.multicast.driver:DRIVER"),
}


class GroupDriver(Protocol):
    """What a GROUP scheme supplies: the whole run of each side (``options``: the
    ones :func:`p2pclone.sender.send` and :func:`p2pclone.receiver.receive` take)."""

    async def send(
        self, source_path: str, url: str, *, code: str, report: Reporter, **options: Any
    ) -> Done: ...

    async def receive(
        self,
        target_path: str,
        url: str,
        *,
        code: str,
        report: Reporter,
        task_status: trio.TaskStatus[str],
        **options: Any,
    ) -> Done: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL's scheme, its kind, and where its implementation is (``module:attr``)."""

    url: str
    scheme: str
    kind: Kind
    target: str

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(import_module(module), attr)

    def transport(self, **options: Any) -> Transport:
        """LINK: the transport for the URL, parsed and checked; ``options`` (the code,
        ``wait``…) are kept in ``Transport.options`` for the transports that need them.

        Raises:
            UsageError: a malformed URL.
        """
        assert self.kind is Kind.LINK
        transport: Transport = self.load()(self.url)
        transport.options.update(options)
        return transport

    def group(self) -> GroupDriver:
        assert self.kind is Kind.GROUP
        driver: GroupDriver = self.load()
        return driver


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


def resolve(url: str) -> Endpoint:
    """What ``url`` names.

    Raises:
        UsageError: not a URL, or an unknown scheme (naming the known ones).
    """
    scheme = split_scheme(url)
    kind, target = _BUILTIN.get(scheme, (Kind.LINK, ""))
    if not target:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == scheme:
                target = ep.value
                break
    if not target:
        raise UsageError(
            f"unknown transport {scheme}://; known ones are "
            + ", ".join(f"{s}://" for s in available_schemes())
        )
    return Endpoint(url, scheme, kind, target)


def is_image_url(name: str) -> bool:
    """A SOURCE or URL naming an image on a share rather than a disk or a live link."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and _BUILTIN.get(scheme.lower(), (None,))[0] is Kind.IMAGE


def open_transport(url: str, **options: Any) -> Transport:
    """The LINK transport for ``url`` (tests and tools that want one directly).

    Raises:
        UsageError: unknown scheme, not a link, or a malformed URL.
    """
    endpoint = resolve(url)
    if endpoint.kind is not Kind.LINK:
        raise UsageError(f"{url!r} is not a link to one peer (it names an {endpoint.kind.value})")
    return endpoint.transport(**options)


def transport_class(scheme: str) -> type[Transport]:
    """The LINK transport class for ``scheme``."""
    cls: type[Transport] = resolve(f"{scheme}://").load()
    return cls


__all__ = [
    "ENTRY_POINT_GROUP",
    "Endpoint",
    "GroupDriver",
    "Kind",
    "available_schemes",
    "is_image_url",
    "open_transport",
    "resolve",
    "split_scheme",
    "transport_class",
]
