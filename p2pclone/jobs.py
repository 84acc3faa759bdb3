"""The jobs a person runs: ``send`` a source to a far end, ``receive`` from one.

Each job does the same three things, in this order:

1. parse what it is given once (p2pclone/endpoints.py): the SOURCE or TARGET, and the
   URL's far end — a link, an image or a multicast group;
2. refuse any option given that this source and far end do not honour (usage error,
   exit 2, naming both), before anything is opened: an option is never dropped
   (p2pclone/options.py says who honours what);
3. open the far end with one ``match`` over its kind, then run the session: the
   sending or receiving session over a link's stream or an image's in-process pipe,
   or the multicast driver for a group.

A receiver given ``tcp://`` alone (the CLI's default) also looks for a multicast
group announced for its code: p2pclone/anywhere.py.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import assert_never

import trio

from p2pclone.transports import Dial, LinkListener, Listen

from .codes import guesses_allowed
from .disks import Target
from .endpoints import Disk, FarEnd, Group, Image, Link, Place, far_end, place
from .errors import IntegrityError, UsageError, WrongCode
from .image.link import (
    RESTORE_HONOURS,
    SAVE_HONOURS,
    PlayerListener,
    open_recording,
)
from .image.reader import ImageSource
from .journal import check_state_dir, default_state_dir
from .multicast.driver import GROUP_RECEIVE, GROUP_SEND, receive_group, send_group
from .options import (
    DEFAULT_WAIT,
    DISK_SOURCE,
    IMAGE_SOURCE,
    RECEIVING_SESSION,
    SENDING_SESSION,
    Approve,
    ReceiveOptions,
    SendOptions,
    refuse_unhonoured,
)
from .pacing import Paced
from .protocol import PROTOCOL_VERSION
from .receiver import approve_all, receive_stream
from .sender import DEFAULT_CHUNK_SIZE, check_chunk_size, send_stream
from .sender.select import choose_partitions
from .sender.source import open_source
from .session import Connected, Done, GroupReporter, Listening, Notice, Reporter, no_report


def nameplate(code: str) -> str:
    """The number of a pairing code (``7`` of ``7-guitar-remind``): all that is ever
    announced or looked for on the network, never the words."""
    return code.split("-", 1)[0]


# -- who honours what -------------------------------------------------------------------


def send_honours(origin: Place, end: FarEnd) -> frozenset[str]:
    """The options a send from ``origin`` to ``end`` honours (the rest are refused)."""
    match origin:
        case Disk():
            reading = DISK_SOURCE
        case Image():
            reading = IMAGE_SOURCE if origin.scheme == "smb" else IMAGE_SOURCE - {"password"}
        case _:
            assert_never(origin)
    match end:
        case Link(transport=transport):
            return reading | SENDING_SESSION | {"code"} | transport.honours
        case Image():
            saving = SAVE_HONOURS if end.scheme == "smb" else SAVE_HONOURS - {"password"}
            both = {"new_passphrase"} if isinstance(origin, Image) else set()
            return reading | saving | both
        case Group():
            return reading | GROUP_SEND
        case _:
            assert_never(end)


def receive_honours(end: FarEnd) -> frozenset[str]:
    """The options a receive from ``end`` honours."""
    match end:
        case Link(transport=transport):
            return RECEIVING_SESSION | {"code"} | transport.receive_honours
        case Image():
            return RESTORE_HONOURS if end.scheme == "smb" else RESTORE_HONOURS - {"password"}
        case Group():
            return GROUP_RECEIVE
        case _:
            assert_never(end)


def check_send(origin: Place, end: FarEnd, options: SendOptions) -> None:
    """Raises UsageError for an option given that this send does not honour."""
    refuse_unhonoured(
        options, send_honours(origin, end), f"a send from {origin.name} to {end.name}"
    )


def check_receive(end: FarEnd, options: ReceiveOptions) -> None:
    """Raises UsageError for an option given that this receive does not honour."""
    refuse_unhonoured(options, receive_honours(end), f"a receive from {end.name}")


# -- send ----------------------------------------------------------------------------------


async def send(
    source: str,
    url: str,
    options: SendOptions,
    *,
    report: Reporter = no_report,
    group_report: GroupReporter | None = None,
) -> Done:
    """Send ``source`` (a disk, a file or an image URL) to the far end at ``url``; return
    the final statistics.  ``group_report``: each multicast member's state.

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    origin, end = place(source), far_end(url)
    check_send(origin, end, options)
    match end:
        case Group(group=group):
            return await send_group(origin, group, options, report, group_report)
        case Link(transport=transport):
            # The transport's own default fits its speed (serial: small chunks, so
            # progress and resume are not a minute apart); an explicit size wins.
            chunk_size = options.chunk_size or transport.chunk_size or DEFAULT_CHUNK_SIZE
        case Image():
            chunk_size = options.chunk_size or DEFAULT_CHUNK_SIZE
        case _:
            assert_never(end)
    check_chunk_size(chunk_size)
    source_, chunk_size = await open_source(origin, chunk_size, options, report)
    try:
        stream, shown, code = await _open_receiving_end(end, origin, options, report)
        if options.limit_rate:
            stream = Paced(stream, options.limit_rate)
        report(Connected(shown))
        done = await send_stream(
            stream,
            source_,
            options,
            code=code,
            chunk_size=chunk_size,
            url=shown,
            report=report,
            seal=isinstance(end, Link),  # an image's recorder is in this process
        )
        if isinstance(source_, ImageSource) and (note := source_.salvage_note()):
            raise IntegrityError(note, code="salvaged")
        return done
    finally:
        source_.close()


