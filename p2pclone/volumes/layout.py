"""The source's layout in the plan's source map (docs/protocol.md, "info map"): written
by the sender's scan, read by whoever must name a partition.

Keys: ``layout`` (gpt, mbr, none), and per volume ``part<n>`` (one line for people),
``start<n>`` and ``end<n>`` (bytes; ``end<n>`` lets a smaller target accept the clone
when every partition fits), ``type<n>`` (its GPT type GUID or MBR type byte: a
receiver checks ``--grow`` against it before anything is written) and ``fs<n>`` (what
the sender's scan found: shown, never trusted to pick a tool on the receiver).  ``n``
is the partition's number, 0 for a volume on the whole disk.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import DiskMap


def layout_info(disk: DiskMap) -> dict[str, str | int]:
    """The layout keys for a scanned disk."""
    info: dict[str, str | int] = {"layout": disk.table.scheme}
    for v in disk.volumes:
        n = v.partition.number if v.partition else 0
        info[f"part{n}"] = v.describe()
        if v.partition:
            info[f"start{n}"] = v.partition.start
            info[f"end{n}"] = v.partition.end
            info[f"type{n}"] = v.partition.type
            info[f"fs{n}"] = v.fs
    return info


def left_out(info: Mapping[str, object]) -> str:
    """A phrase for the partitions the sender left out (``--partitions``, ``--skip``),
    "" when it sends them all: "partitions 2 and 4 are not copied (left as they are on
    the target)"."""
    skipped = str(info.get("skipped", ""))
    numbers = [n for n in skipped.split(",") if n.isdigit()]
    if not numbers:
        return ""
    named = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    many = len(numbers) > 1
    kept = "left as they are" if many else "left as it is"
    how = "zeroed" if info.get("skipped_as") == "zeros" else kept
    return (
        f"partition{'s' if many else ''} {named} {'are' if many else 'is'} not copied "
        f"({how} on the target)"
    )


def partitions(info: Mapping[str, object]) -> list[tuple[int, int, int, str]]:
    """(start, end, number, filesystem) of each partition in the source map, in disk
    order; none when the source was not scanned (``--exact``) or has no table."""
    return sorted(
        (start, end, int(k[5:]), str(info.get(f"fs{k[5:]}", "")))
        for k, start in info.items()
        if k.startswith("start") and k[5:].isdigit() and isinstance(start, int)
        if isinstance(end := info.get(f"end{k[5:]}"), int)
    )


def partitions_hit(info: Mapping[str, object], ranges: list[list[int]]) -> list[str]:
    """The partitions ``[offset, length]`` ranges fall in, as "partition 2 (ext4)", and
    "outside the partitions" last for the rest; nothing when the source was not scanned
    (``--exact``) or has no partition table."""
    parts = partitions(info)
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


__all__ = ["layout_info", "left_out", "partitions", "partitions_hit"]
