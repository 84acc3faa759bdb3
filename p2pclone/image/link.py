"""An image as the far end of a session: the drivers' link to a recorder or a player.

"The stream is the image": ``send SOURCE file:///mnt/nas/pc1.p2pc`` (or ``smb://…``)
runs the ordinary sender against an image *recorder* in this process, over an
in-process pipe; the recorder plays the receiver's part of the protocol and keeps what
it is sent in the image.  ``receive TARGET file:///…`` runs the ordinary receiver
against an image *player*, which plays the sender's part from the image.  Pairing,
resume, verification and every safety check are the same code as for a live clone.

Both ends are in this process, so the session is not sealed after pairing (see
:class:`~p2pclone.protocol.Connection`): the image has its own encryption.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import trio

from p2pclone.transports import LinkListener
from p2pclone.transports.pipe import pipe_pair

from ..options import CHOOSING, RECEIVING_SESSION
from .reader import ImageSource
from .recorder import Recorder
from .urls import Image

#: sends ``source`` over a stream, paired with the code given: the sending driver's
#: session (``send_stream``), passed in (the image package does not import the drivers)
Play = Callable[[trio.abc.Stream, ImageSource, str, str], Awaitable[object]]

#: What an image save honours besides reading its source: the recorder keeps the
#: chunk size and resumes (``fresh`` starts over); it always sends only the chunks
#: that changed since the last save to it, so ``delta`` has nothing to add.
SAVE_HONOURS = frozenset({"chunk_size", "fresh", "passphrase", "password", "limit_rate"})
#: What a restore honours: all of a receiving session's options, the image's own, and
#: which of its partitions to restore (the player reads them: it is this process).
RESTORE_HONOURS = RECEIVING_SESSION | CHOOSING | {"passphrase", "password", "limit_rate"}


def _pairing_code() -> str:
    """Pairs the two ends of an in-process pipe; shown to nobody."""
    return secrets.token_hex(16)


async def open_recording(
    image: Image, *, passphrase: str, password: str | None, fresh: bool
) -> tuple[str, trio.abc.Stream, str]:
    """``send SOURCE IMAGE-URL``: start a recorder for ``image`` and return the URL to
    show (without a password), the sender's end of the pipe to it, and the code that
    pairs with it.

    The image is opened here, in the sender's task: an unreachable share or a wrong
    passphrase for an image to resume is the sender's own error.
    """
    recorder = await trio.to_thread.run_sync(Recorder.open, image.url, passphrase, password, fresh)
    ours, theirs = pipe_pair()
    code = _pairing_code()
    trio.lowlevel.spawn_system_task(recorder.run, theirs, code)
    return recorder.url, ours, code


class PlayerListener(LinkListener):
    """``receive TARGET IMAGE-URL``: the 'sender' is a player reading the image with
    ``play`` (the sending driver's session, passed in: the image package does not
    import the drivers)."""

    def __init__(
        self,
        image: Image,
        *,
        passphrase: str,
        password: str | None,
        play: Play,
        choose: Callable[[ImageSource], None] | None = None,
    ) -> None:
        self.url = image.url
        self.passphrase = passphrase
        self.password = password
        self.play = play
        #: narrows the image to the partitions to restore (``--partitions``), or refuses
        self.choose = choose
        #: the code the receiving session pairs with
        self.code = _pairing_code()

    async def accept(self) -> trio.abc.Stream:
        # Opened here, in the receiver's task: a missing image or a wrong passphrase
        # is the receiver's own error, before anything is written.
        source = await trio.to_thread.run_sync(
            ImageSource.open, self.url, self.passphrase, self.password
        )
        self.caveat = source.salvage_note()
        if self.choose is not None:
            try:
                self.choose(source)
            except BaseException:
                source.close()
                raise
        ours, theirs = pipe_pair()
        trio.lowlevel.spawn_system_task(self._play, theirs, source)
        return ours

    async def _play(self, stream: trio.abc.Stream, source: ImageSource) -> None:
        """A system task: never raises; a failure reaches the receiver as an ERROR
        frame, which the sending session sends."""
        try:
            await self.play(stream, source, self.url, self.code)
        except trio.Cancelled:
            raise
        except BaseException:  # noqa: BLE001, S110 - the session told the receiver
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(source.close)

    async def aclose(self) -> None:
        pass
