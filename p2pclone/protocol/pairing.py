"""The pairing frames (docs/protocol.md): HELLO, PAKE and CONFIRM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import RemoteProtocolError
from .fields import _digest, _need, _text
from .frames import FrameType


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First frame each way: who is speaking and what it can do."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    role: str  # "sender" | "receiver"
    software: str
    features: tuple[str, ...] = ()

    def to_meta(self) -> dict[str, Any]:
        return {"role": self.role, "sw": self.software, "feat": list(self.features)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Hello:
        role = _text(meta, "role", "HELLO", limit=16)
        if role not in ("sender", "receiver"):
            raise RemoteProtocolError(f"the peer's HELLO names an unknown role {role!r}")
        feats = _need(meta, "feat", list, "HELLO")
        if len(feats) > 64 or not all(isinstance(f, str) and len(f) < 64 for f in feats):
            raise RemoteProtocolError("the peer's HELLO has a malformed feature list")
        return cls(role=role, software=_text(meta, "sw", "HELLO", limit=128), features=tuple(feats))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pake:
    """Each way, after HELLO: one SPAKE2 message (sender = side A, receiver = side B)."""

    TYPE: ClassVar[FrameType] = FrameType.PAKE
    message: bytes

    def to_meta(self) -> dict[str, Any]:
        return {"msg": self.message}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Pake:
        msg: bytes = _need(meta, "msg", bytes, "PAKE")
        if not 1 <= len(msg) <= 256:
            raise RemoteProtocolError("the peer's PAKE message has an impossible length")
        return cls(message=msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirm:
    """Each way, after PAKE: HMAC proving the sender of it derived the same keys."""

    TYPE: ClassVar[FrameType] = FrameType.CONFIRM
    mac: bytes

    def to_meta(self) -> dict[str, Any]:
        return {"mac": self.mac}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Confirm:
        return cls(mac=_digest(meta, "mac", "CONFIRM"))
