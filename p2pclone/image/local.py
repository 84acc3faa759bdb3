"""file:// images: a Store on the local file system (any mounted share, NFS, CIFS, a
local disk)."""

from __future__ import annotations

import os
import stat
import urllib.parse

from p2pclone.transports import split_url

from ..errors import TransportError, UsageError
from .store import Store


def _refuse_non_file(url: str, path: str) -> None:
    """An image is a regular file: a device or folder named by a file:// URL is a usage
    error, found before anything is opened (opening a FIFO would block, and a save would
    write an image onto a block device).

    Raises:
        UsageError: ``path`` exists and is not a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (a save creates it) or unreadable: open() says which
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise UsageError(
            f"{url} is a folder, not an image file: name the image file in it, "
            f"e.g. file://{path.rstrip('/')}/pc1.p2pc"
        )
    kind = (
        "a block device"
        if stat.S_ISBLK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a special file (a FIFO or socket)"
    )
    raise UsageError(
        f"{url} is {kind}, not an image file: to clone a disk give it as SOURCE or "
        "TARGET, not as a file:// URL"
    )


class LocalStore(Store):
    def __init__(self, url: str, path: str, *, create: bool) -> None:
        self.url = url
        self.path = path
        _refuse_non_file(url, path)
        try:
            if create:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            else:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TransportError(
                f"there is no image at {url}: check the path (and that the share is mounted)"
            ) from None
        except OSError as exc:
            raise TransportError(
                f"cannot open the image {url} ({exc.strerror}): check the path and your "
                "permissions on the share"
            ) from None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        with self._check("reading"):
            parts = []
            while length > 0:
                data = os.pread(self.fd, length, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                length -= len(data)
            return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self._check("writing"):
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n

    def truncate(self, length: int) -> None:
        with self._check("writing"):
            os.ftruncate(self.fd, length)

    def sync(self) -> None:
        with self._check("writing"):
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def local_path(url: str) -> str:
    parts = split_url(url, "write file:///ABSOLUTE/PATH (three slashes)")
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise UsageError(
            f"{url!r} is not a file URL: write file:///ABSOLUTE/PATH, e.g. "
            "file:///mnt/nas/pc1.p2pc (three slashes)"
        )
    return urllib.parse.unquote(parts.path)
