"""Sizes as people read them (binary units), for every message that shows one, and
byte ranges as they are reported (unreadable source ranges, the partitions they hit)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


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


def partitions_hit(info: Mapping[str, object], ranges: list[list[int]]) -> list[str]:
    """The partitions ``[offset, length]`` ranges fall in, as "partition 2 (ext4)", from
    the layout the sender's scan put in the plan's source map (``start<n>``,
    ``end<n>``, ``fs<n>``), and "outside the partitions" last for the rest; nothing when the
    source was not scanned (``--exact``) or has no partition table."""
    parts = sorted(
        (start, end, int(k[5:]), str(info.get(f"fs{k[5:]}", "")))
        for k, start in info.items()
        if k.startswith("start") and k[5:].isdigit() and isinstance(start, int)
        if isinstance(end := info.get(f"end{k[5:]}"), int)
    )
    if not parts:  # --exact, or a disk with no partition table
        return []
    hit: list[str] = []
    outside = False
    for offset, length in ranges:
        end = offset + length
        inside = [p for p in parts if p[0] < end and offset < p[1]]
        names = [f"partition {n} ({fs})" if fs else f"partition {n}" for _s, _e, n, fs in inside]
        outside |= sum(min(e, end) - max(s, offset) for s, e, _n, _f in inside) < length
        hit += [name for name in names if name not in hit]
    return hit + ["outside the partitions"] * outside
