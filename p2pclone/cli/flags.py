"""The option groups several subcommands share (parser.py builds the subcommands):
what every command takes, what a reading and a writing end take, and their types."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 4M, 65536)") from None


def rate(text: str) -> float:
    from ..pacing import parse_limit

    try:
        return parse_limit(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def limit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit-rate",
        type=rate,
        default=None,
        metavar="RATE",
        help="hold a tcp:// link or an image save or restore to RATE: bytes per second as "
        "curl writes them (500K, 10M, 1G) or bits as a network is sold (80mbit); for a "
        "clone over a shared office LAN during work hours",
    )


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line on stdout (last: done or error)",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help="also write the whole run to FILE, one JSON line per event as --json prints "
        "them, each with its time (appended: one file can hold a day's runs)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument(
        "--stop-on-hangup",
        action="store_true",
        help="a closed terminal (SIGHUP) stops the run as Ctrl-C does (by default, once "
        "the transfer has started it goes on, and what it would print is dropped)",
    )


def target_options(r: argparse.ArgumentParser) -> None:
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
    mapfile(r)


def numbers(text: str) -> tuple[int, ...]:
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


def choice(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Which partitions to copy (send, clone, receive from an image)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--partitions",
        type=numbers,
        default=(),
        metavar="N,N",
        help=prefix + "copy only these partitions (numbers as in sda1, sda3: 1,3); the "
        "table is copied as it is, the others' space is left as it was on the target "
        "(zeroed with --exact)",
    )
    g.add_argument(
        "--skip",
        type=numbers,
        default=(),
        metavar="N,N",
        help=prefix + "copy every partition but these",
    )


def source_options(s: argparse.ArgumentParser) -> None:
    """What a reading end takes (send, clone)."""
    choice(s)
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


def passphrase(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--passphrase",
        help=f"{what} (default: $P2PCLONE_PASSPHRASE, else asked; an image URL with "
        "?plain=1 needs none); prefer the variable or the prompt: other users of this "
        "machine can see a command line",
    )


def mapfile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mapfile",
        metavar="FILE",
        help="also write the outcome in GNU ddrescue's mapfile format (unreadable source "
        "ranges as bad sectors), for ddrescuelog and ddrescueview",
    )


__all__ = [
    "choice",
    "common",
    "limit",
    "mapfile",
    "numbers",
    "parse_size",
    "passphrase",
    "rate",
    "source_options",
    "target_options",
]
