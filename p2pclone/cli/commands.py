"""The commands: ``main`` parses the arguments and runs one ``cmd_*`` per subcommand.

Each command builds its options once (p2pclone/options.py), asks what it must ask,
and runs a job (p2pclone/jobs.py) under :func:`_run`.  ``main`` is the one error
boundary: every :class:`~p2pclone.errors.P2PCloneError`, from the command line, a
peer, a disk or the network, leaves through :meth:`Output.error` (escaped, one
sentence) with its exit code.

Signals (docs/errors.md): Ctrl-C (SIGINT) and SIGTERM cancel the job, so the receiving
side commits its journal (a rerun resends nothing already written) and the run ends
with exit 5 and one sentence.  A closed terminal (SIGHUP) does the same before the
transfer has started; after, the job goes on and its output is dropped, unless
``--stop-on-hangup``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import trio

from .. import mapfile
from ..codes import WORDS_GROUP, WORDS_ONE, generate
from ..endpoints import Group, Image, Place, far_end, place
from ..errors import ExitCode, P2PCloneError, TargetError, TransportError, UsageError
from ..options import ReceiveOptions, SendOptions
from ..session import Done, Notice, pick_error
from .log import open_log
from .output import Output
from .parser import build_parser
from .prompts import (
    NEW_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    ask_code,
    image_passphrase,
    make_approve,
    smb_password,
)
from .running import interrupted, watch_signals
from .tuning import tune_malloc

Job = Callable[[], Awaitable[Done]]


def _run(args: argparse.Namespace, out: Output, job: Job) -> int:
    """Run ``job`` with the signals above watched; show its outcome; its exit code.

    Raises:
        P2PCloneError: the job failed, or a signal stopped it.
    """
    stopped_by: list[int] = []

    async def watched() -> Done | None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, nursery.cancel_scope, stopped_by, out, args)
            done = await job()
            nursery.cancel_scope.cancel()
            return done

    try:
        done = trio.run(watched)
    except BaseException as exc:
        if stopped_by or isinstance(exc, KeyboardInterrupt):
            raise interrupted(args, stopped_by, out.planned) from None
        err = pick_error(exc)
        if isinstance(err, P2PCloneError):
            if args.debug:
                traceback.print_exception(exc)
            raise err from None
        raise
    if stopped_by or done is None:
        raise interrupted(args, stopped_by, out.planned)
    return _finish(args, out, done)


def _finish(args: argparse.Namespace, out: Output, done: Done) -> int:
    code = ExitCode.OK
    if done.unreadable:
        out.unreadable(done, _origin(args))
        code = ExitCode.UNREADABLE
    else:
        out(done)
    if getattr(args, "mapfile", None):
        try:
            mapfile.write(args.mapfile, done.source_bytes, done.unreadable, " ".join(sys.argv))
        except OSError as exc:  # the clone is done; only its map could not be written
            raise TargetError(f"cannot write the mapfile {args.mapfile}: {exc.strerror}") from None
    return int(code)


def _origin(args: argparse.Namespace) -> str:
    """Where a run's unreadable ranges come from, for its sentence: an image that
    recorded them ("image"), a save of a failing disk into one ("save"), or the disk."""
    source = getattr(args, "source", None) or ""
    target = getattr(args, "target", None) or ""
    url = getattr(args, "url", None) or ""
    if args.command == "image" or isinstance(place(source), Image):
        return "image"
    if args.command == "receive" and isinstance(place(url), Image):
        return "image"
    saved = args.command == "send" and isinstance(place(url), Image)
    if saved or isinstance(place(target), Image):
        return "save"
    return "disk"


def _reading(args: argparse.Namespace) -> SendOptions:
    """The reading side's options, as ``send`` and ``clone`` share them."""
    return SendOptions(
        chunk_size=args.chunk_size,
        partitions=args.partitions,
        skip=args.skip,
        exact=args.exact,
        allow_mounted=args.allow_mounted,
        retries=args.retries,
        scrape=args.scrape,
        read_timeout=args.read_timeout,
    )


def _writing(args: argparse.Namespace) -> ReceiveOptions:
    """The writing side's options, as ``receive`` and ``clone`` share them.

    Raises:
        UsageError: --grow and --proportional together.
    """
    if args.grow is not None and args.proportional:
        raise UsageError(
            "--grow and --proportional are two ways to share a larger disk's space: give one"
        )
    return ReceiveOptions(
        yes=args.yes,
        verify=args.verify,
        delta=args.delta,
        grow=args.grow,
        proportional=args.proportional,
        cut=args.cut,
        new_ids=args.new_ids,
        partitions=getattr(args, "partitions", ()) if args.command == "receive" else (),
        skip=getattr(args, "skip", ()) if args.command == "receive" else (),
        discard=args.discard,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        # receive; a clone's goes to the side that crosses a network (cmd_clone)
        limit_rate=args.limit_rate if args.command == "receive" else None,
    )


