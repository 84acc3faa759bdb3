"""Image URLs: which Store a URL names (file:// or smb://), checked before anything is
opened, and what its query allows a reader (``?plain=1``, ``?salvage=1``)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ..errors import UsageError
from .local import LocalStore, local_path
from .smb import SMBLocation, SMBStore
from .store import Store, split_password


def open_store(url: str, *, create: bool, password: str | None = None) -> Store:
    """The image at ``url`` (file:// or smb://), opened to read, or to write if ``create``.

    Raises:
        UsageError: a malformed URL.  TransportError: cannot open it.
        AuthenticationError: the SMB server refused the credentials.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "file":
        return LocalStore(url, local_path(url), create=create)
    if scheme == "smb":
        return SMBStore(url, SMBLocation(url, password), create=create)
    raise UsageError(f"{url!r} is not an image URL: use file:///PATH or smb://HOST/SHARE/PATH")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """What an image URL's query allows a *reader* (restore, ``image verify|export``,
    an image as a send SOURCE) beyond the safe default; nothing, unless asked by name.

    ``plain``: read an image that is not encrypted, and so not authenticated: anyone
    who can write to the share can make one (p2pclone itself never writes them).
    ``salvage``: use an image without an intact index and root hash, by a scan of its
    records; a cut-short or rolled-back file then gives some chunks from an older save.
    """

    plain: bool = False
    salvage: bool = False


def read_options(url: str) -> ReadOptions:
    """The ``?plain=1&salvage=1`` options of an image URL.

    Raises:
        UsageError: an option that is not one of these, or a value other than 0 or 1.
    """
    query = urllib.parse.urlsplit(url).query
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = [(query, "")]
    found: dict[str, bool] = {}
    for key, value in pairs:
        if key not in ("plain", "salvage") or value not in ("0", "1"):
            raise UsageError(
                f"{url!r}: unknown image URL option {key}={value}; image URLs know only "
                "?plain=1 and ?salvage=1 (see docs/transports.md)"
            )
        found[key] = value == "1"
    return ReadOptions(**found)


def check_url(url: str) -> None:
    """Raise UsageError now for a malformed image URL (before anything is opened)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "file":
        local_path(url)
    elif scheme == "smb":
        SMBLocation(url, "")
    else:
        raise UsageError(f"{url!r} is not an image URL: use file:///PATH or smb://HOST/SHARE/PATH")
    read_options(url)


@dataclass(frozen=True, slots=True)
class Image:
    """An image URL, parsed and checked: ``url`` without a password, the ``password``
    it held (used, never shown), and what its query allows a reader."""

    url: str
    password: str | None
    read: ReadOptions

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0].lower()

    @property
    def name(self) -> str:
        return f"an image ({self.scheme}://)"


def image(url: str) -> Image:
    """An image URL, checked (UsageError now, before anything is opened)."""
    check_url(url)
    clean, password = split_password(url)
    return Image(clean, password, read_options(url))
