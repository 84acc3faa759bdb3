"""The command line: arguments, questions, progress display, exit codes.

The only module that prints.  Drivers report through callbacks; errors arrive as
:class:`~p2pclone.errors.P2PCloneError` and leave as one sentence on stderr (and a
JSON line with ``--json``) plus the documented exit code.  Tracebacks only with
``--debug``, or for a real bug (anything that is not a P2PCloneError).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import resources
from typing import Any, NoReturn, TextIO, assert_never

import trio

from . import __version__
from .endpoints import is_image_url
from .errors import (
    ExitCode,
    P2PCloneError,
    SafetyError,
    TransportError,
    UsageError,
    printable,
    redact,
)
from .protocol import Plan
from .session import (
    Connected,
    Done,
    Listening,
    Notice,
    Planned,
    Progress,
    Report,
    Verifying,
    pick_error,
)
from .units import human_bytes

EPILOG_EXIT = """exit codes: 0 done, 1 other error, 2 usage or bad URL, 3 authentication failed,
4 refused for safety, 5 link lost or transfer interrupted, 6 integrity failure
(docs/errors.md)"""


def generate_code() -> str:
    """A short speakable code: a number and two words (about 28 bits)."""
    words = resources.files("p2pclone").joinpath("wordlist.txt").read_text().split()
    return f"{secrets.randbelow(99) + 1}-{secrets.choice(words)}-{secrets.choice(words)}"


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 4M, 65536)") from None


# -- output ---------------------------------------------------------------------


class Output:
    """Renders driver reports: JSON lines, a live rich display, or quiet text."""

    def __init__(self, *, json_mode: bool, role: str, stream: TextIO = sys.stdout) -> None:
        self.json_mode = json_mode
        self.role = role
        self.stream = stream
        self.live = not json_mode and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last_json = 0.0
        self._phase = "copying"
        # multicast members: last state, live-display task, when a line was last printed
        self._member_state: dict[str, str] = {}
        self._member_task: dict[str, Any] = {}
        self._member_said: dict[str, float] = {}

    def emit(self, **fields: Any) -> None:
        print(redact(json.dumps(fields)), file=self.stream, flush=True)

    def say(self, text: str) -> None:
        # Lines may quote a peer (a source's name, an error): never let them steer the
        # terminal (control characters escaped, rich markup not interpreted).
        text = "\n".join(printable(redact(line)) for line in text.split("\n"))
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr if self.json_mode else self.stream, flush=True)

    def __call__(self, event: Report) -> None:
        match event:
            case Listening(url=url, code=code):
                if self.json_mode:
                    self.emit(event="listening", url=url, code=code)
                elif not code:  # an image: nobody to tell a code to
                    self.say(f"Reading the image {url}")
                else:
                    self.say(f"Listening on {url}  —  code: {code}")
                    there = (
                        f"tcp://THIS-HOST:{url.rsplit(':', 1)[-1]}"
                        if url.startswith("tcp://")
                        else "serial:///dev/ttyX (its end of the cable)"
                        if url.startswith("serial://")
                        else url
                    )
                    self.say(
                        f"On the source machine run:  p2pclone send SOURCE {there}  "
                        "(and type the code when asked)"
                    )
            case Connected(url=url):
                if self.json_mode:
                    self.emit(event="connected", url=url)
            case Planned() as plan:
                self._planned(plan)
            case Progress() as p:
                self._show_progress(p)
            case Verifying(total_bytes=total):
                self._phase = "verifying"
                if self.json_mode:
                    self.emit(event="verifying", total_bytes=total)
                elif self._progress is not None:
                    self._progress.reset(self._task, total=total, description="verifying")
                else:
                    self.say("Verifying: re-reading the target…")
            case Notice(message=message):
                if self.json_mode:
                    self.emit(event="notice", message=message)
                else:
                    self.say(f"p2pclone: note: {message}")
            case Done() as d:
                self._stop()
                if self.json_mode:
                    # Every field of Done, so the line can't drift from the stats.
                    self.emit(event="done", **{**asdict(d), "seconds": round(d.seconds, 3)})
                else:
                    rate = d.source_bytes / d.seconds if d.seconds > 0 else 0.0
                    ratio = d.wire_bytes / d.source_bytes if d.source_bytes else 0.0
                    self.say(
                        f"Done: {human_bytes(d.source_bytes)} in {d.seconds:.1f} s "
                        f"({human_bytes(rate)}/s); {human_bytes(d.wire_bytes)} on the wire "
                        f"({ratio:.0%}); {d.chunks} chunks, {d.zero_chunks} zero, "
                        f"{d.same_chunks} already there"
                        f"{f', {d.repaired_chunks} repaired' if d.repaired_chunks else ''}; "
                        f"{'verified, ' if d.verified else ''}root {d.digest[:16]}…"
                    )
            case _:
                assert_never(event)

    def _planned(self, p: Planned) -> None:
        if self.json_mode:
            self.emit(
                event="plan",
                source_bytes=p.source_bytes,
                chunk_size=p.chunk_size,
                chunks=p.chunks,
                source=p.source,
                target=p.target,
            )
            return
        self.say(
            f"{'Sending' if self.role == 'send' else 'Receiving'} "
            f"{human_bytes(p.source_bytes)} from {p.source.get('name', '?')} "
            f"to {p.target.get('name', '?')}"
        )
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._progress = RichProgress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("copying", total=p.source_bytes)

    def _show_progress(self, p: Progress) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=p.done_bytes)
        elif self.json_mode:
            now = time.monotonic()
            if now - self._last_json >= 1.0 or p.done_bytes == p.total_bytes:
                self._last_json = now
                self.emit(
                    event="progress",
                    phase=self._phase,
                    done_bytes=p.done_bytes,
                    total_bytes=p.total_bytes,
                    wire_bytes=p.wire_bytes,
                )

    def member(self, gp: Any) -> None:
        """Multicast: one receiver's state or progress (joined, receiving, evicted,
        unicast, done...): a line per change, and its own bar on a terminal."""
        if self.json_mode:  # every field, as for Done
            self.emit(event="receiver", **{**asdict(gp), "rate": round(gp.rate)})
            return
        changed = self._member_state.get(gp.name) != gp.state
        self._member_state[gp.name] = gp.state
        if self._progress is not None:
            label = f"{gp.name} {gp.state}" + (f", {gp.repairs} repaired" if gp.repairs else "")
            task = self._member_task.get(gp.name)
            if task is None:
                task = self._member_task[gp.name] = self._progress.add_task(
                    label, total=gp.total_bytes or None
                )
            self._progress.update(task, description=label, completed=gp.done_bytes)
        now = time.monotonic()
        if changed or (self._progress is None and now - self._member_said.get(gp.name, 0) >= 5):
            self._member_said[gp.name] = now
            line = f"receiver {gp.name}: {gp.state}" + (f" — {gp.why}" if gp.why else "")
            if not changed and gp.total_bytes:  # a progress line (no live display)
                line += (
                    f", {gp.done_bytes / gp.total_bytes:.0%} of {human_bytes(gp.total_bytes)}"
                    f", {human_bytes(gp.rate)}/s, {gp.repairs} fragments repaired"
                )
            self.say(line)

    def pause(self) -> None:
        """Stop any live display before asking a question."""
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def error(self, exc: P2PCloneError) -> None:
        self._stop()
        if self.json_mode:
            self.emit(event="error", code=exc.code, message=exc.message)
        print(f"p2pclone: error: {printable(exc.message)}", file=sys.stderr, flush=True)


# -- confirmation -----------------------------------------------------------------


def make_confirm(assume_yes: bool, out: Output) -> Callable[[Plan, Any], None]:
    def confirm(plan: Plan, target: Any) -> None:
        # A new or empty file holds nothing to lose; anything else is overwritten
        # only with --yes or an explicit "yes" typed at a terminal.
        if assume_yes or (not target.is_block and target.size == 0):
            return
        if not sys.stdin.isatty():
            raise SafetyError(
                f"the target {target.path} ({human_bytes(target.size)}) would be overwritten "
                "and there is no terminal to ask: pass --yes to confirm; nothing was written"
            )
        from .disks.describe import describe

        out.pause()
        print(
            f"About to OVERWRITE this target with {human_bytes(plan.source_size)} from "
            f"{printable(str(plan.source.get('name', 'the sender')))}:\n"
            f"{describe(target.path, target.size, target.device)}",
            file=sys.stderr,
        )
        answer = input("Type yes to overwrite it: ")
        if answer.strip().lower() != "yes":
            raise SafetyError("not confirmed: the target was left untouched")

    return confirm


def ask_secret(prompt: str, *, missing: str, twice: bool = False) -> str:
    """A passphrase typed at the terminal (not echoed); without a terminal, ``missing``."""
    if not sys.stdin.isatty():
        raise UsageError(missing)
    import getpass

    value = getpass.getpass(prompt)
    if not value:
        raise UsageError("no passphrase given")
    if twice and getpass.getpass("Type it again: ") != value:
        raise UsageError("the two passphrases differ; nothing was done")
    return value


def smb_password(*urls: str) -> str | None:
    """The SMB password for the first smb:// URL: None to take it from the URL or
    $P2PCLONE_SMB_PASSWORD, else asked at the terminal."""
    from .image.store import PASSWORD_ENV

    for url in urls:
        if url.lower().startswith("smb://"):
            if os.environ.get(PASSWORD_ENV) is not None or not sys.stdin.isatty():
                return None
            import getpass
            import urllib.parse

            if urllib.parse.urlsplit(url).password:
                return None
            return getpass.getpass(f"SMB password for {url}: ")
    return None


def image_code(args: argparse.Namespace, *, new: bool) -> str:
    """The passphrase of an image: --code, $P2PCLONE_CODE, or asked."""
    return (
        args.code
        or os.environ.get("P2PCLONE_CODE")
        or ask_secret(
            "Passphrase to encrypt the image: " if new else "Passphrase of the image: ",
            twice=new,
            missing="an image is encrypted with a passphrase and there is no terminal to "
            "ask for it: set P2PCLONE_CODE (or pass --code, which other users of this "
            "machine can see in the process list)",
        )
    )


def ask_code() -> str:
    """Prompt for the receiver's code on a terminal; without one, it is a usage error."""
    if not sys.stdin.isatty():
        raise UsageError(
            "no pairing code and no terminal to ask for it: set P2PCLONE_CODE to the code "
            "the receiver shows (or pass --code, which other users of this machine can "
            "see in the process list)"
        )
    code = input("Code shown by the receiver: ").strip()
    if not code:
        raise UsageError("no pairing code given")
    return code


