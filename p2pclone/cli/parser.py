"""The argument parser: one function per subcommand, the help texts, ``--chunk-size``
sizes, and usage errors as exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TypeAlias

from .. import __version__
from ..errors import UsageError

EPILOG_EXIT = """exit codes: 0 done, 1 other error, 2 usage or bad URL, 3 authentication failed,
4 refused for safety, 5 link lost or transfer interrupted, 6 integrity failure,
7 complete except for unreadable source ranges (docs/errors.md)"""


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 4M, 65536)") from None


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line on stdout (last: done or error)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument(
        "--stop-on-hangup",
        action="store_true",
        help="a closed terminal (SIGHUP) stops the run as Ctrl-C does (by default, once "
        "the transfer has started it goes on, and what it would print is dropped)",
    )


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
    _passphrase(r, "restoring an image: its passphrase")
    _target_options(r)
    _choice(r, "restoring an image: ")
    _common(r)


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
    _passphrase(
        s,
        "an image as SOURCE: its passphrase; saving an image: the passphrase to encrypt it with",
    )
    s.add_argument(
        "--new-passphrase",
        help="saving an image from an image: the new one's passphrase (default: "
        "$P2PCLONE_NEW_PASSPHRASE, else the same as --passphrase)",
    )
    _send_options(s)
    _common(s)


def _send_options(s: argparse.ArgumentParser) -> None:
    _source_options(s)
    _mapfile(s)
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
    _passphrase(c, "an image as SOURCE or TARGET: its passphrase")
    _target_options(c)
    _source_options(c)
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
    _common(c)


def _target_options(r: argparse.ArgumentParser) -> None:
    """What a receiving end takes (receive, clone)."""
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
        "--grow",
        nargs="?",
        const=0,
        type=int,
        default=None,
        metavar="N",
        help="onto a larger disk: the largest data partition (or partition N) takes the new "
        "space and the partitions after it (a recovery partition, say) move to the end; its "
        "filesystem is grown with its own tool (ext2/3/4, NTFS, XFS, btrfs); GPT and MBR, "
        "and a file target you made larger first",
    )
    r.add_argument(
        "--proportional",
        action="store_true",
        help="onto a larger disk: every data partition grows in proportion to its size "
        "(Clonezilla's -k1), their filesystems with them",
    )
    r.add_argument(
        "--cut",
        action="store_true",
        help="onto a smaller disk: let the source's data past this disk's end go (its "
        "partitions must fit; without --cut such a clone is refused when anything past "
        "the end is not zero)",
    )
    r.add_argument(
        "--new-ids",
        action="store_true",
        help="give the clone its own IDs: new GPT GUIDs or MBR signature, new filesystem "
        "UUIDs and serials (each filesystem's own tool); /etc/fstab, /etc/crypttab and "
        "GRUB's grub.cfg on the clone are rewritten to name them, and what still names the "
        "old ones is listed (Windows' boot configuration does not follow: docs/cloning.md)",
    )
    r.add_argument(
        "--discard",
        action="store_true",
        help="after the clone, discard (TRIM) the ranges no filesystem of the source uses: "
        "an SSD then knows they are free",
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
    _mapfile(r)


def _numbers(text: str) -> tuple[int, ...]:
    """``1,3`` as (1, 3): partition numbers as the kernel numbers them (sda1, sda3)."""
    try:
        numbers = tuple(int(n) for n in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of partition numbers: write them with commas, as 1,3"
        )
    return tuple(sorted(set(numbers)))


def _choice(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Which partitions to copy (send, clone, receive from an image)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--partitions",
        type=_numbers,
        default=(),
        metavar="N,N",
        help=prefix + "copy only these partitions (numbers as in sda1, sda3: 1,3); the "
        "table is copied as it is, the others' space is left as it was on the target "
        "(zeroed with --exact)",
    )
    g.add_argument(
        "--skip",
        type=_numbers,
        default=(),
        metavar="N,N",
        help=prefix + "copy every partition but these",
    )


def _source_options(s: argparse.ArgumentParser) -> None:
    """What a reading end takes (send, clone)."""
    _choice(s)
    s.add_argument(
        "--exact",
        action="store_true",
        help="copy every byte, free space included (forensics); by default the blocks no "
        "filesystem uses are neither sent nor written",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="a failing source: trim each bad stretch N more times from both ends, "
        "reading its first and last failed sectors again (default 1; 0: never read a "
        "failed sector again in this run)",
    )
    s.add_argument(
        "--scrape",
        action="store_true",
        help="a failing source: also read every sector between a bad stretch's trimmed "
        "ends, once each (GNU ddrescue's scraping; slow on a long bad stretch); by "
        "default they count as unreadable unread, as after ddrescue -n",
    )
    s.add_argument(
        "--read-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a failing source: give up a read that has not answered after this long and "
        "count its range as unreadable (default 10; 0: wait forever)",
    )


def _passphrase(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--passphrase",
        help=f"{what} (default: $P2PCLONE_PASSPHRASE, else asked; an image URL with "
        "?plain=1 needs none); prefer the variable or the prompt: other users of this "
        "machine can see a command line",
    )


def _mapfile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mapfile",
        metavar="FILE",
        help="also write the outcome in GNU ddrescue's mapfile format (unreadable source "
        "ranges as bad sectors), for ddrescuelog and ddrescueview",
    )


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
    _passphrase(im, "the image's passphrase (not for info)")
    _common(im)


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
