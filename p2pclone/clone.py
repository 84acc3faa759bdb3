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

import os
import secrets
import stat
from dataclasses import fields

import trio

from .disks import Target
from .disks.rescue import RescueOptions
from .endpoints import is_image_url
from .errors import SafetyError, SourceError
from .journal import check_state_dir, default_state_dir
from .pipeline import DiskSource
from .receiver import Options, receive, receive_stream
from .sender import DEFAULT_CHUNK_SIZE, check_chunk_size, open_source, send, send_stream
from .session import Done, Reporter, no_report
from .transports.pipe import pipe_pair


async def clone(
    source_path: str,
    target_path: str,
    *,
    options: Options = Options(),  # noqa: B008 - frozen
    exact: bool = False,
    rescue: RescueOptions = RescueOptions(),  # noqa: B008 - frozen
    allow_mounted: bool = False,
    chunk_size: int | None = None,
    code: str = "",
    password: str | None = None,
    report: Reporter = no_report,
) -> Done:
    """Copy ``source_path`` onto ``target_path``; return the receiving side's statistics.

    ``code``: an image's passphrase (when either side is an image URL).

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    check_chunk_size(chunk_size)
    if is_image_url(target_path):
        return await send(
            source_path,
            target_path,
            code=code,
            chunk_size=chunk_size,
            allow_mounted=allow_mounted,
            password=password,
            fresh=options.fresh,
            exact=exact,
            rescue=rescue,
            report=report,
        )
    if is_image_url(source_path):
        every = {f.name: getattr(options, f.name) for f in fields(options)}
        return await receive(
            target_path, source_path, code=code, password=password, report=report, **every
        )
    if options.journal:
        await trio.to_thread.run_sync(check_state_dir, options.state_dir or default_state_dir())
    _not_the_same(source_path, target_path)
    target = await trio.to_thread.run_sync(Target.open, target_path)
    try:
        source, chunk_size = await open_source(
            source_path,
            chunk_size,
            allow_mounted=allow_mounted,
            exact=exact,
            rescue=rescue,
            report=report,
        )
        try:
            return await _run(source, target, chunk_size, options, report)
        finally:
            source.close()
    finally:
        target.close()


async def _run(
    source: DiskSource, target: Target, chunk_size: int, options: Options, report: Reporter
) -> Done:
    code = secrets.token_hex(16)  # pairs the two ends of our own pipe; shown to nobody
    ours, theirs = pipe_pair()
    done: list[Done] = []
    async with trio.open_nursery() as nursery:

        async def sending() -> None:
            await send_stream(
                ours,
                source,
                code=code,
                url="clone",
                chunk_size=chunk_size,
                delta=options.delta,
                seal=False,
            )

        nursery.start_soon(sending)
        done.append(
            await receive_stream(
                theirs, target, code=code, url="clone", options=options, report=report, seal=False
            )
        )
    return done[0]


def _not_the_same(source_path: str, target_path: str) -> None:
    """Refuse to copy a disk or file onto itself (or a device onto its own node)."""
    try:
        src = os.stat(source_path)
    except FileNotFoundError:
        raise SourceError(f"the source {source_path} does not exist: check the path") from None
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
