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

from collections.abc import Awaitable, Callable

import trio

from p2pclone.transports import LinkListener
from p2pclone.transports.pipe import pipe_pair

from .reader import ImageSource
from .recorder import Recorder
from .store import split_password
from .urls import check_url

#: sends ``source`` over a stream: the sending driver's session (``send_stream``)
Play = Callable[[trio.abc.Stream, ImageSource, str, str], Awaitable[object]]


def clean_url(url: str) -> tuple[str, str | None]:
    """Check an image URL (UsageError now, before anything is opened) and split off a
    password it holds: it is used, but never shown."""
    check_url(url)
    return split_password(url)


async def open_recording(
    url: str, *, code: str, password: str | None, fresh: bool
) -> tuple[str, trio.abc.Stream]:
    """``send SOURCE IMAGE-URL``: start a recorder for the image at ``url`` and return the
    URL to show (without a password) and the sender's end of the pipe to it.

    The image is opened here, in the sender's task: an unreachable share or a wrong
    passphrase for an image to resume is the sender's own error.
    """
    url, in_url = clean_url(url)
    recorder = await trio.to_thread.run_sync(Recorder.open, url, code, password or in_url, fresh)
    ours, theirs = pipe_pair()
    trio.lowlevel.spawn_system_task(recorder.run, theirs)
    return recorder.url, ours


class PlayerListener(LinkListener):
    """``receive TARGET IMAGE-URL``: the 'sender' is a player reading the image with
    ``play`` (the sending driver's session, passed in: the image package does not
    import the drivers)."""

    def __init__(self, url: str, *, code: str, password: str | None, play: Play) -> None:
        self.url, in_url = clean_url(url)
        self.code = code
        self.password = password or in_url
        self.play = play

    async def accept(self) -> trio.abc.Stream:
        # Opened here, in the receiver's task: a missing image or a wrong passphrase
        # is the receiver's own error, before anything is written.
        source = await trio.to_thread.run_sync(ImageSource.open, self.url, self.code, self.password)
        self.caveat = source.salvage_note()
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
