"""What stops a run: the signals a job is run under (commands._run), and the one
sentence a stopped run ends with (docs/errors.md, "Signals")."""

from __future__ import annotations

import argparse
import signal

import trio

from ..errors import TransportError
from .output import Output

#: the signals that stop a run (SIGHUP only before the transfer starts, by default)
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def watch_signals(
    scope: trio.CancelScope, stopped_by: list[int], out: Output, args: argparse.Namespace
) -> None:
    with trio.open_signal_receiver(*STOPPING) as signals:
        async for number in signals:
            if number == signal.SIGHUP and out.started and not args.stop_on_hangup:
                out.hung_up()  # the terminal is gone: the job goes on, unseen
                continue
            stopped_by.append(number)
            scope.cancel()  # the job unwinds: the receiver commits its journal
            return


def interrupted(args: argparse.Namespace, stopped_by: list[int], planned: bool) -> TransportError:
    """The sentence of a run stopped by a signal; ``planned``: a plan was accepted (a
    target may hold part of a clone), else nothing was written."""
    again = "run the same command again" if args.command == "clone" else "run both sides again"
    why: dict[int, str] = {signal.SIGTERM: " (SIGTERM)", signal.SIGHUP: " (the terminal closed)"}
    how = why.get(stopped_by[0] if stopped_by else signal.SIGINT, "")
    if not planned:
        return TransportError(
            f"interrupted{how} before any transfer began: nothing was written", code="interrupted"
        )
    return TransportError(
        f"interrupted{how}: the transfer was stopped and the target is incomplete; {again} "
        "(what was written is kept and not sent again)",
        code="interrupted",
    )


__all__ = ["STOPPING", "interrupted", "watch_signals"]
