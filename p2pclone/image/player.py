"""The image player: the sender's side of a session, read from an image.

``p2pclone receive TARGET file:///…/pc1.p2pc`` runs the ordinary receiver; its peer is
this player, in the same process, over an in-memory stream: the ordinary sender with
an :class:`~p2pclone.image.reader.ImageSource` for a disk.  So a restore gets the
receiver's every check (target safety, per-chunk BLAKE3, root hash, ``--verify``) and
its journal: an interrupted restore resumes.
"""

from __future__ import annotations

import trio

from .reader import ImageSource


async def play(stream: trio.abc.Stream, source: ImageSource, url: str, code: str) -> None:
    """Send ``source`` over ``stream`` (a system task: never raises; a failure reaches
    the receiver as an ERROR frame, which send_stream sends)."""
    from ..sender import send_stream

    try:
        await send_stream(
            stream, source, code=code, url=url, chunk_size=source.chunk_size, seal=False
        )
    except trio.Cancelled:
        raise
    except BaseException:  # noqa: BLE001, S110 - send_stream told the receiver
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(source.close)
