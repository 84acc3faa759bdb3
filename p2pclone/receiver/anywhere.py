"""A receiver given no URL: it waits for a sender on every address (announced over
mDNS, so a sender with no URL finds it) and, at the same time, looks for a multicast
sender announcing a group for its code; whichever comes first is the session."""

from __future__ import annotations

import functools
import threading
from typing import Any

import trio

from p2pclone.transports.mdns import browse

from ..errors import UsageError
from ..session import Connected, Done, Notice, Report, Reporter, no_report
from . import receive


async def receive_anywhere(
    target_path: str, *, code: str, report: Reporter = no_report, **options: Any
) -> Done:
    """``receive(target_path, "tcp://", …)``, or, when a multicast sender announces a
    group for ``code``'s nameplate before any sender connects, ``receive(target_path,
    "multicast://GROUP:PORT", …)`` (``options``: the rest of ``receive``'s)."""
    nameplate = code.split("-", 1)[0]
    accepted = trio.Event()
    stopping = threading.Event()  # the browse's, set from the event loop
    outcome: list[Done] = []
    group: list[str] = []

    def watch(event: Report) -> None:
        if isinstance(event, Connected):
            accepted.set()  # a sender is here: no group any more
            stopping.set()
        report(event)

    async with trio.open_nursery() as nursery:

        async def unicast() -> None:
            outcome.append(await receive(target_path, "tcp://", code=code, report=watch, **options))
            nursery.cancel_scope.cancel()

        async def find_group() -> None:
            # One browse for as long as we wait; stopped when a sender connects or the
            # session ends, whichever first (its thread then returns within 50 ms).
            try:
                found = await trio.to_thread.run_sync(
                    functools.partial(browse, float("inf"), nameplate, groups=True, stop=stopping),
                    abandon_on_cancel=True,
                )
            finally:
                stopping.set()
            if len(found) > 1:
                listing = ", ".join(f"{a.group} from {a.host}" for a in found)
                raise UsageError(
                    f"{len(found)} multicast senders announce the code {nameplate}-…: "
                    f"{listing}; give the group you mean: multicast://GROUP"
                )
            if found and not accepted.is_set():
                group.append(found[0].group)
                nursery.cancel_scope.cancel()

        nursery.start_soon(unicast)
        nursery.start_soon(find_group)
    if outcome:
        return outcome[0]
    url = f"multicast://{group[0]}"
    report(Notice(f"joining the multicast group {url}, announced for this code"))
    return await receive(target_path, url, code=code, report=report, **options)
