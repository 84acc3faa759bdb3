"""What the person asked for, as one typed value per side, and who honours what.

The CLI builds a :class:`SendOptions` (``send``, the reading side of ``clone``) or a
:class:`ReceiveOptions` (``receive``, the writing side of ``clone``) once, and the
drivers pass it whole to the far end that does the work: a link's session, an image's
recorder or player, a multicast group.  No keyword list is threaded through the layers,
so mypy sees every option reach the code that reads it.

Every field is an option, and its default means "not given".  Each far end declares
the fields it honours (a link transport in its class, an image and a group beside their
drivers, the sessions below); :func:`refuse_unhonoured` turns a given option that the
far end does not honour into a usage error (exit 2) naming the option and the far end,
before anything is opened.  An option is never silently dropped:
``tests/options/test_table.py`` runs every option against every far end, and each is
either honoured, with an effect it checks, or refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .disks import Target
from .disks.rescue import RescueOptions
from .errors import UsageError
from .protocol import Plan

#: the defaults of a failing source's options (``--retries``, ``--read-timeout``)
_RESCUE = RescueOptions()
#: how long a sender keeps trying a receiver that is not listening yet (tcp://), and
#: how long a multicast group's door stays open, unless --wait says otherwise
DEFAULT_WAIT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOptions:
    """How a source is read and sent (``p2pclone send``, and ``clone``'s reading side)."""

    #: the pairing code the receiver shows (a link or a group)
    code: str = ""
    #: an image's passphrase: the image read as SOURCE, else the image saved
    passphrase: str | None = None
    #: an image copied to another image: the new one's passphrase (default: the same)
    new_passphrase: str | None = None
    #: an SMB share's password (else the URL's, or $P2PCLONE_SMB_PASSWORD)
    password: str | None = None
    chunk_size: int | None = None  # None: the far end's own (1 MiB; 256 KiB over serial)
    #: copy only these partitions (numbered as the kernel numbers them), or all but
    #: ``skip``: the others are not sent (left as they are on the target; zeroed with
    #: ``exact``)
    partitions: tuple[int, ...] = ()
    skip: tuple[int, ...] = ()
    exact: bool = False  # every byte, free space included
    allow_mounted: bool = False  # a source mounted read-write
    retries: int | None = None  # a failing source (None: 1)
    scrape: bool = False
    read_timeout: float | None = None  # seconds (None: 10; 0: wait forever)
    delta: bool = False  # the receiver hashes its target first
    fresh: bool = False  # an image save: start over instead of resuming
    #: bytes/s the link or the image save is held to (None: as fast as it goes)
    limit_rate: float | None = None
    receivers: int | None = None  # a group: start once this many joined (None: 1)
    wait: float | None = None  # tcp: reach a receiver that is late; a group: its door

    @property
    def rescue(self) -> RescueOptions:
        """The failing-source options, with their defaults filled in."""
        return RescueOptions(
            retries=_RESCUE.retries if self.retries is None else self.retries,
            read_timeout=_RESCUE.read_timeout if self.read_timeout is None else self.read_timeout,
            scrape=self.scrape,
        )


#: a target check before anything is written: may raise to refuse the plan (the CLI's
#: question to the operator); not called with ``ReceiveOptions.yes``
Approve = Callable[[Plan, Target], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveOptions:
    """How a clone is received and written (``p2pclone receive``, ``clone``'s writing side)."""

    #: the pairing code (shown to the operator; a link or a group)
    code: str = ""
    #: the passphrase of an image restored from
    passphrase: str | None = None
    password: str | None = None  # an SMB share's password
    #: an image restored: only these partitions, or all but ``skip`` (the others left
    #: as they are on the target); over a link or a group the sender chooses
    partitions: tuple[int, ...] = ()
    skip: tuple[int, ...] = ()
    yes: bool = False  # overwrite without asking
    verify: bool = False
    delta: bool = False  # hash the target first: only chunks that differ are sent
    grow: int | None = None  # a larger disk: 0 grows the largest data partition, N that one
    proportional: bool = False  # a larger disk: every data partition grows in proportion
    cut: bool = False  # a smaller disk: let the source's data past its end go
    new_ids: bool = False  # new table and filesystem IDs, references rewritten
    discard: bool = False  # TRIM what the source's filesystems do not use
    fresh: bool = False  # ignore an interrupted run's journal
    #: bytes/s the link or the image restore is read at (None: as fast as it goes)
    limit_rate: float | None = None
    state_dir: Path | None = None  # where the journal lives (None: the default)
    journal: bool = True  # journal progress so that an interruption resumes


Options = SendOptions | ReceiveOptions

#: how an option is written on the command line, where that is not --FIELD-NAME
_SPELLING = {
    "password": "an SMB password",
    "journal": "journal=False",
}


def flag(name: str) -> str:
    """An option's name as the user wrote it: ``--read-timeout`` for ``read_timeout``."""
    return _SPELLING.get(name, "--" + name.replace("_", "-"))


def given(options: Options) -> list[str]:
    """The options that differ from their defaults (were given), in field order."""
    return [f.name for f in fields(options) if getattr(options, f.name) != f.default]


def option_names(kind: type[SendOptions] | type[ReceiveOptions]) -> frozenset[str]:
    return frozenset(f.name for f in fields(kind))


def refuse_unhonoured(
    options: Options,
    honoured: Iterable[str],
    where: str,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Raise a usage error for the first given option that ``where`` (a far end, as a
    person names it: "serial://", "an image save") does not honour.

    ``hints``: a sentence of advice per option, for the mistakes people make.

    Raises:
        UsageError: naming the option and the far end (exit 2).
    """
    allowed = frozenset(honoured)
    for name in given(options):
        if name not in allowed:
            hint = (hints or {}).get(name) or HINTS.get(name, "")
            raise UsageError(
                f"{flag(name)} does not apply to {where}"
                + (f": {hint}" if hint else ": leave it out")
                + "; nothing was done"
            )


#: advice for an option given where it does not apply
HINTS: dict[str, str] = {
    "code": "an image has no pairing code; its passphrase is --passphrase "
    "(or $P2PCLONE_PASSPHRASE)",
    "passphrase": "only an image has a passphrase; a link or a group pairs with its "
    "code ($P2PCLONE_CODE, or the prompt)",
    "new_passphrase": "it sets the passphrase of an image saved from another image",
    "fresh": "on the sender it starts an interrupted image save over; a receiver "
    "starts over with its own --fresh",
    "receivers": "it is the number of receivers a multicast group waits for",
    "wait": "it is how long tcp:// keeps trying a receiver that is not listening yet, "
    "or how long a multicast group's door stays open",
    "exact": "it is about reading a disk; an image holds what was saved",
    "allow_mounted": "an image is never mounted",
    "retries": "it is about reading a failing disk; an image is not a disk",
    "scrape": "it is about reading a failing disk; an image is not a disk",
    "read_timeout": "it is about reading a failing disk; an image is not a disk",
    "limit_rate": "it holds a TCP link or an image to a rate; a serial line's rate is "
    "its ?baud=, a multicast group's is rate= in its URL (multicast://GROUP?rate=100m), "
    "and a clone on one machine crosses no network",
    "cut": "a multicast group sends every member the same bytes: a smaller target needs "
    "a unicast clone (tcp://)",
    "partitions": "the sender chooses what it sends: give --partitions to p2pclone send "
    "(a receiver chooses only when it restores an image)",
    "skip": "the sender chooses what it sends: give --skip to p2pclone send (a receiver "
    "chooses only when it restores an image)",
}


#: What every session honours, whatever carries it (sender/ and receiver/ read them).
SENDING_SESSION = frozenset({"chunk_size", "delta"})
RECEIVING_SESSION = frozenset(
    {
        "yes",
        "verify",
        "delta",
        "grow",
        "proportional",
        "cut",
        "new_ids",
        "discard",
        "fresh",
        "state_dir",
        "journal",
    }
)
#: What reading a disk or a file honours, and reading an image (sender/source.py):
#: either is read whole or by the partitions chosen (sender/select.py).
CHOOSING = frozenset({"partitions", "skip"})
DISK_SOURCE = CHOOSING | {"exact", "allow_mounted", "retries", "scrape", "read_timeout"}
IMAGE_SOURCE = CHOOSING | {"passphrase", "password"}


__all__ = [
    "CHOOSING",
    "DEFAULT_WAIT",
    "DISK_SOURCE",
    "HINTS",
    "IMAGE_SOURCE",
    "RECEIVING_SESSION",
    "SENDING_SESSION",
    "Approve",
    "Options",
    "ReceiveOptions",
    "SendOptions",
    "flag",
    "given",
    "option_names",
    "refuse_unhonoured",
]