async def _open_receiving_end(
    end: Link | Image, origin: Place, options: SendOptions, report: Reporter
) -> tuple[trio.abc.Stream, str, str]:
    """The stream to the far end, its URL as shown (the address reached; an image's
    without a password), and the code to pair with it."""
    match end:
        case Link(transport=transport):
            dial = Dial(
                nameplate=nameplate(options.code),
                wait=DEFAULT_WAIT if options.wait is None else options.wait,
                notice=lambda sentence: report(Notice(sentence)),
            )
            stream = await transport.connect(dial)
            return stream, transport.url, options.code
        case Image():
            passphrase = options.passphrase
            if isinstance(origin, Image):
                passphrase = options.new_passphrase or options.passphrase
            shown, stream, code = await open_recording(
                end,
                passphrase=passphrase or "",
                password=options.password or end.password,
                fresh=options.fresh,
            )
            return stream, shown, code
        case _:
            assert_never(end)


# -- receive -------------------------------------------------------------------------------


async def receive(
    target: str,
    url: str,
    options: ReceiveOptions,
    *,
    report: Reporter = no_report,
    approve: Approve = approve_all,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> Done:
    """Receive one clone from the far end at ``url`` into ``target`` (a block device or a
    file); return the statistics.  ``task_status.started()`` gets the URL listened on
    (with the real port).  ``approve(plan, target)`` may raise to refuse the plan,
    before anything is written (not called with ``options.yes``).

    Raises:
        P2PCloneError: any failure, with a user-facing sentence and exit code.
    """
    end = far_end(url)
    _target_is_a_disk(target)
    check_receive(end, options)
    if options.journal:  # before listening: a sender should not connect only to hear of it
        await trio.to_thread.run_sync(check_state_dir, options.state_dir or default_state_dir())
    match end:
        case Group(group=group):
            return await receive_group(target, group, options, report, approve, task_status)
        case Link() | Image():
            pass
        case _:
            assert_never(end)
    disk = await trio.to_thread.run_sync(Target.open, target)
    typos = Typos(options.code if isinstance(end, Link) else "", report)
    try:
        while True:
            listener = await _open_sending_end(end, disk, options, report)
            try:
                # An image's passphrase is nobody's business on the screen.
                report(Listening(listener.url, options.code if isinstance(end, Link) else ""))
                if not typos.failed:
                    task_status.started(listener.url)
                stream = await listener.accept()
                if options.limit_rate:  # read at the rate: TCP's flow control holds the sender
                    stream = Paced(stream, options.limit_rate, read=True)
                shown = listener.url  # the link by its real address from now on
            finally:
                await listener.aclose()
            report(Connected(shown))
            with typos.another_try():
                done = await receive_stream(
                    stream,
                    disk,
                    options,
                    code=listener.code if isinstance(listener, PlayerListener) else options.code,
                    url=shown,
                    report=report,
                    approve=approve,
                    seal=isinstance(end, Link),
                )
                if listener.caveat:
                    raise IntegrityError(listener.caveat, code="salvaged")
                return done
    finally:
        disk.close()


async def _open_sending_end(
    end: Link | Image, target: Target, options: ReceiveOptions, report: Reporter
) -> LinkListener:
    match end:
        case Link(transport=transport):
            return await transport.listen(
                Listen(
                    nameplate=nameplate(options.code),
                    size=target.size,
                    version=str(PROTOCOL_VERSION),
                    notice=lambda sentence: report(Notice(sentence)),
                )
            )
        case Image():
            # An image's player plays the sender's part in this process.
            return PlayerListener(
                end,
                passphrase=options.passphrase or "",
                password=options.password or end.password,
                play=_play,
                choose=functools.partial(
                    choose_partitions, partitions=options.partitions, skip=options.skip, zero=False
                ),
            )
        case _:
            assert_never(end)


async def _play(stream: trio.abc.Stream, source: ImageSource, url: str, code: str) -> None:
    """An image's player: the sending session, reading the image."""
    await send_stream(
        stream,
        source,
        SendOptions(),
        code=code,
        chunk_size=source.chunk_size,
        url=url,
        seal=False,
    )


#: failed pairings a receiver lets a sender make (typos), within what its code can
#: afford against guessing (codes.guesses_allowed)
TYPO_TRIES = 3


class Typos:
    """A wrong code is a typo far more often than an attack: a receiver takes another
    try, with the same code, while ``codes.guesses_allowed`` lets it (at most
    TYPO_TRIES failed pairings; a weak code, or an image's: one)."""

    def __init__(self, code: str, report: Reporter) -> None:
        self.allowed = guesses_allowed(code, TYPO_TRIES) if code else 1
        self.failed = 0
        self.report = report

    @contextlib.contextmanager
    def another_try(self) -> Iterator[None]:
        """Around one session: a wrong code with tries left is a notice, and the
        receiver listens again; the last one is raised, saying so."""
        try:
            yield
        except WrongCode as exc:
            self.failed += 1
            left = self.allowed - self.failed
            if left <= 0:
                raise WrongCode(
                    f"{exc.message}; that was the last try this code allows (against "
                    "guessing): start the receiver again for a new code"
                ) from None
            self.report(Notice(
                f"a sender gave a wrong code (a typo?); still listening with the same "
                f"code for {left} more tr{'y' if left == 1 else 'ies'}"
            ))  # fmt: skip


def _target_is_a_disk(target: str) -> None:
    if isinstance(place(target), Image):
        raise UsageError(
            f"the TARGET {target} is an image URL: a receiver writes a disk or a file; to "
            "save a clone as an image, give the image as the sender's URL "
            "(p2pclone send SOURCE file:///PATH.p2pc)"
        )


__all__ = [
    "check_receive",
    "check_send",
    "nameplate",
    "receive",
    "receive_honours",
    "send",
    "send_honours",
]
