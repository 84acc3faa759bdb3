"""Typed protocol events and their msgpack meta: the session's and the data's frames
here, pairing's in pairing.py, a multicast group's in group.py (fields.py checks them).

``to_meta()`` gives the msgpack map a sender puts on the wire; ``from_frame()``
rebuilds the event from a received frame and checks every field's type and range, so
the state machines and drivers above only ever see well-formed events (a malformed
meta is a RemoteProtocolError).  docs/protocol.md lists the short field names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from ..errors import RemoteProtocolError
from .fields import (
    HASH_SIZE,
    MAX_DISK_SIZE,
    MAX_HASHES,
    SUB_HASH_SIZE,
    Encoding,
    _count,
    _digest,
    _hashes,
    _need,
    _text,
)
from .frames import MAX_CHUNK_SIZE, FrameType, RawFrame
from .group import Evict, Group, Poll, Ref, Report, from_bitmap
from .pairing import Confirm, Hello, Pake
from .plan import Accept, Plan


#: At most this many chunk hashes in one HAVE or SAME frame (32 B each: 32 KiB of meta).
@dataclass(frozen=True, slots=True, kw_only=True)
class Have:
    """Receiver -> sender: what the target holds for chunks index.., as 32-byte hashes.

    HAVE frames cover the chunk indices in order, from 0 to the plan's count, with no
    gaps; an all-zero 32-byte entry means "unknown" (never equal to a real BLAKE3).
    """

    TYPE: ClassVar[FrameType] = FrameType.HAVE
    index: int
    hashes: bytes
    #: delta only: SUB_HASH_SIZE-byte hashes of every sub-block of every chunk, in order
    subs: bytes = b""

    @property
    def count(self) -> int:
        return len(self.hashes) // HASH_SIZE

    def to_meta(self) -> dict[str, Any]:
        return {"i": self.index, "h": self.hashes, "s": self.subs}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Have:
        subs: bytes = _need(meta, "s", bytes, "HAVE")
        if len(subs) % SUB_HASH_SIZE:
            raise RemoteProtocolError("the peer's HAVE frame has a malformed sub-hash list")
        return cls(index=_count(meta, "i", "HAVE"), hashes=_hashes(meta, "HAVE"), subs=subs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Same:
    """Sender -> receiver: these chunks already hold the right bytes; their hashes."""

    TYPE: ClassVar[FrameType] = FrameType.SAME
    index: int
    hashes: bytes

    @property
    def count(self) -> int:
        return len(self.hashes) // HASH_SIZE

    def to_meta(self) -> dict[str, Any]:
        return {"i": self.index, "h": self.hashes}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Same:
        return cls(index=_count(meta, "i", "SAME"), hashes=_hashes(meta, "SAME"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Nak:
    """Receiver -> sender, after END: these chunks read back wrong; send them again."""

    TYPE: ClassVar[FrameType] = FrameType.NAK
    indices: tuple[int, ...]

    def to_meta(self) -> dict[str, Any]:
        return {"i": list(self.indices)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Nak:
        value = _need(meta, "i", list, "NAK")
        if not 0 < len(value) <= MAX_HASHES or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_DISK_SIZE for i in value
        ):
            raise RemoteProtocolError("the peer's NAK has a malformed chunk list")
        return cls(indices=tuple(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Receiver -> sender: this many chunks are durable on the target (and journaled)."""

    TYPE: ClassVar[FrameType] = FrameType.ACK
    durable: int

    def to_meta(self) -> dict[str, Any]:
        return {"n": self.durable}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Ack:
        return cls(durable=_count(meta, "n", "ACK"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """One chunk of the source: where it goes, how it is encoded, its BLAKE3."""

    TYPE: ClassVar[FrameType] = FrameType.CHUNK
    index: int
    length: int  # plain (decoded) length
    digest: bytes  # BLAKE3 of the plain bytes
    encoding: int
    body: bytes | memoryview = field(repr=False)
    #: byte ranges (absolute, whole sectors) of this chunk the source could not read:
    #: zeros in the body; the receiver reports them (exit 7)
    unreadable: tuple[tuple[int, int], ...] = ()

    def to_meta(self) -> dict[str, Any]:
        meta = {"i": self.index, "n": self.length, "h": self.digest, "e": self.encoding}
        if self.unreadable:
            meta["u"] = [list(r) for r in self.unreadable]
        return meta

    @classmethod
    def from_frame(cls, meta: Mapping[str, Any], body: bytes | memoryview) -> Chunk:
        enc = _count(meta, "e", "CHUNK", limit=255)
        if enc not in Encoding.ALL:
            raise RemoteProtocolError(f"the peer's CHUNK uses an unknown encoding {enc}")
        length = _count(meta, "n", "CHUNK", limit=MAX_CHUNK_SIZE)
        if enc == Encoding.RAW and len(body) != length:
            raise RemoteProtocolError("the peer's raw CHUNK body length disagrees with its meta")
        index = _count(meta, "i", "CHUNK")
        return cls(
            index=index,
            length=length,
            digest=_digest(meta, "h", "CHUNK"),
            encoding=enc,
            body=body,
            unreadable=_unreadable(meta, index, length),
        )


def _unreadable(meta: Mapping[str, Any], index: int, length: int) -> tuple[tuple[int, int], ...]:
    """CHUNK ``u``: sorted, disjoint [start, end) ranges inside a chunk of ``length`` at
    ``index`` (checked against the PLAN's chunk size by the connection)."""
    if "u" not in meta:
        return ()
    value = _need(meta, "u", list, "CHUNK")
    if len(value) > MAX_UNREADABLE or not all(
        isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r)
        for r in value
    ):
        raise RemoteProtocolError("the peer's CHUNK has a malformed unreadable list")
    ranges = tuple((a, b) for a, b in value)
    if any(a >= b for a, b in ranges) or any(
        ranges[k][1] >= ranges[k + 1][0] for k in range(len(ranges) - 1)
    ):
        raise RemoteProtocolError("the peer's CHUNK unreadable ranges are not sorted and apart")
    return ranges


#: At most this many unreadable ranges in one CHUNK (a 64 MiB chunk of 512-byte
#: sectors, every other one bad, would need 65536: beyond this the meta gets big).
MAX_UNREADABLE = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class Patch:
    """A chunk that differs from the target only in some sub-blocks (delta re-sync).

    ``changed`` is a bitmap (bit k of byte k // 8, least significant first) of the
    sub-blocks (ACCEPT's ``sub`` bytes each) that differ; the body encodes just those
    sub-blocks, concatenated.  ``digest`` is the BLAKE3 of the whole chunk *after*
    the patch: the receiver checks it before writing anything.
    """

    TYPE: ClassVar[FrameType] = FrameType.PATCH
    index: int
    length: int  # plain length of the whole chunk
    digest: bytes
    encoding: int
    changed: bytes
    body: bytes | memoryview = field(repr=False)

    def changed_blocks(self) -> list[int]:
        return from_bitmap(self.changed)

    def to_meta(self) -> dict[str, Any]:
        return {
            "i": self.index,
            "n": self.length,
            "h": self.digest,
            "e": self.encoding,
            "m": self.changed,
        }

    @classmethod
    def from_frame(cls, meta: Mapping[str, Any], body: bytes | memoryview) -> Patch:
        enc = _count(meta, "e", "PATCH", limit=255)
        if enc not in Encoding.ALL:
            raise RemoteProtocolError(f"the peer's PATCH uses an unknown encoding {enc}")
        changed: bytes = _need(meta, "m", bytes, "PATCH")
        if not changed or len(changed) > MAX_CHUNK_SIZE // 4096 // 8 or not any(changed):
            raise RemoteProtocolError("the peer's PATCH has a malformed sub-block bitmap")
        return cls(
            index=_count(meta, "i", "PATCH"),
            length=_count(meta, "n", "PATCH", limit=MAX_CHUNK_SIZE),
            digest=_digest(meta, "h", "PATCH"),
            encoding=enc,
            changed=changed,
            body=body,
        )


def _run(meta: Mapping[str, Any], what: str) -> tuple[int, int]:
    """``i`` and ``c`` of a run of chunks (LOST, LATER, ZERO), never empty."""
    count = _count(meta, "c", what)
    if count == 0:
        raise RemoteProtocolError(f"the peer sent an empty {what} range")
    return _count(meta, "i", what), count


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost:
    """``count`` chunks from ``index`` that the sender cannot provide (a damaged or
    incomplete image): the receiver leaves them unwritten and the session ends in an
    integrity error naming them, after everything else has been written and checked.
    Each counts as an all-zero 32-byte digest in the root hash."""

    TYPE: ClassVar[FrameType] = FrameType.LOST
    index: int
    count: int

    def to_meta(self) -> dict[str, Any]:
        return {"i": self.index, "c": self.count}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Lost:
        index, count = _run(meta, "LOST")
        return cls(index=index, count=count)


@dataclass(frozen=True, slots=True, kw_only=True)
class Later:
    """``count`` chunks from ``index`` that a failing source could not read on the first
    pass: each comes as a CHUNK after every other chunk is covered (and before END),
    narrowed down to its unreadable sectors.  Only sent to a peer whose HELLO offers
    the "later" feature."""

    TYPE: ClassVar[FrameType] = FrameType.LATER
    index: int
    count: int

    def to_meta(self) -> dict[str, Any]:
        return {"i": self.index, "c": self.count}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Later:
        index, count = _run(meta, "LATER")
        return cls(index=index, count=count)


@dataclass(frozen=True, slots=True, kw_only=True)
class Zero:
    """A run of ``count`` all-zero chunks starting at ``index``: no body at all."""

    TYPE: ClassVar[FrameType] = FrameType.ZERO
    index: int
    count: int

    def to_meta(self) -> dict[str, Any]:
        return {"i": self.index, "c": self.count}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Zero:
        index, count = _run(meta, "ZERO")
        return cls(index=index, count=count)


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    """Sender -> receiver: every chunk has been sent; the root hash over them."""

    TYPE: ClassVar[FrameType] = FrameType.END
    chunk_count: int
    root: bytes

    def to_meta(self) -> dict[str, Any]:
        return {"count": self.chunk_count, "root": self.root}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> End:
        return cls(chunk_count=_count(meta, "count", "END"), root=_digest(meta, "root", "END"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Receiver -> sender: the target is written, synced (and verified) with this root."""

    TYPE: ClassVar[FrameType] = FrameType.RESULT
    root: bytes
    verified: bool

    def to_meta(self) -> dict[str, Any]:
        return {"root": self.root, "verified": self.verified}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Result:
        return cls(
            root=_digest(meta, "root", "RESULT"), verified=_need(meta, "verified", bool, "RESULT")
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Either way: the session is over; ``code``/``exit`` say why (docs/errors.md)."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    code: str
    message: str
    exit: int = 1

    def to_meta(self) -> dict[str, Any]:
        # Stay inside the receiving side's limits, whatever the sentence.
        return {"code": self.code[:64], "msg": self.message[:2000], "exit": self.exit}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Error:
        return cls(
            code=_text(meta, "code", "ERROR", limit=64),
            message=_text(meta, "msg", "ERROR", limit=2048),
            exit=_count(meta, "exit", "ERROR", limit=255),
        )


Event = (
    Hello
    | Pake
    | Confirm
    | Plan
    | Accept
    | Have
    | Same
    | Ack
    | Nak
    | Chunk
    | Patch
    | Zero
    | Lost
    | Later
    | Group
    | Ref
    | Poll
    | Report
    | Evict
    | End
    | Result
    | Error
)

_META_PARSERS: dict[FrameType, Callable[[Mapping[str, Any]], Event]] = {
    FrameType.HELLO: Hello.from_meta,
    FrameType.PAKE: Pake.from_meta,
    FrameType.CONFIRM: Confirm.from_meta,
    FrameType.ACCEPT: Accept.from_meta,
    FrameType.HAVE: Have.from_meta,
    FrameType.SAME: Same.from_meta,
    FrameType.ACK: Ack.from_meta,
    FrameType.NAK: Nak.from_meta,
    FrameType.ZERO: Zero.from_meta,
    FrameType.LOST: Lost.from_meta,
    FrameType.LATER: Later.from_meta,
    FrameType.GROUP: Group.from_meta,
    FrameType.REF: Ref.from_meta,
    FrameType.POLL: Poll.from_meta,
    FrameType.REPORT: Report.from_meta,
    FrameType.EVICT: Evict.from_meta,
    FrameType.END: End.from_meta,
    FrameType.RESULT: Result.from_meta,
    FrameType.ERROR: Error.from_meta,
}


def pack_meta(event: Event) -> bytes:
    out: bytes = msgpack.packb(event.to_meta(), use_bin_type=True)
    return out


def decode_event(frame: RawFrame) -> Event:
    """Turn a checked frame into a typed event.

    Raises:
        RemoteProtocolError: the meta is not a well-formed map for this frame type.
    """
    try:
        # unpackb bounds every container and string by the input's own length.
        meta = msgpack.unpackb(frame.meta, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(
            f"the peer's {frame.type.name} frame carries unreadable meta ({type(exc).__name__})"
        ) from None
    if not isinstance(meta, dict):
        raise RemoteProtocolError(f"the peer's {frame.type.name} frame meta is not a map")
    if frame.type is FrameType.CHUNK:
        return Chunk.from_frame(meta, frame.body)
    if frame.type is FrameType.PATCH:
        return Patch.from_frame(meta, frame.body)
    if frame.type is FrameType.PLAN:
        return Plan.from_frame(meta, frame.body)
    if frame.body:
        raise RemoteProtocolError(f"the peer's {frame.type.name} frame has an unexpected body")
    return _META_PARSERS[frame.type](meta)
