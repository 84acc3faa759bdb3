"""After the data: re-read the target (``--verify``), and fetch again what reads back
wrong (or what a group never delivered) over the session's own connection."""

from __future__ import annotations

from typing import IO

import trio

from ..disks import Target
from ..errors import IntegrityError
from ..journal import Journal
from ..pipeline import chunk_span, hash_target_chunk, write_chunk
from ..protocol import MAX_HASHES, Chunk, Nak, Plan
from ..session import Channel, Progress, Reporter, Verifying


class NullLog:
    """Stands in for the hash log when nothing will be verified."""

    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self) -> NullLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


async def verify_target(
    target: Target,
    plan: Plan,
    log: IO[bytes] | NullLog,
    threads: int,
    report: Reporter,
) -> dict[int, bytes]:
    """Re-read the target from the medium; return the chunks that differ, with the hash
    each should have (the one that went into the root)."""
    assert not isinstance(log, NullLog)
    report(Verifying(plan.source_size))
    await trio.to_thread.run_sync(target.drop_cache)
    log.flush()
    log.seek(0)
    bad: dict[int, bytes] = {}
    limiter = trio.CapacityLimiter(threads)
    batch = 4 * threads
    for first in range(0, plan.chunk_count, batch):
        indices = range(first, min(first + batch, plan.chunk_count))
        expected = log.read(32 * len(indices))
        got: dict[int, bytes] = {}

        async def one(i: int, got: dict[int, bytes] = got) -> None:
            got[i] = await trio.to_thread.run_sync(
                hash_target_chunk, target, plan, i, limiter=limiter
            )

        async with trio.open_nursery() as nursery:
            for i in indices:
                nursery.start_soon(one, i)
        for k, i in enumerate(indices):
            if got[i] != expected[32 * k : 32 * k + 32]:
                bad[i] = expected[32 * k : 32 * k + 32]
        report(
            Progress(
                min(
                    plan.source_size, indices[-1] * plan.chunk_size + plan.chunk_length(indices[-1])
                ),
                plan.source_size,
                0,
            )
        )
    return bad


#: A verify that finds more bad chunks than this does not try to repair: the disk is failing.
MAX_REPAIRS = 4 * MAX_HASHES


def spans(plan: Plan, indices: list[int]) -> str:
    spans = ", ".join(chunk_span(plan, i) for i in indices[:5])
    return spans + (f" and {len(indices) - 5} more chunks" if len(indices) > 5 else "")


async def fetch_again(
    channel: Channel, target: Target, plan: Plan, wanted: dict[int, bytes]
) -> None:
    """NAK the chunks ``wanted`` (index -> the hash they must have) and write the
    sender's answers.

    Raises:
        IntegrityError: an answer is not the chunk wanted (the source changed).
    """
    indices = sorted(wanted)
    for first in range(0, len(indices), MAX_HASHES):
        await channel.send(Nak(indices=tuple(indices[first : first + MAX_HASHES])))
    for _ in indices:
        chunk = await channel.expect(Chunk, "the sender's repairs")
        if chunk.digest != wanted.get(chunk.index):
            raise IntegrityError(
                f"the source changed since it was cloned ({spans(plan, [chunk.index])} differ "
                "from what the clone holds): the repair was refused; run the clone again"
            )
        await trio.to_thread.run_sync(write_chunk, target, chunk, plan)


async def repair(
    channel: Channel, target: Target, plan: Plan, bad: dict[int, bytes], journal: Journal | None
) -> None:
    """Fetch the chunks that read back wrong again, rewrite and re-check them.

    Raises:
        IntegrityError: too many chunks are bad, a repair is not what was cloned (the
            source changed), or some chunks still read back wrong; names the ranges.
    """
    indices = sorted(bad)
    if journal is not None:  # whatever happens next, the journal must not vouch for them
        await trio.to_thread.run_sync(journal.forget, indices)
    if len(indices) > MAX_REPAIRS:
        raise IntegrityError(
            f"verification read back different data at {spans(plan, indices)}: too many "
            f"chunks to fetch again; the target {target.path} is failing; check the disk"
        )
    await fetch_again(channel, target, plan, bad)
    await trio.to_thread.run_sync(target.sync)
    await trio.to_thread.run_sync(target.drop_cache)
    still = [
        i
        for i in indices
        if await trio.to_thread.run_sync(hash_target_chunk, target, plan, i) != bad[i]
    ]
    if still:
        raise IntegrityError(
            f"verification read back different data at {spans(plan, still)}, even after "
            f"fetching it again: the target {target.path} does not keep what is written; "
            "check the disk"
        )


__all__ = ["NullLog", "fetch_again", "repair", "spans", "verify_target"]