def _urls(*places: Place) -> list[str]:
    return [p.url for p in places if isinstance(p, Image)]


# -- the commands ----------------------------------------------------------------------


def cmd_receive(args: argparse.Namespace, out: Output) -> int:
    from ..anywhere import receive_anywhere
    from ..jobs import check_receive, receive

    end = far_end(args.url)
    image = end if isinstance(end, Image) else None
    options = replace(
        _writing(args), code=args.code or "", passphrase=args.passphrase, fresh=args.fresh
    )
    check_receive(end, options)  # before anything is asked
    if image is not None:
        options = replace(
            options,
            passphrase=image_passphrase(args.passphrase, image.url, new=False),
            password=smb_password(image.url),
        )
    else:
        # A group pairs many times with one code: p2pclone makes longer ones for it.
        words = WORDS_GROUP if isinstance(end, Group) else WORDS_ONE
        options = replace(
            options, code=args.code or os.environ.get("P2PCLONE_CODE") or generate(words)
        )
    approve = make_approve(out)
    # No URL (or tcp:// alone): a unicast sender on any address, or a group for our code.
    if args.url.rstrip("/") == "tcp:":
        return _run(
            args, out, lambda: receive_anywhere(args.target, options, report=out, approve=approve)
        )
    return _run(
        args,
        out,
        lambda: receive(args.target, args.url, options, report=out, approve=approve),
    )


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    from ..jobs import check_send, send

    origin, end = place(args.source), far_end(args.url)
    options = replace(
        _reading(args),
        code=args.code or "",
        passphrase=args.passphrase,
        new_passphrase=args.new_passphrase,
        delta=args.delta,
        fresh=args.fresh,
        receivers=args.receivers,
        wait=args.wait,
        limit_rate=args.limit_rate,
    )
    check_send(origin, end, options)  # before anything is asked
    options = _image_secrets(options, origin, end if isinstance(end, Image) else None)
    if not isinstance(end, Image):
        options = replace(options, code=args.code or os.environ.get("P2PCLONE_CODE") or ask_code())
    return _run(
        args,
        out,
        lambda: send(args.source, args.url, options, report=out, group_report=out.member),
    )


def _image_secrets(options: SendOptions, origin: Place, saved: Image | None) -> SendOptions:
    """The passphrases a send needs (the image read, the image saved) and an SMB
    password, from the options, the environment or the terminal."""
    passphrase, new = options.passphrase, options.new_passphrase
    if isinstance(origin, Image):
        passphrase = image_passphrase(passphrase, origin.url, new=False)
        if saved is not None:
            new = new or os.environ.get(NEW_PASSPHRASE_ENV) or passphrase
    elif saved is not None:
        passphrase = image_passphrase(passphrase, saved.url, new=True)
    password = smb_password(*_urls(origin, *([saved] if saved else [])))
    return replace(options, passphrase=passphrase, new_passphrase=new, password=password)


def cmd_clone(args: argparse.Namespace, out: Output) -> int:
    from ..clone import clone

    origin, dest = place(args.source), place(args.target)
    saving = isinstance(dest, Image)
    sending = replace(
        _reading(args),
        passphrase=args.passphrase if saving else None,
        fresh=args.fresh and saving,  # a save starts over; a disk's journal is the target's
        # an image restore reads at the rate (below); anything else is the sender's to
        # honour or refuse (a clone from disk to disk crosses no network)
        limit_rate=None if isinstance(origin, Image) else args.limit_rate,
    )
    receiving = replace(
        _writing(args),
        passphrase=None if saving else args.passphrase,
        fresh=args.fresh and not saving,
    )
    if isinstance(dest, Image):
        sending = _image_secrets(sending, origin, dest)
    elif isinstance(origin, Image):
        # A restore: the image is read by the receiving side (its player), which
        # chooses the partitions.
        receiving = replace(
            receiving,
            passphrase=image_passphrase(args.passphrase, origin.url, new=False),
            password=smb_password(origin.url),
            partitions=sending.partitions,
            skip=sending.skip,
            limit_rate=args.limit_rate,
        )
        sending = replace(sending, partitions=(), skip=())
    approve = make_approve(out)
    return _run(
        args,
        out,
        lambda: clone(args.source, args.target, sending, receiving, report=out, approve=approve),
    )


