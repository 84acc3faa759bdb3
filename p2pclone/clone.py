"""``p2pclone clone SOURCE TARGET``: a new disk in the same machine, no network.

The ordinary sending and receiving sessions run in this process, joined by an
in-process pipe (as an image's recorder and player are): the same used map, safety
checks, question, journal (an interrupted clone resumes), delta and ``--verify`` as a
clone between two machines, without sockets, and without encryption after pairing
(nobody can be in the middle of a pipe; see :class:`~p2pclone.protocol.Connection`).
Either side may be an image URL: then it is a save (``send SOURCE IMAGE``) or a
restore (``receive TARGET IMAGE``), run by those drivers.
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
from dataclasses import replace
from typing import assert_never

import trio

from .disks import Target
from .disks.hit import files_hit
from .disks.tools import missing
from .endpoints import Disk, Image, place
from .errors import SafetyError, SourceError
from .jobs import receive, send
from .journal import check_state_dir, default_state_dir
from .options import (
    DISK_SOURCE,
    RECEIVING_SESSION,
    SENDING_SESSION,
    Approve,
    ReceiveOptions,
    SendOptions,
    refuse_unhonoured,
)
from .pipeline import DiskSource
from .receiver import approve_all, receive_stream
from .sender import DEFAULT_CHUNK_SIZE, check_chunk_size, send_stream
from .sender.source import open_source
from .session import Done, Notice, Reporter, no_report
from .transports.pipe import pipe_pair

#: a disk onto a disk: how the source is read, and a sending session's options but
#: ``delta``, which is the target's own (``ReceiveOptions.delta``)
CLONE_SEND = DISK_SOURCE | SENDING_SESSION - {"delta"}


async def clone(
    source: str,
    target: str,
    sending: SendOptions,
    receiving: ReceiveOptions,
    *,
    report: Reporter = no_report,
    approve: Approve = approve_all,
) -> Done:
    """Copy ``source`` onto ``target``; return the receiving side's statistics.

    ``sending``: how the source is read; ``receiving``: how the target is written.  An
    image as TARGET is a save (``sending`` only), an image as SOURCE a restore
    (``receiving`` only: its passphrase is ``receiving.passphrase``).

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    origin, dest = place(source), place(target)
    match dest:
        case Image():
            refuse_unhonoured(receiving, (), f"a clone onto {dest.name} (a save)")
            return await send(source, target, sending, report=report)
        case Disk():
            pass
        case _:
            assert_never(dest)
    match origin:
        case Image():
            refuse_unhonoured(sending, (), f"a clone from {origin.name} (a restore)")
            return await receive(target, source, receiving, report=report, approve=approve)
        case Disk():
            pass
        case _:
            assert_never(origin)
    refuse_unhonoured(sending, CLONE_SEND, "a clone from a disk onto a disk")
    refuse_unhonoured(receiving, RECEIVING_SESSION, "a clone from a disk onto a disk")
    chunk_size = sending.chunk_size or DEFAULT_CHUNK_SIZE
    check_chunk_size(chunk_size)
    if receiving.journal:
        await trio.to_thread.run_sync(check_state_dir, receiving.state_dir or default_state_dir())
    _not_the_same(source, target)
    disk = await trio.to_thread.run_sync(Target.open, target)
    try:
        source_, chunk_size = await open_source(origin, chunk_size, sending, report)
        try:
            done = await _run(source_, disk, chunk_size, sending, receiving, report, approve)
            if done.unreadable:  # the receiving side's Done: the reader names the files
                hit = functools.partial(files_hit, source, source_.info, done.unreadable)
                done = replace(done, unreadable_files=await trio.to_thread.run_sync(hit))
        finally:
            source_.close()
    finally:
        disk.close()
    if disk.is_block and _is_block(source) and not receiving.new_ids:
        report(Notice(twins(source, target)))
    return done


async def _run(
    source: DiskSource,
    target: Target,
    chunk_size: int,
    sending: SendOptions,
    receiving: ReceiveOptions,
    report: Reporter,
    approve: Approve,
) -> Done:
    code = secrets.token_hex(16)  # pairs the two ends of our own pipe; shown to nobody
    ours, theirs = pipe_pair()
    done: list[Done] = []
    async with trio.open_nursery() as nursery:

        async def sending_side() -> None:
            await send_stream(
                ours,
                source,
                replace(sending, delta=receiving.delta),
                code=code,
                chunk_size=chunk_size,
                url="clone",
                seal=False,
            )

        nursery.start_soon(sending_side)
        done.append(
            await receive_stream(
                theirs,
                target,
                receiving,
                code=code,
                url="clone",
                report=report,
                approve=approve,
                seal=False,
            )
        )
    return done[0]


def twins(source: str, target: str) -> str:
    """The sentence after a disk cloned onto another disk of this machine, keeping its
    IDs (the default: see docs/architecture.md, "New identities")."""
    return (
        f"{target} has the same disk and filesystem IDs as {source}: while both stay in "
        "this machine, Linux may mount either one by UUID and Windows takes one offline; "
        "take one out, or clone with --new-ids (which Windows' boot configuration does not "
        "follow: see docs/cloning.md)"
    )


def _not_the_same(source_path: str, target_path: str) -> None:
    """Refuse to copy a disk or file onto itself (or a device onto its own node)."""
    try:
        src = os.stat(source_path)
    except FileNotFoundError:
        raise SourceError(missing("source", source_path)) from None
    except OSError:
        return  # Source.open names the problem
    try:
        dst = os.stat(target_path)
    except OSError:
        return
    same_file = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
    same_dev = (
        stat.S_ISBLK(src.st_mode) and stat.S_ISBLK(dst.st_mode) and src.st_rdev == dst.st_rdev
    )
    if same_file or same_dev:
        raise SafetyError(
            f"the source {source_path} and the target {target_path} are the same "
            f"{'disk' if same_dev else 'file'}: give the new disk as TARGET"
        )


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
