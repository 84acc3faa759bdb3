"""The multicast frames (docs/protocol.md): GROUP, REF, POLL, REPORT, EVICT, carried on
each member's own control connection, and the bitmaps of PATCH and REPORT."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import RemoteProtocolError
from .fields import HASH_SIZE, _count, _hashes, _need, _text
from .frames import FrameType


def bitmap(indices: Iterable[int], nbits: int) -> bytes:
    """``indices`` as a bitmap of ``nbits`` bits: bit k is bit k % 8 of byte k // 8
    (least significant first), the form of PATCH's ``m`` and REPORT's ``m``."""
    out = bytearray(-(-nbits // 8))
    for k in indices:
        out[k // 8] |= 1 << (k % 8)
    return bytes(out)


def from_bitmap(bits: bytes, nbits: int | None = None) -> list[int]:
    """The numbers of the bits set in ``bits`` (the inverse of :func:`bitmap`), in
    order, among its first ``nbits`` (default: all of them; bits past the end of
    ``bits`` count as clear)."""
    n = 8 * len(bits) if nbits is None else min(nbits, 8 * len(bits))
    return [k for k in range(n) if bits[k // 8] >> (k % 8) & 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """Sender -> receiver, multicast: the data plane's key and session number."""

    TYPE: ClassVar[FrameType] = FrameType.GROUP
    key: bytes
    session: int

    def to_meta(self) -> dict[str, Any]:
        return {"k": self.key, "s": self.session}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Group:
        key: bytes = _need(meta, "k", bytes, "GROUP")
        if len(key) != 32:
            raise RemoteProtocolError("the peer's GROUP frame has a malformed key")
        return cls(key=key, session=_count(meta, "s", "GROUP", limit=2**64 - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ref:
    """Sender -> receiver, multicast: chunks ``index``.. come in multicast slice
    ``slice`` (``fragments`` datagrams, ``length`` bytes), with these hashes; counts
    like SAME."""

    TYPE: ClassVar[FrameType] = FrameType.REF
    index: int
    hashes: bytes
    slice: int
    fragments: int
    length: int

    @property
    def count(self) -> int:
        return len(self.hashes) // HASH_SIZE

    def to_meta(self) -> dict[str, Any]:
        return {
            "i": self.index,
            "h": self.hashes,
            "sl": self.slice,
            "n": self.fragments,
            "l": self.length,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Ref:
        return cls(
            index=_count(meta, "i", "REF"),
            hashes=_hashes(meta, "REF"),
            slice=_count(meta, "sl", "REF", limit=2**32 - 1),
            fragments=_count(meta, "n", "REF", limit=0xFFFF),
            length=_count(meta, "l", "REF", limit=2**32 - 1),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Poll:
    """Sender -> receiver, multicast: which fragments of ``slice`` are you missing?"""

    TYPE: ClassVar[FrameType] = FrameType.POLL
    slice: int

    def to_meta(self) -> dict[str, Any]:
        return {"sl": self.slice}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Poll:
        return cls(slice=_count(meta, "sl", "POLL", limit=2**32 - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """Receiver -> sender, multicast: the fragments of ``slice`` it misses (a bitmap;
    empty: it holds the whole slice)."""

    TYPE: ClassVar[FrameType] = FrameType.REPORT
    slice: int
    missing: bytes

    def to_meta(self) -> dict[str, Any]:
        return {"sl": self.slice, "m": self.missing}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Report:
        missing: bytes = _need(meta, "m", bytes, "REPORT")
        if len(missing) > 8192:
            raise RemoteProtocolError("the peer's REPORT frame has an overlong bitmap")
        return cls(slice=_count(meta, "sl", "REPORT", limit=2**32 - 1), missing=missing)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evict:
    """Sender -> receiver, multicast: leave the group (``reason``) and finish by unicast:
    connect again, and resume from the journal like any interrupted clone."""

    TYPE: ClassVar[FrameType] = FrameType.EVICT
    reason: str

    def to_meta(self) -> dict[str, Any]:
        return {"why": self.reason}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Evict:
        return cls(reason=_text(meta, "why", "EVICT", limit=1024))
