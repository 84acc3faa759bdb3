"""The commands: ``main`` parses the arguments and runs one ``cmd_*`` per subcommand;
each builds its :class:`~.output.Output`, asks what it must ask, runs a driver with
``trio.run`` and turns a :class:`~p2pclone.errors.P2PCloneError` into its exit code.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from .. import mapfile
from ..disks.rescue import RescueOptions
from ..endpoints import is_image_url
from ..errors import ExitCode, P2PCloneError, TargetError, TransportError, UsageError
from ..session import Done, pick_error
from ..units import human_bytes
from .output import Output
from .parser import build_parser
from .prompts import ask_code, ask_secret, generate_code, image_code, make_confirm, smb_password
from .tuning import tune_malloc


def _run(args: argparse.Namespace, out: Output, fn: Callable[[], Any]) -> int:
    again = "run the same command again" if args.command == "clone" else "run both sides again"
    interrupted = TransportError(
        f"interrupted: the transfer was stopped and the target is incomplete; {again}",
        code="interrupted",
    )
    try:
        done = trio.run(fn)
    except BaseException as exc:
        # Ctrl-C, alone or raised inside a nursery among other errors: it wins.
        if isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[0]
        ):
            out.error(interrupted)
            return int(ExitCode.LINK)
        err = pick_error(exc)
        if isinstance(err, P2PCloneError):
            if args.debug:
                traceback.print_exception(exc)
            out.error(err)
            return int(err.exit_code)
        raise
    code = ExitCode.OK
    if isinstance(done, Done) and done.unreadable:
        out.unreadable(done, _origin(args))
        code = ExitCode.UNREADABLE
    else:
        out(done)
    if isinstance(done, Done) and getattr(args, "mapfile", None):
        try:
            mapfile.write(args.mapfile, done.source_bytes, done.unreadable, " ".join(sys.argv))
        except OSError as exc:  # the clone is done; only its map could not be written
            out.error(TargetError(f"cannot write the mapfile {args.mapfile}: {exc.strerror}"))
            return int(ExitCode.OTHER)
    return int(code)


def _origin(args: argparse.Namespace) -> str:
    """Where a run's unreadable ranges come from, for its sentence: an image that
    recorded them ("image"), a save of a failing disk into one ("save"), or the disk."""
    source = getattr(args, "source", None) or ""
    target = getattr(args, "target", None) or ""
    if args.command == "image" or is_image_url(source):
        return "image"
    if args.command == "receive" and is_image_url(args.url):
        return "image"
    if is_image_url(target) or (args.command == "send" and is_image_url(args.url or "")):
        return "save"
    return "disk"


def cmd_receive(args: argparse.Namespace) -> int:
    from ..receiver import receive
    from ..receiver.anywhere import receive_anywhere

    out = Output(json_mode=args.json, role="receive")
    password = None
    try:
        if is_image_url(args.url):
            code = image_code(args, new=False)
            password = smb_password(args.url)
        else:
            code = args.code or os.environ.get("P2PCLONE_CODE") or generate_code()
    except UsageError as exc:
        out.error(exc)
        return int(exc.exit_code)
    # No URL (or tcp:// alone): a unicast sender on any address, or a group for our code.
    anywhere = args.url.rstrip("/") == "tcp:"
    return _run(
        args,
        out,
        lambda: (receive_anywhere if anywhere else functools.partial(receive, url=args.url))(
            args.target,
            code=code,
            verify=args.verify,
            confirm=make_confirm(args.yes, out),
            state_dir=args.state_dir,
            fresh=args.fresh,
            delta=args.delta,
            discard=args.discard,
            grow=args.grow,
            password=password,
            report=out,
        ),
    )


def cmd_send(args: argparse.Namespace) -> int:
    from ..sender import send

    out = Output(json_mode=args.json, role="send")
    passphrase = None
    try:
        if is_image_url(args.url):
            code = image_code(args, new=True)
        else:
            code = args.code or os.environ.get("P2PCLONE_CODE") or ask_code()
        if is_image_url(args.source):
            passphrase = (
                args.passphrase
                or os.environ.get("P2PCLONE_PASSPHRASE")
                or ask_secret(
                    f"Passphrase of the image {args.source}: ",
                    missing="the source image is encrypted: give its passphrase with "
                    "--passphrase (or set P2PCLONE_PASSPHRASE)",
                )
            )
        password = smb_password(args.source, args.url)
    except UsageError as exc:
        out.error(exc)
        return int(exc.exit_code)
    return _run(
        args,
        out,
        lambda: send(
            args.source,
            args.url,
            code=code,
            chunk_size=args.chunk_size,
            allow_mounted=args.allow_mounted,
            delta=args.delta,
            passphrase=passphrase,
            password=password,
            fresh=args.fresh,
            receivers=args.receivers,
            wait=args.wait,
            group_report=out.member,
            exact=args.exact,
            rescue=RescueOptions(args.retries, args.read_timeout, args.scrape),
            report=out,
        ),
    )


def cmd_clone(args: argparse.Namespace) -> int:
    from ..clone import clone
    from ..receiver import Options

    out = Output(json_mode=args.json, role="clone")
    code = ""
    try:
        if is_image_url(args.target) or is_image_url(args.source):
            code = image_code(args, new=is_image_url(args.target))
        password = smb_password(args.source, args.target)
    except UsageError as exc:
        out.error(exc)
        return int(exc.exit_code)
    options = Options(
        verify=args.verify,
        confirm=make_confirm(args.yes, out),
        state_dir=Path(args.state_dir) if args.state_dir else None,
        fresh=args.fresh,
        delta=args.delta,
        discard=args.discard,
        grow=args.grow,
    )
    return _run(
        args,
        out,
        lambda: clone(
            args.source,
            args.target,
            options=options,
            exact=args.exact,
            rescue=RescueOptions(args.retries, args.read_timeout, args.scrape),
            allow_mounted=args.allow_mounted,
            chunk_size=args.chunk_size,
            code=code,
            password=password,
            report=out,
        ),
    )


def cmd_image(args: argparse.Namespace) -> int:
    from ..image import tools

    out = Output(
        json_mode=args.json,
        role="image",
        stream=sys.stderr if args.action == "export" else sys.stdout,
    )
    try:
        password = smb_password(args.url)
        if args.action == "info":
            facts = tools.info(args.url, password)
            if args.json:
                out.emit(event="image", **facts)
            else:
                for line in tools.describe(facts):
                    print(line)
            return 0
        code = image_code(args, new=False)
        if args.action == "export" and sys.stdout.isatty():
            raise UsageError(
                "export writes the raw disk to stdout: redirect it, e.g. "
                "p2pclone image export URL > disk.raw"
            )
    except P2PCloneError as exc:
        out.error(exc)
        return int(exc.exit_code)
    if args.action == "verify":
        return _run(args, out, lambda: tools.verify(args.url, code, password, report=out))
    return _run(
        args, out, lambda: tools.export(args.url, code, sys.stdout.buffer, password, report=out)
    )


def cmd_disks(args: argparse.Namespace) -> int:
    from ..disks import list_block_devices

    disks = list_block_devices()
    if args.json:
        for d in disks:
            print(
                json.dumps(
                    {
                        "path": d.path,
                        "size": d.size,
                        "model": d.model,
                        "serial": d.serial,
                        "kind": d.kind,
                        "sector_size": d.sector_size,
                        "removable": d.removable,
                        "read_only": d.read_only,
                        "mounted": bool(d.mountpoints),
                        "mountpoints": d.mountpoints,
                        "swap": d.swap,
                        "holders": d.holders,
                        "partitions": d.partitions,
                        "in_use": d.in_use,
                    }
                )
            )
        return 0
    if not disks:
        print("No block devices found.")
        return 0
    print(f"{'DEVICE':<14} {'SIZE':>10}  {'MODEL':<24} {'SERIAL':<20} IN USE")
    for d in disks:
        print(
            f"{d.path:<14} {human_bytes(d.size):>10}  {d.model[:24]:<24} {d.serial[:20]:<20} "
            f"{d.describe_use() or 'no'}"
        )
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    from ..transports.mdns import browse

    try:
        found = sorted(browse(max(args.wait, 0.1)), key=lambda a: (a.nameplate, a.host))
    except OSError as exc:
        print(
            f"p2pclone: error: cannot look for receivers on the network ({exc.strerror or exc})",
            file=sys.stderr,
        )
        return int(ExitCode.LINK)
    now = time.time()  # after the browse: how long each has waited by now
    for a in found:
        if args.json:
            print(
                json.dumps(
                    {
                        "nameplate": a.nameplate,
                        "host": a.host,
                        "port": a.port,
                        "addresses": a.addresses,
                        "urls": a.urls(),
                        "target_bytes": a.size,
                        "version": a.version,
                        "age": round(max(0.0, now - a.since), 1) if a.since else None,
                    }
                )
            )
    if args.json:
        return 0
    if not found:
        print(f"No receivers announced themselves within {args.wait:g} s.")
        return 0
    print(f"{'CODE':<6} {'HOST':<20} {'TARGET':>10} {'WAITING':>8}  ADDRESSES")
    for a in found:
        age = f"{max(0.0, now - a.since):.0f} s" if a.since else "?"
        print(f"{a.nameplate + '-…':<6} {a.host[:20]:<20} {human_bytes(a.size):>10} {age:>8}  "
              f"{', '.join(a.urls())}")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    try:
        return run_demo(size_mib=args.size, workdir=args.dir, debug=args.debug)
    except P2PCloneError as exc:
        print(f"p2pclone: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "receive": cmd_receive,
    "send": cmd_send,
    "clone": cmd_clone,
    "image": cmd_image,
    "disks": cmd_disks,
    "peers": cmd_peers,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"p2pclone: error: {exc.message}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return code