def cmd_image(args: argparse.Namespace, out: Output) -> int:
    from ..endpoints import image
    from ..image import tools

    target = image(args.url)
    password = smb_password(target.url)
    if args.action == "info":
        # No prompt: the header needs none; a passphrase given shows the root hash.
        facts = tools.info(args.url, password, args.passphrase or os.environ.get(PASSPHRASE_ENV))
        if args.json:
            out.emit(event="image", **facts)
        else:
            for line in tools.describe(facts):
                out.line(line)
        return 0
    passphrase = image_passphrase(args.passphrase, target.url, new=False)
    if args.action == "export" and sys.stdout.isatty():
        raise UsageError(
            "export writes the raw disk to stdout: redirect it, e.g. "
            "p2pclone image export URL > disk.raw"
        )
    if args.action == "verify":
        return _run(args, out, lambda: tools.verify(args.url, passphrase, password, report=out))
    return _run(
        args,
        out,
        lambda: tools.export(args.url, passphrase, sys.stdout.buffer, password, report=out),
    )


def cmd_disks(args: argparse.Namespace, out: Output) -> int:
    from ..disks import list_block_devices
    from ..disks.listing import contents, table
    from ..units import human_bytes

    disks = list_block_devices()
    if args.json:
        for d in disks:
            out.emit(
                path=d.path,
                size=d.size,
                model=d.model,
                serial=d.serial,
                kind=d.kind,
                sector_size=d.sector_size,
                removable=d.removable,
                read_only=d.read_only,
                mounted=bool(d.mountpoints),
                mountpoints=d.mountpoints,
                swap=d.swap,
                holders=d.holders,
                partitions=d.partitions,
                in_use=d.in_use,
                table=table(d),
                volumes=contents(d),
            )
        return 0
    if not disks:
        out.line("No block devices found.")
        return 0
    out.line(f"{'DEVICE':<14} {'SIZE':>10}  {'MODEL':<24} {'SERIAL':<20} IN USE")
    for d in disks:
        out.line(
            f"{d.path:<14} {human_bytes(d.size):>10}  {d.model[:24]:<24} {d.serial[:20]:<20} "
            f"{d.describe_use() or 'no'}"
        )
        for v in contents(d):
            named = ", ".join(f"{k} {v[k]!r}" for k in ("label", "partlabel") if v[k])
            out.line(
                f"  {v['path']:<12} {human_bytes(int(v['size'])):>10}  {v['fs'] or '?':<8} {named}"
            )
    return 0


def cmd_peers(args: argparse.Namespace, out: Output) -> int:
    from ..transports.mdns import browse
    from ..units import human_bytes

    try:
        found = sorted(browse(max(args.wait, 0.1)), key=lambda a: (a.nameplate, a.host))
    except OSError as exc:
        raise TransportError(
            f"cannot look for receivers on the network ({exc.strerror or exc})"
        ) from None
    now = time.time()  # after the browse: how long each has waited by now
    for a in found:
        for what in a.dropped:  # anyone on the LAN can announce anything
            out(Notice(f"the receiver {a.host} ({a.name}) announced {what}: left out"))
    if args.json:
        for a in found:
            out.emit(
                nameplate=a.nameplate,
                host=a.host,
                port=a.port,
                addresses=a.addresses,
                urls=a.urls(),
                target_bytes=a.size,
                version=a.version,
                age=round(max(0.0, now - a.since), 1) if a.since else None,
            )
        return 0
    if not found:
        out.line(f"No receivers announced themselves within {args.wait:g} s.")
        return 0
    out.line(f"{'CODE':<6} {'HOST':<20} {'TARGET':>10} {'WAITING':>8}  ADDRESSES")
    for a in found:
        age = f"{max(0.0, now - a.since):.0f} s" if a.since else "?"
        size = "?" if a.size is None else human_bytes(a.size)
        out.line(f"{a.nameplate + '-…':<6} {a.host[:20]:<20} {size:>10} "
                 f"{age:>8}  {', '.join(a.urls())}")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from .demo import run_demo

    return run_demo(size_mib=args.size, workdir=args.dir, debug=args.debug)


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "receive": cmd_receive,
    "send": cmd_send,
    "clone": cmd_clone,
    "image": cmd_image,
    "disks": cmd_disks,
    "peers": cmd_peers,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code.  The one place an error is printed."""
    tune_malloc()
    out = Output(json_mode=False, role="p2pclone")
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        json_mode = bool(getattr(args, "json", False))
        out = Output(
            json_mode=json_mode,
            role=args.command,
            stream=sys.stderr if getattr(args, "action", "") == "export" else sys.stdout,
        )
        if getattr(args, "log", None):
            out.log = open_log(args.log, args.command)
        return COMMANDS[args.command](args, out)
    except P2PCloneError as exc:
        out.error(exc)
        return int(exc.exit_code)


__all__ = ["COMMANDS", "main"]