# -- commands ---------------------------------------------------------------------


def _run(args: argparse.Namespace, out: Output, fn: Callable[[], Any]) -> int:
    interrupted = TransportError(
        "interrupted: the transfer was stopped and the target is incomplete; run both sides again",
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
    out(done)
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from .receiver import receive

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
    return _run(
        args,
        out,
        lambda: receive(
            args.target,
            args.url,
            code=code,
            verify=args.verify,
            confirm=make_confirm(args.yes, out),
            state_dir=args.state_dir,
            fresh=args.fresh,
            delta=args.delta,
            password=password,
            report=out,
        ),
    )


def cmd_send(args: argparse.Namespace) -> int:
    from .sender import send

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
            report=out,
        ),
    )


def cmd_image(args: argparse.Namespace) -> int:
    from .image import tools

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
    from .disks import list_block_devices

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


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        return run_demo(size_mib=args.size, workdir=args.dir, debug=args.debug)
    except P2PCloneError as exc:
        print(f"p2pclone: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"p2pclone: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p2pclone",
        description="Clone one machine's disk straight onto another's: only what must be sent, "
        "hashed end to end.",
        epilog=EPILOG_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p2pclone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json",
            action="store_true",
            help="one JSON object per line on stdout (last: done or error)",
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")

    r = sub.add_parser(
        "receive",
        help="listen and write an incoming clone to TARGET",
        epilog=EPILOG_EXIT,
        description="Listen at URL, receive one clone and write it to TARGET (a block "
        "device or a file), then fsync; nothing is written before the sender's "
        "plan has been accepted.",
    )
    r.add_argument("target", metavar="TARGET", help="block device or file to overwrite")
    r.add_argument(
        "url",
        metavar="URL",
        help="where to listen: tcp://[BIND][:PORT] (default port 7411), "
        "serial:///dev/ttyX[?baud=N] or multicast://GROUP[:PORT][?iface=NAME]; or an image "
        "file to restore: file:///PATH (a file, not a device) or "
        "smb://[USER@]HOST[:PORT]/SHARE/PATH",
    )
    r.add_argument(
        "--code",
        help="pairing code (default: $P2PCLONE_CODE, else generated); for an image, its "
        "passphrase (else asked); prefer the variable or the prompt: other users of this "
        "machine can see a command line",
    )
    r.add_argument("--yes", action="store_true", help="overwrite the target without asking")
    r.add_argument(
        "--verify",
        action="store_true",
        help="after fsync, re-read the whole target and check every chunk; chunks that "
        "read back wrong are fetched again and re-checked",
    )
    r.add_argument(
        "--delta",
        action="store_true",
        help="hash the target first and receive only the chunks that differ",
    )
    r.add_argument(
        "--fresh",
        action="store_true",
        help="ignore an interrupted earlier run's journal and start over",
    )
    r.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the resume journal lives (default: $P2PCLONE_STATE_DIR, else "
        "/var/lib/p2pclone for root, ~/.local/state/p2pclone for others)",
    )
    common(r)
    r.set_defaults(func=cmd_receive)

    s = sub.add_parser(
        "send",
        help="send SOURCE to a listening receiver",
        epilog=EPILOG_EXIT,
        description="Read SOURCE (a block device or a file) and send it to the receiver at "
        "URL: zero chunks as ranges, the rest BLAKE3-hashed and zstd-compressed.",
    )
    s.add_argument(
        "source",
        metavar="SOURCE",
        help="block device or file to clone, or an image (file:///PATH, smb://HOST/SHARE/PATH)",
    )
    s.add_argument(
        "url",
        metavar="URL",
        help="the receiver: tcp://HOST[:PORT] or serial:///dev/ttyX[?baud=N], or a group of "
        "them: multicast://GROUP[:PORT][?iface=NAME&rate=RATE]; or an image "
        "file to save: file:///PATH (a file, not a device: a disk is SOURCE or the "
        "receiver's TARGET) or smb://[USER@]HOST[:PORT]/SHARE/PATH (password from "
        "$P2PCLONE_SMB_PASSWORD, else asked)",
    )
    s.add_argument(
        "--code",
        help="the code the receiver shows (default: $P2PCLONE_CODE, else asked); saving an "
        "image, the passphrase to encrypt it with; prefer the variable or the prompt: "
        "other users of this machine can see a command line",
    )
    s.add_argument(
        "--passphrase",
        help="the passphrase of an image given as SOURCE (default: $P2PCLONE_PASSPHRASE, "
        "else asked)",
    )
    s.add_argument(
        "--fresh",
        action="store_true",
        help="saving an image: start it over instead of resuming an interrupted save",
    )
    s.add_argument(
        "--receivers",
        type=int,
        default=1,
        metavar="N",
        help="multicast: start once N receivers have joined (default 1)",
    )
    s.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="tcp://: keep trying this long to reach a receiver that is not listening yet "
        "(0: try once); multicast: start after this long with the receivers that joined, "
        "and wait as long for evicted or restarted ones to come back for their unicast "
        "finish (default 60)",
    )
    s.add_argument(
        "--delta",
        action="store_true",
        help="ask the receiver to hash its target and send only the chunks that differ",
    )
    s.add_argument(
        "--allow-mounted",
        action="store_true",
        help="send a source that is mounted read-write (the copy may be inconsistent: "
        "files can change while it is read)",
    )
    s.add_argument(
        "--chunk-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="chunk size, a multiple of 4K (default 1M; 256K over serial://)",
    )
    common(s)
    s.set_defaults(func=cmd_send)

    im = sub.add_parser(
        "image",
        help="look into a saved image: info, verify, export",
        epilog=EPILOG_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="info: what the image holds (no passphrase needed); verify: decrypt, "
        "decompress and hash every chunk and check the root hash (exit 6 naming the "
        "damaged ranges); export: write the raw disk to stdout.",
    )
    im.add_argument("action", choices=("info", "verify", "export"))
    im.add_argument(
        "url", metavar="URL", help="file:///PATH or smb://[USER@]HOST[:PORT]/SHARE/PATH"
    )
    im.add_argument("--code", help="the image's passphrase (default: $P2PCLONE_CODE, else asked)")
    common(im)
    im.set_defaults(func=cmd_image)

    d = sub.add_parser(
        "disks",
        help="list local block devices",
        description="List block devices: size, model, serial, and what uses them.",
    )
    d.add_argument("--json", action="store_true", help="one JSON object per disk")
    d.set_defaults(func=cmd_disks, debug=False)

    m = sub.add_parser(
        "demo",
        help="build a small disk image, clone it over loopback TCP, verify it",
        description="Build a small ext4 disk image with files and free space, clone it to a "
        "second file over a real loopback TCP connection, verify it and report "
        "the speed. Needs no spare disk and no second machine.",
    )
    m.add_argument(
        "--size",
        type=int,
        default=256,
        metavar="MIB",
        help="size of the demo disk in MiB (default 256)",
    )
    m.add_argument("--dir", help="keep the demo files in this folder (default: a temporary one)")
    m.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    m.set_defaults(func=cmd_demo)
    return parser


def tune_malloc() -> None:
    """Keep freed chunk buffers in the heap instead of returning them to the kernel.

    Each 1 MiB chunk allocates several MiB-sized buffers (read, compress, seal);
    with glibc's defaults they are mmap'd and unmapped every time, and the page
    faults cost more system time than the hashing (measured: -1.4 s per GiB sent).
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 << 20)  # M_MMAP_THRESHOLD: above the largest chunk (64 MiB)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to this much freed memory
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"p2pclone: error: {exc.message}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return code
