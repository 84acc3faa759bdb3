"""A multicast sender announced over mDNS by its code's nameplate, so a receiver given
no URL at all can join its group (transports/mdns.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from p2pclone.transports.mdns import Announcement
from p2pclone.transports.multicast import MulticastGroup

from ..protocol import PROTOCOL_VERSION


@contextlib.asynccontextmanager
async def announced(
    transport: MulticastGroup, code: str, port: int, size: int
) -> AsyncIterator[None]:
    """While the body runs: the group (GROUP:PORT) and its control ``port``, announced
    under the nameplate of ``code``.  Where it cannot be announced, nothing more."""
    announcement: Announcement | None = Announcement(
        code.split("-", 1)[0], port, size, str(PROTOCOL_VERSION), group=transport.where
    )
    try:
        await trio.to_thread.run_sync(announcement.start)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - receivers given the URL join all the same
        announcement = None
    try:
        yield
    finally:
        if announcement is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await trio.to_thread.run_sync(announcement.stop)
