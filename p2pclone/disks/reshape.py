"""A cloned table fitted to a target of another size, after the data is durable.

On a disk of another size a GPT's backup must move to the new end (always); with
``--grow`` or ``--proportional`` the partitions are laid out anew as
volumes/resize.py plans it: blocks of the target move up — only the bytes the source's
map calls used, read once and hashed before, read back and compared after — then the
table is written, synced and read back.  The filesystems of the grown partitions are
grown afterwards, by the receiver (disks/grow.py).  Blocking: run in a worker thread.
"""

from __future__ import annotations

import blake3

from ..errors import TargetError
from ..volumes.extents import Extents
from ..volumes.geometry import GeometryError, relocate_gpt
from ..volumes.resize import Move, Policy, Resize, plan_resize
from ..volumes.table import read_table
from .target import Target

#: a move copies this much at a time
STEP = 4 << 20


def fit_table(target: Target, source_size: int, layout: str, policy: Policy | None) -> Resize:
    """Fit the table cloned from a ``source_size``-byte disk to ``target``: the GPT's
    backup moved (``policy`` None), or the partitions laid out by ``policy``.

    Raises:
        TargetError: the table cannot be fitted or does not read back, or a moved block
            reads back otherwise than it was (the clone itself is complete).
    """
    try:
        if policy is None:
            writes = relocate_gpt(target.read_raw, source_size, target.size, target.sector_size)
            plan = Resize((), tuple(writes), ())
        else:
            plan = plan_resize(
                target.read_raw, source_size, target.size, target.sector_size, policy
            )
    except GeometryError as exc:
        raise TargetError(
            f"the partition table cloned onto {target.path} cannot be fitted to it ({exc}); "
            "the clone itself is complete and verified"
        ) from None
    for move in plan.moves:
        _move(target, move)
    for offset, data in plan.writes:
        target.write_raw(offset, data)
    target.sync()
    table = read_table(target.read_raw, target.size, target.sector_size)
    if not table.trusted or table.notes:
        why = "; ".join(table.notes) or "it does not read back"
        raise TargetError(f"the {layout.upper()} rewritten on {target.path} is not valid ({why})")
    target.free = _free_after(target.free, plan)
    return plan


def _used(target: Target, move: Move) -> list[tuple[int, int]]:
    """The used parts of the block (the source's map), highest first."""
    block = Extents(((move.start, move.start + move.length),))
    used = block.subtract(target.free) if target.free else block
    return sorted(used, reverse=True)


def _move(target: Target, move: Move) -> None:
    """Copy the block's used bytes up to their new place, the highest piece first (a
    block moves by less than its length when the disk grew by less: pieces not yet
    copied are never overwritten), and check them there."""
    delta = move.to - move.start
    pieces = []
    for start, end in _used(target, move):
        pos = end
        while pos > start:
            n = min(STEP, pos - start)
            pieces.append((pos - n, n))
            pos -= n
    digests = [blake3.blake3(target.read_raw(at, n)).digest() for at, n in pieces]
    for at, n in pieces:
        target.write_raw(at + delta, target.read_raw(at, n))
    target.sync()
    target.drop_cache()
    for (at, n), digest in zip(pieces, digests, strict=True):
        if blake3.blake3(target.read_raw(at + delta, n)).digest() != digest:
            raise TargetError(
                f"partition {move.number}, moved to byte {move.to} of {target.path}, reads "
                f"back otherwise than it was at byte {at - move.start} of it: the target "
                "may be failing; the partition table was not changed"
            )


def _free_after(free: Extents, plan: Resize) -> Extents:
    """What no filesystem uses after the moves, for ``--discard``: the free ranges of
    the moved blocks at their new place, the others' as they were; a grown partition's
    new space is its filesystem's business (its tool writes metadata there): none."""
    if not plan.moves and not plan.grown:
        return free
    out = free
    for move in plan.moves:
        block = Extents(((move.start, move.start + move.length),))
        inside = free.clip(move.start, move.start + move.length)
        out = out.subtract(block).union(inside.shift(move.to - move.start))
    for g in plan.grown:
        out = out.subtract(Extents(((g.start, g.start + g.size),)))
    return out


__all__ = ["fit_table"]
