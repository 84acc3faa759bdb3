"""The wire's field checks: each event's ``from_meta`` reads its msgpack map through
these, so a missing key, a wrong type or an out-of-range value is one
:class:`~p2pclone.errors.RemoteProtocolError` sentence, never a ``KeyError``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import RemoteProtocolError

HASH_SIZE = 32  # BLAKE3-256
SUB_HASH_SIZE = 8  # xxh3-64 of a sub-block: the whole chunk's BLAKE3 is checked after
MAX_DISK_SIZE = 1 << 60  # 1 EiB: an upper bound that rejects nonsense, not a real limit


class Encoding:
    """How a CHUNK body encodes its plain bytes."""

    RAW = 0
    ZSTD = 1
    ALL = (RAW, ZSTD)


def _need(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    try:
        value = meta[key]
    except KeyError:
        raise RemoteProtocolError(f"the peer's {what} frame lacks the field {key!r}") from None
    # bool is an int subclass; no field here is a bool unless it says so.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise RemoteProtocolError(f"the peer's {what} frame has a malformed {key!r} field")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _count(meta: Mapping[str, Any], key: str, what: str, *, limit: int = MAX_DISK_SIZE) -> int:
    value: int = _need(meta, key, int, what)
    if not 0 <= value <= limit:
        raise RemoteProtocolError(f"the peer's {what} frame has {key!r}={value}, out of range")
    return value


def _text(meta: Mapping[str, Any], key: str, what: str, *, limit: int = 4096) -> str:
    value: str = _need(meta, key, str, what)
    if len(value) > limit:
        raise RemoteProtocolError(f"the peer's {what} frame has an overlong {key!r} field")
    return value


def _digest(meta: Mapping[str, Any], key: str, what: str) -> bytes:
    value: bytes = _need(meta, key, bytes, what)
    if len(value) != HASH_SIZE:
        raise RemoteProtocolError(f"the peer's {what} frame has a {len(value)}-byte hash")
    return value


def _info(meta: Mapping[str, Any], key: str, what: str) -> dict[str, str | int]:
    """A small map of descriptive fields (device name, model, serial...)."""
    value = _need(meta, key, dict, what)
    out: dict[str, str | int] = {}
    for k, v in value.items():
        ok_value = (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, str) and len(v) <= 1024
        )
        if not isinstance(k, str) or len(k) > 64 or not ok_value:
            raise RemoteProtocolError(f"the peer's {what} frame has a malformed {key!r} map")
        out[k] = v
    return out


def _clip_info(info: Mapping[str, str | int]) -> dict[str, str | int]:
    """Descriptive maps are for people: cut values to what ``_info`` accepts."""
    return {k[:64]: (v[:1024] if isinstance(v, str) else v) for k, v in info.items()}


MAX_HASHES = 1024


def _hashes(meta: Mapping[str, Any], what: str) -> bytes:
    value: bytes = _need(meta, "h", bytes, what)
    if not value or len(value) % HASH_SIZE or len(value) > MAX_HASHES * HASH_SIZE:
        raise RemoteProtocolError(f"the peer's {what} frame has a malformed hash list")
    return value
