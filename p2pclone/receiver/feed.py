"""Another way a session's chunks may reach a receiver: the interface a multicast
group's data plane plugs into.

The unicast data phase (:mod:`p2pclone.receiver.data`) handles the data frames of
docs/protocol.md itself and hands every other frame to its :class:`Feed`, if it has one
(without one, such a frame is a protocol error).  The feed answers through the
:class:`Sink` the data phase gives it: chunks it was told of (with the hashes the
receiver's own authenticated connection gave), chunks that arrived by the feed's way
(checked against those hashes before anything is written, and fetched again over the
connection if they fail), and frames to send back.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..protocol import Chunk, Event


class Reconnect(Exception):  # noqa: N818 - a request, not an error
    """The feed ends this session (a group evicted this receiver): the caller connects
    again for an ordinary session, which resumes from the journal."""


class Sink(Protocol):
    """What the data phase offers a feed."""

    def promised(self, hashes: dict[int, bytes]) -> None:
        """These chunks (index -> hash, in index order) will arrive through the feed."""

    async def deliver(self, chunk: Chunk) -> None:
        """A chunk that arrived through the feed: written once its hash matches the
        one promised; one that does not is fetched again over the connection."""

    def fetch_again(self, wanted: dict[int, bytes]) -> None:
        """These promised chunks never arrived whole: fetch them over the connection."""

    async def send(self, event: Event) -> None:
        """A frame back to the sender, over the connection."""

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` beside the data phase (cancelled when it ends)."""


class Feed(abc.ABC):
    """A second data path, attached to one receiving session."""

    @property
    def bytes_in(self) -> int:
        """Bytes that arrived through the feed (counted in the session's wire bytes)."""
        return 0

    @abc.abstractmethod
    async def handle(self, frame: Event, sink: Sink) -> None:
        """A frame that is not unicast data.

        Raises:
            RemoteProtocolError: a frame this feed does not know either.
            Reconnect: the sender ends this session for another (an EVICT).
        """

    @abc.abstractmethod
    async def end(self, sink: Sink) -> None:
        """END arrived: hand over what the feed holds, then stop.

        Raises:
            IntegrityError: something promised never arrived and cannot be fetched.
        """
