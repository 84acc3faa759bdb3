"""One run of the option table (test_table.py): a sender and its far end, for real.

A :class:`Spec` says what to run: which far end (a link, an image, a group, or
``clone``), the source, the options of each side, and a few twists (a receiver that
starts late, a question that refuses).  :func:`run` runs it in this process and returns
an :class:`Outcome`: each side's done line or error, and the group's member states.

A multicast run needs a network where the group goes somewhere: the table runs it in a
network namespace of its own (loopback with multicast on), through
``python -m tests.options.run`` with the spec as JSON on stdin and the outcome as JSON
on stdout.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import trio

from p2pclone.clone import clone
from p2pclone.errors import P2PCloneError, SafetyError
from p2pclone.jobs import receive, send
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import Done, GroupProgress, Notice, Update, pick_error

CODE = "3-option-table"
PASSPHRASE = "table passphrase"


@dataclass
class Spec:
    far: str  # tcp, serial, memory, file, smb, multicast, clone
    side: str  # "send" or "receive": whose options the cell is about
    source: str  # a path, or an image URL
    targets: list[str]  # one per receiver (an image URL for a save)
    send: dict[str, Any] = field(default_factory=dict)  # SendOptions fields
    receive: dict[str, Any] = field(default_factory=dict)  # ReceiveOptions fields
    url: str = ""  # the far end's URL (tcp: filled in by the receiver; serial: the pty)
    rx_url: str = ""  # where the receiver listens, when not ``url``
    late: float = 0.0  # the receivers start this long after the sender
    refuse: bool = False  # the receiver's question refuses the plan
    seconds: float = 60.0  # the whole run's limit


@dataclass
class Outcome:
    tx: dict[str, Any] | None = None  # Done's fields, or {"error": …, "exit": …}
    rx: list[dict[str, Any] | None] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # "name state" of a group's members
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def _timed(self, started: float) -> Outcome:
        self.seconds = trio.current_time() - started
        return self

    @staticmethod
    def of(result: Done | BaseException | None) -> dict[str, Any] | None:
        if result is None:
            return None
        if isinstance(result, Done):
            return asdict(result)
        err = pick_error(result)
        if isinstance(err, P2PCloneError):
            return {"error": type(err).__name__, "message": err.message, "exit": err.exit_code}
        return {"error": type(err).__name__, "message": repr(err), "exit": 1}


def _options(kind: type[SendOptions] | type[ReceiveOptions], given: dict[str, Any]) -> Any:
    names = {f.name for f in fields(kind)}
    values = {k: (Path(v) if k == "state_dir" and v else v) for k, v in given.items()}
    assert set(values) <= names, set(values) - names
    return kind(**values)


def _refusing(plan: object, target: object) -> None:
    raise SafetyError("the operator said no (the table's question)")


async def run(spec: Spec) -> Outcome:
    out = Outcome()
    sending: SendOptions = _options(SendOptions, spec.send)
    receiving: ReceiveOptions = _options(ReceiveOptions, spec.receive)
    approve = _refusing if spec.refuse else (lambda plan, target: None)

    def note(event: Update) -> None:
        if isinstance(event, Notice):
            out.notes.append(event.message)

    def member(progress: GroupProgress) -> None:
        out.members.append(f"{progress.name} {progress.state}")

    async def tx() -> None:
        try:
            if spec.far == "clone":
                done = await clone(
                    spec.source, spec.targets[0], sending, receiving, report=note, approve=approve
                )
            else:
                done = await send(spec.source, spec.url, sending, report=note, group_report=member)
            out.tx = Outcome.of(done)
        except BaseException as exc:  # noqa: BLE001 - the outcome is the test's to judge
            out.tx = Outcome.of(exc)

    async def rx(k: int, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            done = await receive(
                spec.targets[k],
                spec.rx_url or spec.url,
                receiving,
                report=note,
                approve=approve,
                task_status=task_status,
            )
            out.rx[k] = Outcome.of(done)
        except BaseException as exc:  # noqa: BLE001
            out.rx[k] = Outcome.of(exc)

    started = trio.current_time()
    sent = trio.Event()

    async def sender() -> None:
        await tx()
        sent.set()

    with trio.move_on_after(spec.seconds):
        async with trio.open_nursery() as nursery:
            if spec.far == "clone" or (spec.far in ("file", "smb") and spec.side == "send"):
                await tx()  # no receiver: the far end is the image, or this process
                return out._timed(started)
            if spec.far in ("file", "smb"):
                out.rx = [None]
                await rx(0)  # a restore: the image is the sender
                return out._timed(started)
            out.rx = [None] * len(spec.targets)
            if spec.late:
                nursery.start_soon(sender)
                await trio.sleep(spec.late)
            for k in range(len(spec.targets)):
                url = await nursery.start(rx, k)
                if spec.far == "tcp" and not spec.url:
                    spec.url = url.replace("0.0.0.0", "127.0.0.1")
            if not spec.late:
                nursery.start_soon(sender)
            await sent.wait()
            if out.tx and "error" in out.tx:
                # A sender that failed leaves its receivers nobody to talk to: what they
                # say within a few seconds is their outcome, then they are stopped.
                with trio.move_on_after(3):
                    while None in out.rx:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    return out._timed(started)


def main() -> None:
    """Run the spec given as JSON on stdin; print the outcome as JSON."""
    spec = Spec(**json.load(sys.stdin))
    print(json.dumps(asdict(trio.run(run, spec))))


if __name__ == "__main__":
    main()
