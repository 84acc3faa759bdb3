"""What a URL, a SOURCE or a TARGET names, parsed once into a typed value.

A URL names one of three kinds of far end, and the drivers (p2pclone/jobs.py) treat
each its own way, with a ``match`` over :data:`FarEnd`:

* :class:`Link`: a two-way byte stream to one peer (``tcp``, ``serial``, ``memory``, and
  any scheme another distribution adds): a :class:`p2pclone.transports.Transport`, whose
  ``connect()``/``listen()`` give the drivers a ``trio.abc.Stream``;
* :class:`Image`: an image file on a share (``file``, ``smb``): the drivers run a
  recorder or a player (p2pclone/image/link.py) over an in-process pipe;
* :class:`Group`: one sender, many receivers (``multicast``): the group's sockets, run
  by p2pclone's multicast driver.

A SOURCE or a TARGET is a :class:`Disk` (a block device or a file) or an :class:`Image`.

Built-in schemes are parsed here and win over plug-ins (no other package can take over
``tcp://``, and the entry-point scan, ~50 ms, is only paid for schemes p2pclone does not
ship); any other scheme is looked up in the entry-point group ``p2pclone.transports``
(name = the scheme, value = ``module:Class``, a link transport), so another
distribution can add one without touching p2pclone.  See docs/transports.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from p2pclone.transports import Transport
from p2pclone.transports.memory import MemoryTransport
from p2pclone.transports.multicast import MulticastGroup
from p2pclone.transports.serial import SerialTransport
from p2pclone.transports.tcp import TcpTransport

from .errors import UsageError
from .image.urls import Image, image

ENTRY_POINT_GROUP = "p2pclone.transports"

#: the link schemes p2pclone ships
LINKS: dict[str, type[Transport]] = {
    "tcp": TcpTransport,
    "serial": SerialTransport,
    "memory": MemoryTransport,
}
IMAGES = ("file", "smb")
GROUPS = ("multicast",)


@dataclass(frozen=True, slots=True)
class Link:
    """A two-way link to one peer."""

    transport: Transport

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def name(self) -> str:
        return f"{self.transport.scheme}://"


@dataclass(frozen=True, slots=True)
class Group:
    """A multicast group."""

    group: MulticastGroup

    @property
    def url(self) -> str:
        return self.group.url

    @property
    def name(self) -> str:
        return "multicast://"


@dataclass(frozen=True, slots=True)
class Disk:
    """A block device or a file, as SOURCE or TARGET."""

    path: str

    @property
    def name(self) -> str:
        return "a disk or file"


FarEnd = Link | Image | Group
Place = Disk | Image


def split_scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise UsageError(
            f"{url!r} is not a transport URL: write it as SCHEME://..., e.g. tcp://192.0.2.7:7411"
        )
    return scheme.lower()


def available_schemes() -> list[str]:
    names = {*LINKS, *IMAGES, *GROUPS}
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def far_end(url: str) -> FarEnd:
    """What ``url`` names, parsed and checked (nothing is opened).

    Raises:
        UsageError: not a URL, an unknown scheme (naming the known ones), or a
            malformed URL.
    """
    scheme = split_scheme(url)
    if scheme in IMAGES:
        return image(url)
    if scheme in GROUPS:
        return Group(MulticastGroup(url))
    return Link(link_class(scheme)(url))


def place(name: str) -> Place:
    """A SOURCE or TARGET: an image URL, else a disk or file path."""
    return image(name) if is_image_url(name) else Disk(name)


def link_class(scheme: str) -> type[Transport]:
    """The link transport for ``scheme``: built in, or a plug-in's.

    Raises:
        UsageError: an unknown scheme, or a plug-in that is not a link transport.
    """
    if scheme in LINKS:
        return LINKS[scheme]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Transport)):
                raise UsageError(
                    f"the plug-in for {scheme}:// ({ep.value}) is not a p2pclone link "
                    "transport (a subclass of p2pclone.transports.Transport)"
                )
            return cls
    raise UsageError(
        f"unknown transport {scheme}://; known ones are "
        + ", ".join(f"{s}://" for s in available_schemes())
    )


def is_image_url(name: str) -> bool:
    """A SOURCE or URL naming an image on a share rather than a disk or a live link."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.lower() in IMAGES


def open_transport(url: str) -> Transport:
    """The link transport for ``url`` (tests and tools that want one directly).

    Raises:
        UsageError: unknown scheme, not a link, or a malformed URL.
    """
    end = far_end(url)
    if not isinstance(end, Link):
        raise UsageError(f"{url!r} is not a link to one peer (it names {end.name})")
    return end.transport


__all__ = [
    "ENTRY_POINT_GROUP",
    "Disk",
    "FarEnd",
    "Group",
    "Image",
    "Link",
    "Place",
    "available_schemes",
    "far_end",
    "image",
    "is_image_url",
    "link_class",
    "open_transport",
    "place",
    "split_scheme",
]
