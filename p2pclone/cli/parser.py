"""The argument parser: one function per subcommand, the help texts, ``--chunk-size``
sizes, and usage errors as exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TypeAlias

from .. import __version__
from ..errors import UsageError
from .flags import (
    choice,
    common,
    limit,
    mapfile,
    parse_size,
    passphrase,
    source_options,
    target_options,
)

EPILOG_EXIT = """exit codes: 0 done, 1 other error, 2 usage or bad URL, 3 authentication failed,
4 refused for safety, 5 link lost or transfer interrupted, 6 integrity failure,
7 complete except for unreadable source ranges (docs/errors.md)"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A bad command line: the usage line now, the sentence from the CLI's one error
        boundary (``main``), exit 2."""
        self.print_usage(sys.stderr)
        raise UsageError(message)


# what add_subparsers() returns: each _add_* function adds one subcommand to it
_Subcommands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``args.command`` names the subcommand."""
    parser = _Parser(
        prog="p2pclone",
        description="Clone one machine's disk straight onto another's: only what must be sent, "
        "hashed end to end.",
        epilog=EPILOG_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p2pclone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_receive(sub)
    _add_send(sub)
    _add_clone(sub)
    _add_image(sub)
    _add_disks(sub)
    _add_peers(sub)
    _add_demo(sub)
    return parser


def _add_receive(sub: _Subcommands) -> None:
    r = sub.add_parser(
        "receive",
        help="listen and write an incoming clone to TARGET",
        epilog=EPILOG_EXIT,
        description="Listen at URL (with none: on every address, announced over mDNS by "
        "the code's number, and ready to join a multicast group announced for it), "
        "receive one clone and write it to TARGET (a block device or a file), then "
        "fsync; nothing is written before the sender's plan has been accepted.",
    )
    r.add_argument("target", metavar="TARGET", help="block device or file to overwrite")
    r.add_argument(
        "url",
        metavar="URL",
        nargs="?",
        default="tcp://",
        help="where to listen (default: every address, port 7411, announced on the links "
        "around by the code's number, so the sender needs no URL): tcp://[BIND][:PORT], "
        "serial:///dev/ttyX[?baud=N] or multicast://GROUP[:PORT][?iface=NAME]; or an image "
        "file to restore: file:///PATH (a file, not a device) or "
        "smb://[USER@]HOST[:PORT]/SHARE/PATH",
    )
    r.add_argument(
        "--code",
        help="the pairing code to show (default: $P2PCLONE_CODE, else generated); prefer "
        "the variable: other users of this machine can see a command line",
    )
    passphrase(r, "restoring an image: its passphrase")
    target_options(r)
    choice(r, "restoring an image: ")
    limit(r)
    common(r)


def _add_send(sub: _Subcommands) -> None:
    s = sub.add_parser(
        "send",
        help="send SOURCE to a listening receiver",
        epilog=EPILOG_EXIT,
        description="Read SOURCE (a block device or a file) and send it to the receiver at "
        "URL (with none: the one announcing this code's number on the links around, "
        "found over mDNS): only the blocks its filesystems use (its partition table and each "
        "filesystem's allocation are read first; what p2pclone does not understand is "
        "copied whole), zero chunks as ranges, the rest BLAKE3-hashed and "
        "zstd-compressed.",
    )
    s.add_argument(
        "source",
        metavar="SOURCE",
        help="block device or file to clone, or an image (file:///PATH, smb://HOST/SHARE/PATH)",
    )
    s.add_argument(
        "url",
        metavar="URL",
        nargs="?",
        default="tcp://",
        help="the receiver (default: the one announcing this code's number on the links "
        "around, found over mDNS): tcp://HOST[:PORT] or serial:///dev/ttyX[?baud=N], or a group of "
        "them: multicast://GROUP[:PORT][?iface=NAME&rate=RATE]; or an image "
        "file to save: file:///PATH (a file, not a device: a disk is SOURCE or the "
        "receiver's TARGET) or smb://[USER@]HOST[:PORT]/SHARE/PATH (password from "
        "$P2PCLONE_SMB_PASSWORD, else asked)",
    )
    s.add_argument(
        "--code",
        help="the pairing code the receiver shows (default: $P2PCLONE_CODE, else asked); "
        "prefer the variable or the prompt: other users of this machine can see a "
        "command line",
    )
    passphrase(
        s,
        "an image as SOURCE: its passphrase; saving an image: the passphrase to encrypt it with",
    )
    s.add_argument(
        "--new-passphrase",
        help="saving an image from an image: the new one's passphrase (default: "
        "$P2PCLONE_NEW_PASSPHRASE, else the same as --passphrase)",
    )
    _send_options(s)
    limit(s)
    common(s)


def _send_options(s: argparse.ArgumentParser) -> None:
    source_options(s)
    mapfile(s)
    s.add_argument(
        "--fresh",
        action="store_true",
        help="saving an image: start it over instead of resuming an interrupted save",
    )
    s.add_argument(
        "--receivers",
        type=int,
        default=None,
        metavar="N",
        help="multicast: start once N receivers have joined (default 1)",
    )
    s.add_argument(
        "--wait",
        type=float,
        default=None,
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


def _add_clone(sub: _Subcommands) -> None:
    c = sub.add_parser(
        "clone",
        help="copy SOURCE onto TARGET on this machine (a new disk in the same PC)",
        epilog=EPILOG_EXIT,
        description="Copy SOURCE onto TARGET, both on this machine: no network, no "
        "encryption, the same checks as a clone between two machines (only the blocks the "
        "filesystems use, the question before overwriting, resume, --verify). Either side "
        "may be an image URL (file:///PATH or smb://HOST/SHARE/PATH): then it saves or "
        "restores that image.",
    )
    c.add_argument("source", metavar="SOURCE", help="block device or file to copy, or an image")
    c.add_argument(
        "target", metavar="TARGET", help="block device or file to overwrite, or an image to save"
    )
    passphrase(c, "an image as SOURCE or TARGET: its passphrase")
    target_options(c)
    source_options(c)
    c.add_argument(
        "--allow-mounted",
        action="store_true",
        help="copy a source that is mounted read-write (the copy may be inconsistent)",
    )
    c.add_argument(
        "--chunk-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="chunk size, a multiple of 4K (default 1M)",
    )
    limit(c)
    common(c)


def _add_image(sub: _Subcommands) -> None:
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
    passphrase(im, "the image's passphrase (info: optional, shows the root hash)")
    common(im)


def _add_disks(sub: _Subcommands) -> None:
    d = sub.add_parser(
        "disks",
        help="list local block devices",
        description="List block devices: size, model, serial, and what uses them.",
    )
    d.add_argument("--json", action="store_true", help="one JSON object per disk")
    d.set_defaults(debug=False)


def _add_peers(sub: _Subcommands) -> None:
    p = sub.add_parser(
        "peers",
        help="list the receivers waiting on the links around",
        description="List the receivers announcing themselves over mDNS "
        "(_p2pclone._tcp): the number of their code, host, addresses, target size.",
    )
    p.add_argument(
        "--wait", type=float, default=2.0, metavar="SECONDS", help="listen this long (default 2)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per receiver")
    p.set_defaults(debug=False)


def _add_demo(sub: _Subcommands) -> None:
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
