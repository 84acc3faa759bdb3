"""The receiving driver: transport -> frames -> checked chunks -> target.

Order of a session, and why:

1. The target is checked (and a block device opened exclusively) *before* listening,
   so a wrong path fails at once, not after the sender has connected.
2. HELLO both ways, then the sender's PLAN.  The target refuses a plan it can't hold
   (ERROR, exit 4) before a single byte is written; ``approve`` (the CLI's question
   to the operator) runs here too.  Only then does the target get created or sized
   and the receiver answer ACCEPT (accept).
3. Data: each CHUNK is decompressed (bounded by its declared length), hashed and
   written by a worker thread; ZERO runs are zeroed (holes in a file, BLKZEROOUT on
   a device).  A semaphore bounds the chunks in flight, so memory does not grow with
   the disk.  The connection checks that chunks cover the plan once, in order.
4. END: wait for every write, fsync, compare root hashes; with ``verify``, drop the
   cache and re-read the whole target against the chunk hashes.  Only then RESULT.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import tempfile
from collections.abc import Callable

import trio

from ..disks import Target
from ..disks.grow import grow_filesystem
from ..disks.identity import renew_ids
from ..disks.reshape import fit_table
from ..errors import IntegrityError, P2PCloneError, SafetyError, TargetError, UsageError
from ..journal import Header, Journal, default_state_dir
from ..options import Approve, ReceiveOptions
from ..pipeline import SUB_BLOCK, default_threads
from ..protocol import Accept, Connection, End, Plan, Result, Role
from ..session import (
    Channel,
    Done,
    Notice,
    Planned,
    Reporter,
    no_report,
    pair,
    pick_error,
)
from ..units import human_bytes, merged
from ..volumes.extents import Extents
from ..volumes.layout import partitions_hit
from ..volumes.resize import Policy, ResizeError, check_policy
from .data import DataState
from .feed import Feed
from .verify import NullLog, repair, spans, verify_target


def _nothing() -> None:
    pass


def approve_all(plan: Plan, target: Target) -> None:
    """Ask nothing (scripts and tests; the CLI asks the operator)."""


async def receive_stream(
    stream: trio.abc.Stream,
    target: Target,
    options: ReceiveOptions,
    *,
    code: str,
    url: str = "stream",
    report: Reporter = no_report,
    approve: Approve = approve_all,
    paired: Callable[[], None] = _nothing,
    seal: bool = True,
    feed: Feed | None = None,
) -> Done:
    """Run a receiving session over an already open ``stream`` (closed on return),
    paired with ``code``.  ``approve(plan, target)`` may raise to refuse the plan before
    anything is written (not called with ``options.yes``).  ``paired()`` is called once
    the sender has proven the code, before anything else: it may raise to stop (a
    receiver waiting for two kinds of sender takes the first that pairs).

    ``feed``: a second way chunks arrive (a multicast group's data plane); it may end
    the session with :class:`~p2pclone.receiver.feed.Reconnect`.
    """
    channel = Channel(Connection(Role.RECEIVER, code=code, seal=seal), stream, url)
    try:
        return await _session(channel, target, options, report, approve, paired, feed)
    except BaseException as exc:
        await channel.fail(pick_error(exc))
        raise


async def _session(
    channel: Channel,
    target: Target,
    opts: ReceiveOptions,
    report: Reporter,
    approve: Approve,
    paired: Callable[[], None],
    feed: Feed | None,
) -> Done:
    started = trio.current_time()
    await pair(channel)
    paired()
    plan = await channel.expect(Plan, "the sender's PLAN")
    cut, journal = await _prepare(target, plan, opts, report, approve, group=feed is not None)
    delta = opts.delta or plan.delta
    try:
        await channel.send(
            Accept(
                target={**target.describe(), "host": socket.gethostname().split(".")[0]},
                have=delta or bool(journal and journal.have),
                sub=SUB_BLOCK if delta else 0,
                cut=cut,
                drop=bool(cut) and opts.cut,
                rescue=not delta and bool(journal and journal.have and journal.bad),
            )
        )
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    report(Planned.of(plan, target.describe(), target.free or plan.free))
    state, end, repaired = await _data_phase(channel, target, plan, journal, opts, report, feed)
    if state.lost:
        # Everything else is written, durable and journaled: a run from a repaired
        # source resumes after it.  This is still not a clone.
        raise IntegrityError(
            f"the sender could not provide {len(state.lost)} chunks ({spans(plan, state.lost)}): "
            "its image is damaged or incomplete there; those ranges of the target were not "
            "written, everything else was written and checked"
        )
    renamed = await _finish_target(target, plan, opts, report)
    # Our own root (equal to END's, checked above): the sender checks it against its own.
    await channel.send(Result(root=channel.conn.root_digest(), verified=opts.verify))
    done = Done(
        source_bytes=plan.source_size,
        # the connection, both ways, and what came through the feed (a group's datagrams)
        wire_bytes=channel.conn.bytes_in + channel.conn.bytes_out + (feed.bytes_in if feed else 0),
        chunks=plan.chunk_count,
        zero_chunks=state.zero_total,
        same_chunks=state.same_total,
        digest=end.root.hex(),
        seconds=trio.current_time() - started,
        verified=opts.verify,
        repaired_chunks=repaired,
        free_bytes=plan.free.total,
        unreadable=merged(state.unreadable),
        unreadable_in=partitions_hit(plan.source, merged(state.unreadable)),
        cut_at=cut,
        new_ids=renamed,
    )
    await channel.close()
    return done


async def _finish_target(
    target: Target, plan: Plan, opts: ReceiveOptions, report: Reporter
) -> dict[str, str]:
    """After the data: the table fitted to a target of another size (and the space
    shared as asked), TRIM, new IDs (old -> new), the kernel told of the table."""
    policy = _policy(opts)
    gpt = plan.source.get("layout") == "gpt"
    if target.size != plan.source_size and (policy or (target.is_block and gpt)):
        await _fit_table(target, plan, policy, report)
    if opts.discard and target.free:
        await _discard(target, report)
    renamed = await _new_ids(target, report) if opts.new_ids else {}
    why = await trio.to_thread.run_sync(target.reread_partitions)
    if why is not None:
        report(
            Notice(
                f"the kernel did not re-read the partition table of {target.path} ({why}): "
                f"its new partitions appear after `partprobe {target.path}` or a reboot"
            )
        )
    return renamed


def _policy(opts: ReceiveOptions) -> Policy | None:
    """How a larger target's space is shared (``--grow [N]``, ``--proportional``)."""
    if opts.proportional:
        return Policy(proportional=True)
    return None if opts.grow is None else Policy(number=opts.grow)


def _check_growth(target: Target, plan: Plan, policy: Policy) -> None:
    """``--grow``/``--proportional`` that cannot be done: refused before anything is
    written, with what to do.

    Raises:
        UsageError: the target is not larger, or the layout does not allow it.
    """
    option = "--proportional" if policy.proportional else "--grow"
    if target.size <= plan.source_size:
        fix = (
            f"; make it the size the disk should have first (truncate -s 20G {target.path})"
            if not target.is_block
            else ""
        )
        raise UsageError(
            f"{option}: the target {target.path} ({human_bytes(target.size)}) is not larger "
            f"than the source ({human_bytes(plan.source_size)}): there is no space to grow "
            f"into{fix}; leave {option} out otherwise; nothing was written"
        )
    try:
        check_policy(plan.source, policy)
    except ResizeError as exc:
        raise UsageError(f"{option}: {exc}; nothing was written") from None


async def _fit_table(target: Target, plan: Plan, policy: Policy | None, report: Reporter) -> None:
    """A disk cloned onto a target of another size: its GPT's backup moved to the new
    end, or (``policy``) its partitions laid out on the larger disk and the grown ones'
    filesystems grown (disks/reshape.py, disks/grow.py)."""
    layout = str(plan.source.get("layout", ""))
    resize = await trio.to_thread.run_sync(fit_table, target, plan.source_size, layout, policy)
    larger = target.size > plan.source_size
    report(
        Notice(
            f"the target is {human_bytes(abs(target.size - plan.source_size))} "
            f"{'larger' if larger else 'smaller'} than the source: "
            + (
                "the GPT's backup was moved to its end and both headers rewritten"
                if layout == "gpt"
                else "the MBR was rewritten"
            )
        )
    )
    for move in resize.moves:
        report(
            Notice(
                f"partition {move.number} moved {human_bytes(move.to - move.start)} up, to "
                f"byte {move.to} (its used bytes copied and read back)"
            )
        )
    for grown in resize.grown:
        # Which tool runs is decided by what is on the written partition, never by what
        # the sender says is there (a sender that lies must not pick our tool).
        fs = await trio.to_thread.run_sync(target.filesystem_at, grown.start, grown.size)
        said = await trio.to_thread.run_sync(
            grow_filesystem, target.path, grown.number, grown.start, grown.size, fs
        )
        report(Notice(said))


async def _new_ids(target: Target, report: Reporter) -> dict[str, str]:
    """``--new-ids``: the clone's table and filesystems given new IDs and the references
    to the old ones rewritten (disks/identity.py); every change, rewrite and leftover
    said, one notice each."""
    renewed = await trio.to_thread.run_sync(renew_ids, target)
    if renewed.changed:
        report(Notice("new IDs: " + "; ".join(renewed.changed)))
    if renewed.rewritten:
        report(Notice("rewritten to name the new IDs: " + ", ".join(renewed.rewritten)))
    for sentence in renewed.left:
        report(Notice(sentence))
    if not renewed.renamed:
        report(Notice(f"--new-ids: nothing on {target.path} has an ID that could be changed"))
    return renewed.renamed


async def _discard(target: Target, report: Reporter) -> None:
    done = await trio.to_thread.run_sync(target.discard_free)
    report(
        Notice(
            f"discarded the {human_bytes(done)} no filesystem uses on {target.path}"
            if done is not None
            else f"{target.path} cannot discard (no TRIM/UNMAP, or a filesystem without "
            "hole punching): its free space was left as it was"
        )
    )


async def _prepare(
    target: Target,
    plan: Plan,
    opts: ReceiveOptions,
    report: Reporter,
    approve: Approve,
    *,
    group: bool,
) -> tuple[int, Journal | None]:
    """Check the plan against the target (and the operator: ``approve``) before a byte is
    written, then size the target and open the journal; return where a smaller target
    cuts the source off (0: nowhere) and the journal."""
    cut = target.check_plan(plan.source_size, plan.source)
    if cut and group:
        raise SafetyError(
            f"the target {target.path} is smaller than the source: a multicast group sends "
            "every member the same bytes, so this one needs a unicast clone (tcp://) or a "
            "target at least as large; nothing was written"
        )
    policy = _policy(opts)
    if policy is not None:
        _check_growth(target, plan, policy)
    if not opts.yes:
        approve(plan, target)
    await trio.to_thread.run_sync(
        functools.partial(target.prepare, plan.source_size, keep_larger=policy is not None)
    )
    # What no filesystem uses is neither written nor read back: everything below
    # (writes, zeroing, HAVE hashes, --verify) sees it as zeros.  Past a smaller
    # target's end nothing is kept: the sender treats it as free too.
    target.free = plan.free.union(Extents(((cut, plan.source_size),))) if cut else plan.free
    short = target.space_shortfall(plan.source_size - plan.free.total)
    if short:
        report(
            Notice(
                f"the filesystem holding {target.path} has {human_bytes(short)} less free "
                f"space than the source's {human_bytes(plan.source_size)}: the clone fits "
                "only if enough of the source is zero (kept as holes); else it stops and "
                "resumes once space is freed"
            )
        )
    if not opts.journal:
        return cut, None
    header = Header(plan.chunk_size, plan.source_size, target.identity(), target.medium())
    journal = await trio.to_thread.run_sync(
        functools.partial(
            Journal.open, opts.state_dir or default_state_dir(), header, fresh=opts.fresh
        )
    )
    if journal.replaced:
        report(
            Notice(
                f"the target {target.path} was replaced since the interrupted run "
                "(another file at the same path): that run's journal was discarded and "
                "the clone starts over"
            )
        )
    return cut, journal


async def _data_phase(
    channel: Channel,
    target: Target,
    plan: Plan,
    journal: Journal | None,
    opts: ReceiveOptions,
    report: Reporter,
    feed: Feed | None,
) -> tuple[DataState, End, int]:
    """The data, then fsync, the root check and ``--verify`` (with repairs); the journal
    is finished (deleted) after a complete clone and closed otherwise.  Returns the
    data phase's state, END, and the chunks fetched again."""
    threads = default_threads()
    try:
        hash_log = tempfile.TemporaryFile(prefix="p2pclone-") if opts.verify else NullLog()  # noqa: SIM115 - closed by the with below
        with hash_log as log:
            state = DataState(channel, target, plan, journal, log, threads, report, feed)
            try:
                end = await state.run(opts.delta or plan.delta)
            except BaseException as exc:
                # Keep what was written: a re-run resumes after it.
                with trio.CancelScope(shield=True), contextlib.suppress(P2PCloneError):
                    await state.commit(ack=False)
                raise pick_error(exc) from None
            repaired = len(state.refetch)
            try:
                await trio.to_thread.run_sync(target.sync)
                if end.root != channel.conn.root_digest():
                    raise IntegrityError(
                        "the root hash over all chunks differs from the sender's: the copy is "
                        "not identical; run the clone again"
                    )
                if opts.verify and not state.lost:
                    bad = await verify_target(target, plan, log, threads, report)
                    if bad:
                        await repair(channel, target, plan, bad, journal)
                        repaired += len(bad)
            except (IntegrityError, TargetError):
                # The journal vouches for data the target may not hold: a re-run must
                # not trust it.
                if journal is not None:
                    await trio.to_thread.run_sync(journal.finish)
                    journal = None
                raise
        # With unreadable ranges the journal stays: the same commands again resume, and
        # only what reads differently now (the healed ranges) is sent.
        if journal is not None and not state.lost and not state.unreadable:
            await trio.to_thread.run_sync(journal.finish)
            journal = None
        return state, end, repaired
    finally:
        if journal is not None:
            journal.close()


__all__ = ["approve_all", "receive_stream"]
