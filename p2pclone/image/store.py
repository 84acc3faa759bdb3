"""Where images live: a :class:`Store` is one image file with positioned reads and
writes, reached through the local file system (``file://``: any mounted share, NFS,
CIFS, a local disk; local.py) or over SMB 2/3 with smbprotocol
(``smb://[USER@]HOST[:PORT]/SHARE/PATH``: no mount, no root; the password comes from
``P2PCLONE_SMB_PASSWORD``; smb.py).  Store methods block: callers run them in worker
threads.  Which store a URL names, and what its query allows, is urls.py.
"""

from __future__ import annotations

import abc
import errno
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StorageError

PASSWORD_ENV = "P2PCLONE_SMB_PASSWORD"
#: SMB requests kept on the wire at once by reads and writes
IN_FLIGHT = 4


class Store(abc.ABC):
    """One image file: positioned reads and writes, truncation, durability."""

    url: str

    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""

    @abc.abstractmethod
    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def truncate(self, length: int) -> None: ...

    @abc.abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @contextmanager
    def _check(self, doing: str) -> Iterator[None]:
        """OSError -> one StorageError sentence naming the image."""
        try:
            yield
        except OSError as exc:
            hint = (
                "the share is full: free space or save elsewhere"
                if exc.errno == errno.ENOSPC
                else "check the share and run the same command again (a save resumes)"
            )
            raise StorageError(
                f"{doing} the image {self.url} failed ({exc.strerror or exc}): {hint}"
            ) from exc


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without a password, the password it held): smb://u:pw@h/… -> smb://u@h/…"""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "smb" or parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}@{host}" if parts.username else host
    clean = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return clean, urllib.parse.unquote(parts.password)
