"""The session's set-up messages: PLAN (what is about to be sent; its body is the used
map, freemap.py) and ACCEPT (the receiver accepts it, as ``Accept``).  Checked as
messages.py checks the others; docs/protocol.md §5 lists the fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..errors import RemoteProtocolError
from ..volumes.extents import Extents
from .fields import _clip_info, _count, _info, _need, _text
from .frames import MAX_CHUNK_SIZE, FrameType
from .freemap import decode_free, encode_free


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Sender -> receiver: what is about to be sent."""

    TYPE: ClassVar[FrameType] = FrameType.PLAN
    source_size: int
    chunk_size: int
    source: dict[str, str | int] = field(default_factory=dict)
    hash: str = "blake3"
    #: the sender asks the receiver to hash its target and report it (delta re-sync)
    delta: bool = False
    #: byte ranges no filesystem uses: neither sent nor written, hashed as zeros
    #: (the frame's body carries them, protocol/freemap.py)
    free: Extents = field(default_factory=Extents)

    @property
    def chunk_count(self) -> int:
        return -(-self.source_size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Plain length of chunk ``index`` (the last one may be short)."""
        return min(self.chunk_size, self.source_size - index * self.chunk_size)

    def to_meta(self) -> dict[str, Any]:
        return {
            "size": self.source_size,
            "chunk": self.chunk_size,
            "count": self.chunk_count,
            "hash": self.hash,
            "src": _clip_info(self.source),
            "delta": self.delta,
            "free": len(self.free),
            "freeb": self.free.total,
        }

    @property
    def body(self) -> bytes:
        return encode_free(self.free)

    @classmethod
    def from_frame(cls, meta: Mapping[str, Any], body: bytes | memoryview) -> Plan:
        plan = cls.from_meta(meta)
        free = decode_free(body, plan.source_size, _count(meta, "free", "PLAN"))
        if free.total != _count(meta, "freeb", "PLAN"):
            raise RemoteProtocolError("the peer's PLAN free byte count disagrees with its map")
        return replace(plan, free=free)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Plan:
        size = _count(meta, "size", "PLAN")
        chunk = _count(meta, "chunk", "PLAN", limit=MAX_CHUNK_SIZE)
        if chunk < 4096 or chunk % 4096:
            raise RemoteProtocolError(
                f"the peer's PLAN has a chunk size of {chunk} bytes; "
                "it must be a multiple of 4096 up to 64 MiB"
            )
        algo = _text(meta, "hash", "PLAN", limit=32)
        if algo != "blake3":
            raise RemoteProtocolError(f"the peer's PLAN uses hash {algo!r}; only blake3 is known")
        plan = cls(
            source_size=size,
            chunk_size=chunk,
            source=_info(meta, "src", "PLAN"),
            delta=_need(meta, "delta", bool, "PLAN"),
        )
        if _count(meta, "count", "PLAN") != plan.chunk_count:
            raise RemoteProtocolError("the peer's PLAN chunk count disagrees with its sizes")
        return plan


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Receiver -> sender (ACCEPT frame): the plan is accepted, describing the target."""

    TYPE: ClassVar[FrameType] = FrameType.ACCEPT
    target: dict[str, str | int] = field(default_factory=dict)
    #: HAVE frames follow, covering every chunk index in order (resume or delta)
    have: bool = False
    #: sub-block size of the HAVE frames' sub-hashes (delta), 0 if they carry none
    sub: int = 0
    #: the target is smaller: it keeps nothing from this byte on (0: it keeps it all);
    #: both sides then treat [cut, size) as free (docs/protocol.md, ACCEPT)
    cut: int = 0
    #: with ``cut``: the receiver's operator lets the source's data past ``cut`` go
    #: (``--cut``); without it a sender refuses to cut off bytes that are not zero
    drop: bool = False
    #: with ``have``: the held chunks were written by an earlier run of this clone that
    #: ended with unreadable ranges (those chunks are not held): a rerun reads only
    #: what is not held, as GNU ddrescue with its mapfile (docs/protocol.md, ACCEPT)
    rescue: bool = False

    def to_meta(self) -> dict[str, Any]:
        meta = {"tgt": _clip_info(self.target), "have": self.have, "sub": self.sub, "cut": self.cut}
        if self.drop:  # absent for a peer that never lets data go (and for older ones)
            meta["drop"] = True
        if self.rescue:  # absent unless a rescue resumes (older peers never send it)
            meta["rescue"] = True
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Accept:
        sub = _count(meta, "sub", "ACCEPT", limit=MAX_CHUNK_SIZE)
        if sub and (sub < 4096 or sub % 4096):
            raise RemoteProtocolError(f"the peer's ACCEPT has a sub-block size of {sub} bytes")
        drop = _need(meta, "drop", bool, "ACCEPT") if "drop" in meta else False
        rescue = _need(meta, "rescue", bool, "ACCEPT") if "rescue" in meta else False
        return cls(
            target=_info(meta, "tgt", "ACCEPT"),
            have=_need(meta, "have", bool, "ACCEPT"),
            sub=sub,
            cut=_count(meta, "cut", "ACCEPT"),
            drop=drop,
            rescue=rescue,
        )
