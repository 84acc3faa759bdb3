"""A stream held to a rate: ``--limit-rate`` (a clone over a shared office LAN during
work hours), and a multicast sender's unicast finishes, which keep to the group's
``rate=``.

:class:`Paced` wraps any trio stream; ``send_all`` goes out in pieces of at most 50 ms
worth, each when a token bucket (protocol/dataplane.py's :class:`RateGovernor`) allows
it; ``receive_some`` (``read=True``) takes at most a piece at a time and waits for its
tokens, so a receiver that limits its rate holds the sender back through TCP's own
flow control.  Progress still follows what the far end has (session.py: the inner
stream's count, through ``inner``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .errors import UsageError
from .protocol.dataplane import RateGovernor

#: the clock a pacer reads: trio's, so a test's mock clock drives it
Clock = Callable[[], float]

#: how much a bucket holds: a burst of this many seconds' worth
BURST = 0.05


class Paced(trio.abc.HalfCloseableStream):
    """``inner`` with its sending (and, with ``read``, its receiving) held to ``rate``
    bytes per second."""

    def __init__(
        self,
        inner: trio.abc.Stream,
        rate: float,
        clock: Clock = trio.current_time,
        *,
        read: bool = False,
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.read = read
        self.bucket = RateGovernor(rate=rate, limit=rate)
        self.piece = max(1024, min(64 * 1024, int(rate * BURST)))  # fits the burst

    async def _tokens(self, n: int) -> None:
        while self.bucket.allowance(self.clock(), burst=BURST) < n:
            await trio.sleep(self.bucket.wait_for(n))
        self.bucket.spend(n)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            piece = view[: self.piece]
            if not self.read:
                await self._tokens(len(piece))
            await self.inner.send_all(piece)
            view = view[len(piece) :]

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self.read:
            return await self.inner.receive_some(max_bytes)
        got = await self.inner.receive_some(min(max_bytes or self.piece, self.piece))
        await self._tokens(len(got))
        return got

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


_BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DECIMAL = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_limit(text: str) -> float:
    """``--limit-rate``: bytes per second, as curl writes them (``500K``, ``10M``,
    ``1G``: KiB, MiB, GiB; ``10MiB``, ``10MB/s`` alike), or bits per second as a
    network is sold (``80mbit``, ``80Mbit/s``, ``80mbps``: decimal).

    Raises:
        UsageError: not a rate, or not above zero.
    """
    t = text.strip().lower().replace(" ", "").removesuffix("/s")
    bits = t.endswith(("bit", "bps"))
    t = t[:-3] if bits else t.removesuffix("ib").removesuffix("b")
    prefix = t[-1:] if t[-1:] in "kmg" else ""
    number = t[: len(t) - len(prefix)]
    try:
        value = float(number) * (_DECIMAL if bits else _BINARY)[prefix] / (8 if bits else 1)
    except ValueError:
        raise UsageError(
            f"--limit-rate {text!r} is not a rate: write bytes per second as curl does "
            "(500K, 10M, 1G) or bits per second as a network is sold (80mbit)"
        ) from None
    if not value > 0:
        raise UsageError(f"--limit-rate {text!r}: the rate must be above zero")
    return value


__all__ = ["Paced", "parse_limit"]
