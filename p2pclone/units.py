"""Sizes as people read them (binary units), for every message that shows one, and
byte ranges as they are reported (unreadable source ranges)."""

from __future__ import annotations

from collections.abc import Iterable


def human_bytes(n: float, *, small: str = "B") -> str:
    """``1536`` -> ``"1.5 KiB"``; below 1 KiB the count is shown whole, ``"512 B"``
    (``small="bytes"``: ``"512 bytes"``, for a sentence)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {small}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def merged(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """``(start, end)`` byte ranges as sorted, merged ``[offset, length]`` pairs (the
    form ``--json`` reports unreadable source ranges in)."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], end - out[-1][0])
        else:
            out.append([start, end - start])
    return out
