"""The receiver's resume journal: which chunks are durably on the target, with hashes.

It lives off the target, in a state directory (``--state-dir``, else
``$P2PCLONE_STATE_DIR``, else ``/var/lib/p2pclone`` for root and
``$XDG_STATE_HOME/p2pclone`` — ``~/.local/state/p2pclone`` — for others), one file per
target, named after a hash of the target's identity.

File layout: a record stream, each record ``u32 length | u32 crc32 | msgpack``.  The
first record is the header (format version, chunk size, source size, target
identity, and the medium: which file it was); each later one is a commit,
``{"i": [indices], "h": hashes}`` (at most RECORD_ENTRIES chunks), or a retraction of
chunks found wrong, ``{"f": [indices]}``.  A record whose length runs past the end or
whose CRC fails ends the journal: a torn tail (a crash mid-append) is dropped, never
trusted.

The order that makes it safe, kept by the receiver: write data -> fsync target ->
append the commit -> fsync journal -> ACK to the sender.  So every chunk the journal
names was on stable storage before the journal said so.

What it does not prove is that the target still holds it: between two runs anyone may
delete and recreate a target file, or wipe a disk's partition table.  Two defences:

1. The header names the medium (a file's device and inode number).  A journal for the
   same path whose medium differs is discarded (``Journal.replaced``): the file was
   replaced, the clone starts over.
2. The receiver re-hashes on the target every chunk the journal claims before it
   offers it to the sender (``receiver._DataState._held``); a claim the target does
   not back is retracted and the chunk is sent again.  This also covers what (1)
   cannot see: an inode number reused by a new file, a device rewritten in place, a
   crash that reordered what the disk kept (the rsync ``--append`` lesson).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

from .errors import TargetError

FORMAT = 2  # 2: the header names the medium
_REC = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024


def default_state_dir() -> Path:
    env = os.environ.get("P2PCLONE_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/p2pclone")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "p2pclone"


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if needed and check that journals can be
    written there: the receiver does this before it listens, not after pairing.

    Raises:
        TargetError: it can't be created or written.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetError(
            f"cannot create the state directory {state_dir} ({exc.strerror}): "
            "choose another with --state-dir"
        ) from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise TargetError(
            f"cannot write resume journals in the state directory {state_dir}: "
            "choose another with --state-dir"
        )


def journal_path(state_dir: Path, target_identity: str) -> Path:
    name = hashlib.sha256(target_identity.encode()).hexdigest()[:24]
    return state_dir / f"{name}.journal"


class HashTable:
    """chunk index -> 32-byte hash, in two flat arrays: 33 bytes a chunk, not ~150.

    (A dict of bytes costs ~150 bytes an entry: 150 MiB per TiB of disk at 1 MiB
    chunks.  This costs 33 MiB, allocated once from the plan's chunk count.)
    """

    def __init__(self, count: int) -> None:
        self._hashes = bytearray(32 * count)
        self._present = bytearray(count)
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, index: object) -> bool:
        return (
            isinstance(index, int)
            and 0 <= index < len(self._present)
            and bool(self._present[index])
        )

    def get(self, index: int, default: bytes | None = None) -> bytes | None:
        if index in self:
            return bytes(self._hashes[32 * index : 32 * index + 32])
        return default

    def __getitem__(self, index: int) -> bytes:
        value = self.get(index)
        if value is None:
            raise KeyError(index)
        return value

    def __setitem__(self, index: int, digest: bytes) -> None:
        if not 0 <= index < len(self._present):
            return  # beyond this plan: nothing to remember
        self._len += not self._present[index]
        self._present[index] = 1
        self._hashes[32 * index : 32 * index + 32] = digest

    def pop(self, index: int, default: bytes | None = None) -> bytes | None:
        value = self.get(index, default)
        if index in self:
            self._present[index] = 0
            self._len -= 1
        return value


#: Entries per commit record, so a record stays far below MAX_RECORD (2 MiB of hashes).
RECORD_ENTRIES = 65536


@dataclass(frozen=True)
class Header:
    chunk_size: int
    source_size: int
    target: str
    #: which medium the target is (a file's device and inode), "" where that can't tell
    medium: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "v": FORMAT,
            "chunk": self.chunk_size,
            "size": self.source_size,
            "target": self.target,
            "medium": self.medium,
        }


def _pack(obj: object) -> bytes:
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> list[dict[str, object]]:
    """Every intact record, stopping at the first torn or corrupt one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[dict[str, object]] = []
    pos = 0
    while pos + _REC.size <= len(data):
        length, crc = _REC.unpack_from(data, pos)
        start, end = pos + _REC.size, pos + _REC.size + length
        if length > MAX_RECORD or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            rec = msgpack.unpackb(data[start:end], raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            break
        if not isinstance(rec, dict):
            break
        out.append(rec)
        pos = end
    return out


class Journal:
    """An open journal for one target and one plan."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        count = -(-header.source_size // header.chunk_size)
        #: chunk index -> hash of what is durably on the target
        self.have = HashTable(count)
        #: chunks written with unreadable source sectors (zeros there): not held; a
        #: rerun reads only these and what is not held (ACCEPT ``rescue``)
        self.bad: set[int] = set()
        #: a journal of this target's path and plan was found, but for another medium
        #: (the file was deleted and created again since): it was discarded
        self.replaced = False
        self._fd = -1

    @classmethod
    def open(cls, state_dir: Path, header: Header, *, fresh: bool = False) -> Journal:
        """Load the journal for ``header.target`` if it matches this plan, else start one.

        Raises:
            TargetError: the state directory can't be created or written.
        """
        check_state_dir(state_dir)
        path = journal_path(state_dir, header.target)
        journal = cls(path, header)
        records = [] if fresh else read_records(path)
        kept = 0
        if records and records[0] == {**header.to_dict(), "medium": records[0].get("medium")}:
            journal.replaced = records[0].get("medium") != header.medium
        if records and records[0] == header.to_dict():
            kept = 1
            for rec in records[1:]:
                if not journal._apply(rec):
                    break  # a malformed record ends the journal, like a torn one
                kept += 1
        journal._start(keep=bool(journal.have), records=records[:kept])
        return journal

    def _apply(self, rec: dict[str, object]) -> bool:
        """Apply one record: a commit ``{i, h}``, a retraction ``{f}``, or chunks
        written with unreadable sectors ``{b}``."""
        bad = rec.get("b")
        if isinstance(bad, list):
            if not all(isinstance(i, int) for i in bad):
                return False
            for i in bad:
                self.have.pop(i)
                self.bad.add(i)
            return True
        forgotten = rec.get("f")
        if isinstance(forgotten, list):
            if not all(isinstance(i, int) for i in forgotten):
                return False
            for i in forgotten:
                self.have.pop(i)
            return True
        indices, hashes = rec.get("i"), rec.get("h")
        if not isinstance(indices, list) or not isinstance(hashes, bytes):
            return False
        if len(hashes) != 32 * len(indices) or not all(isinstance(i, int) for i in indices):
            return False
        for k, i in enumerate(indices):
            self.have[i] = hashes[32 * k : 32 * k + 32]
            self.bad.discard(i)
        return True

    def _start(self, *, keep: bool, records: list[dict[str, object]]) -> None:
        try:
            if keep:
                # Rewrite the intact prefix: drops a torn tail before we append to it.
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, b"".join(_pack(r) for r in records))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            else:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(self._fd, _pack(self.header.to_dict()))
                os.fsync(self._fd)
            self._sync_dir()
        except OSError as exc:
            raise TargetError(
                f"cannot write the resume journal {self.path} ({exc.strerror}): "
                "choose another state directory with --state-dir"
            ) from None

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def forget(self, indices: list[int]) -> None:
        """Distrust these chunks (their re-check on the target failed), durably."""
        if not indices:
            return
        for i in indices:
            self.have.pop(i)
        self._append(
            [{"f": indices[k : k + RECORD_ENTRIES]} for k in range(0, len(indices), RECORD_ENTRIES)]
        )

    def _append(self, records: list[dict[str, object]]) -> None:
        try:
            os.write(self._fd, b"".join(_pack(r) for r in records))
            os.fsync(self._fd)
        except OSError as exc:
            raise TargetError(
                f"cannot write the resume journal {self.path} ({exc.strerror})"
            ) from None

    def commit(self, entries: list[tuple[int, bytes | None]]) -> None:
        """Append chunks that are already fsynced on the target (hash ``None``: written
        with unreadable sectors, so not held); fsync the journal."""
        if not entries:
            return
        good = [(i, h) for i, h in entries if h is not None]
        bad = [i for i, h in entries if h is None]
        records: list[dict[str, object]] = []
        for k in range(0, len(good), RECORD_ENTRIES):
            part = good[k : k + RECORD_ENTRIES]
            records.append({"i": [i for i, _ in part], "h": b"".join(h for _, h in part)})
        records += [{"b": bad[k : k + RECORD_ENTRIES]} for k in range(0, len(bad), RECORD_ENTRIES)]
        self._append(records)
        for i, h in good:
            self.have[i] = h
            self.bad.discard(i)
        for i in bad:
            self.have.pop(i)
            self.bad.add(i)

    def finish(self) -> None:
        """The clone is complete: the journal has nothing left to say."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
