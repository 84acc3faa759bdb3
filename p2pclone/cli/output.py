"""Rendering driver reports: JSON lines, a live ``rich`` progress display, or plain lines.

Drivers report through a callback (:class:`Output` is that callback); errors leave as
one sentence on stderr (and a JSON line with ``--json``).

Output is best-effort: the screen never stops a clone.  A write to a closed pipe
(``p2pclone … --json | head -1``) or a terminal that is gone fails once, quietly; from
then on that stream is written to no more (it is pointed at /dev/null, so that
Python's own flush at exit cannot fail either), and the job goes on to its own exit
code.  Every string shown passes :func:`~p2pclone.errors.printable` (and
:func:`~p2pclone.errors.redact`): it may come from a peer, a disk or the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO, assert_never

from ..errors import P2PCloneError, printable, redact
from ..session import (
    Connected,
    Done,
    Listening,
    Mapped,
    Notice,
    Planned,
    Progress,
    Rescuing,
    Update,
    Verifying,
)
from ..units import human_bytes
from ..volumes.layout import left_out
from ..volumes.table import SCHEME_NAMES


class Output:
    """Renders driver reports: JSON lines, a live rich display, or quiet text."""

    def __init__(self, *, json_mode: bool, role: str, stream: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.role = role
        # sys.stdout as it is now (not when this module was imported: a test's capture,
        # a redirection made since)
        self.stream = stream if stream is not None else sys.stdout
        self.live = not json_mode and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last_json = 0.0
        self._phase = "copying"
        # multicast members: last state, live-display task, when a line was last printed
        self._member_state: dict[str, str] = {}
        self._member_task: dict[str, Any] = {}
        self._member_said: dict[str, float] = {}
        #: a peer is connected, or the plan accepted: the transfer has started (a
        #: hang-up no longer stops it)
        self.started = False
        #: a plan was accepted: from here on a target may hold part of a clone
        self.planned = False
        #: --log: every report, error and member line goes there too (cli/log.py)
        self.log: Output | None = None

    def _write(self, text: str, stream: TextIO) -> None:
        """One line to ``stream``, best-effort (see the module docstring)."""
        try:
            print(text, file=stream, flush=True)
        except (BrokenPipeError, OSError, ValueError):
            _silence(stream)
            if stream is sys.stderr or self.stream is stream:
                self._stop_quietly()

    def emit(self, **fields: Any) -> None:
        self._write(redact(json.dumps(fields)), self.stream)

    def line(self, text: str) -> None:
        """A line of a command's own output (a table row), escaped."""
        self._write(printable(redact(text)), self.stream)

    def say(self, text: str) -> None:
        # Lines may quote a peer (a source's name, an error): never let them steer the
        # terminal (control characters escaped, rich markup not interpreted).
        text = "\n".join(printable(redact(line)) for line in text.split("\n"))
        if self._progress is not None:
            try:
                self._progress.console.print(text, markup=False, highlight=False)
            except (BrokenPipeError, OSError, ValueError):
                self._stop_quietly()
        else:
            self._write(text, sys.stderr if self.json_mode else self.stream)

    def hung_up(self) -> None:
        """The terminal closed (SIGHUP) and the job goes on: show nothing more."""
        self._stop_quietly()
        for stream in (sys.stdout, sys.stderr):
            if stream.isatty():
                _silence(stream)

    def __call__(self, event: Update) -> None:
        if self.log is not None:
            self.log(event)
        match event:
            case Listening(url=url, code=code):
                self._listening(url, code)
            case Connected(url=url):
                self.started = True
                if self.json_mode:
                    self.emit(event="connected", url=url)
            case Mapped() as m:
                self._mapped(m)
            case Planned() as plan:
                self.started = True  # clone has no link: its transfer starts here
                self.planned = True
                self._planned(plan)
            case Progress() as p:
                self._show_progress(p)
            case Verifying(total_bytes=total):
                self._phase = "verifying"
                if self.json_mode:
                    self.emit(event="verifying", total_bytes=total)
                elif self._progress is not None:
                    self._progress.reset(self._task, total=total, description="verifying")
                else:
                    self.say("Verifying: re-reading the target…")
            case Rescuing(chunks=chunks, total_bytes=total):
                self._phase = "rescuing"
                if self.json_mode:
                    self.emit(event="rescuing", chunks=chunks, total_bytes=total)
                elif self._progress is not None:
                    self._progress.reset(self._task, total=total, description="rescuing")
                else:
                    self.say(
                        f"Rescuing: reading the {chunks} chunk{'s' if chunks > 1 else ''} the "
                        "first pass could not read, a sector at a time…"
                    )
            case Notice(message=message):
                if self.json_mode:
                    self.emit(event="notice", message=message)
                else:
                    self.say(f"p2pclone: note: {message}")
            case Done() as d:
                self._stop()
                if self.json_mode:
                    # Every field of Done, so the line can't drift from the stats.
                    self.emit(event="done", **{**asdict(d), "seconds": round(d.seconds, 3)})
                else:
                    if n := len(d.receivers):  # a multicast run ends only when all did
                        self.say(f"{n} of {n} receivers done: {_and(d.receivers)}")
                    rate = d.source_bytes / d.seconds if d.seconds > 0 else 0.0
                    free = f"; {human_bytes(d.free_bytes)} free, not copied" if d.free_bytes else ""
                    ratio = d.wire_bytes / d.source_bytes if d.source_bytes else 0.0
                    cut = _cut(d)
                    self.say(
                        f"Done: {human_bytes(d.source_bytes)} in {d.seconds:.1f} s "
                        f"({human_bytes(rate)}/s); {human_bytes(d.wire_bytes)} on the wire "
                        f"({ratio:.0%}); {d.chunks} chunks, {d.zero_chunks} zero, "
                        f"{d.same_chunks} already there"
                        f"{f', {d.repaired_chunks} repaired' if d.repaired_chunks else ''}"
                        f"{free}{cut}; "
                        f"{'verified, ' if d.verified else ''}root {d.digest[:16]}…"
                        f"{' (of the bytes before the cut)' if d.cut_at else ''}"
                        f"{', before the new IDs' if d.new_ids else ''}"
                    )
            case _:
                assert_never(event)

    def _listening(self, url: str, code: str) -> None:
        if self.json_mode:
            self.emit(event="listening", url=url, code=code)
        elif not code:  # an image: nobody to tell a code to
            self.say(f"Reading the image {url}")
        else:
            self.say(f"Listening on {url}  —  code: {code}")
            if url.startswith("tcp://0.0.0.0:"):  # every address, announced
                port = url.rsplit(":", 1)[-1]
                self.say(
                    "On the source machine run:  p2pclone send SOURCE  (type the code "
                    "when asked: it finds this receiver by the code's number)"
                )
                self.say(f"  or give one of this machine's addresses: {_here(port)}")
                return
            there = (
                "serial:///dev/ttyX (its end of the cable)" if url.startswith("serial://") else url
            )
            self.say(
                f"On the source machine run:  p2pclone send SOURCE {there}  "
                "(and type the code when asked)"
            )

    def unreadable(self, done: Done, origin: str = "disk") -> None:
        """The done line of a clone that is complete except for unreadable source
        ranges, and the sentence saying so (exit 7).  ``origin``: "disk" (read from the
        failing disk now), "save" (an image saved from it) or "image" (restored from
        an image that recorded them)."""
        ranges = done.unreadable
        total = human_bytes(sum(n for _o, n in ranges), small="bytes")
        where = (
            f"{len(ranges)} range{'s' if len(ranges) > 1 else ''} (the first at byte "
            f"{ranges[0][0]}"
            + (f"; in {_and(done.unreadable_in)}" if done.unreadable_in else "")
            + ")"
            + (f" — files hit: {', '.join(done.unreadable_files)}" if done.unreadable_files else "")
        )
        again = (
            "run the same commands again to retry only those (after letting the disk "
            "cool, reseating it, or on another adapter)"
        )
        if origin == "image":
            sentence = (
                f"the copy is complete except for {total} the image's source disk could "
                f"not read when it was saved, in {where}, written as zeros: the image "
                "cannot give them back; clone the disk itself again if it still exists"
            )
        elif origin == "save":
            sentence = (
                f"the image is complete except for {total} the source could not read, "
                f"in {where}, stored as zeros and listed in the image (a restore says "
                f"so too): {again}"
            )
        else:
            sentence = (
                f"the clone is complete except for {total} the source could not read, "
                f"in {where}, written as zeros: {again}"
            )
        if self.log is not None:
            self.log.emit(event="notice", message=sentence)
        if self.json_mode:
            self.emit(event="notice", message=sentence)
            self(done)
        else:
            self(done)
            self._write(f"p2pclone: {printable(sentence)}", sys.stderr)

    def _mapped(self, m: Mapped) -> None:
        if self.json_mode:
            self.emit(
                event="map",
                scheme=m.scheme,
                volumes=m.volumes,
                notes=m.notes,
                free_bytes=m.free_bytes,
                seconds=round(m.seconds, 3),
            )
            return
        for note in m.notes:
            self.say(f"p2pclone: note: {note}")
        if m.scheme == "exact":
            self.say("Copying every byte (--exact): free space is sent too")
            return
        table = SCHEME_NAMES.get(m.scheme, m.scheme)
        self.say(
            f"Source layout: {table}; {human_bytes(m.source_bytes - m.free_bytes)} in use, "
            f"{human_bytes(m.free_bytes)} free (not sent)  [read in {m.seconds:.1f} s]"
        )
        for v in m.volumes:
            name = (
                f"  {v['number']:>2} {v['type'] or 'whole disk':<22}"
                if v["number"]
                else "  whole disk"
            )
            fs = v["fs"] or "?"
            how = f"copied whole: {v['whole']}" if v["whole"] else "only used blocks"
            self.say(
                f"{name} {fs:<7} {human_bytes(int(v['used']))} used of "
                f"{human_bytes(int(v['size']))}  ({how})"
            )

    def _planned(self, p: Planned) -> None:
        if self.json_mode:
            self.emit(
                event="plan",
                source_bytes=p.source_bytes,
                chunk_size=p.chunk_size,
                chunks=p.chunks,
                source=p.source,
                target=p.target,
                copy_bytes=p.copy_bytes,
            )
            return
        free = p.source_bytes - p.copy_bytes if p.copy_bytes else 0
        self.say(
            f"{ {'send': 'Sending', 'clone': 'Copying'}.get(self.role, 'Receiving') } "
            + (f"{human_bytes(p.copy_bytes)} of " if free else "")
            + f"{human_bytes(p.source_bytes)} from {p.source.get('name', '?')} "
            f"to {p.target.get('name', '?')}"
            + (f" ({human_bytes(free)} free: not sent)" if free else "")
        )
        if skipped := left_out(p.source):
            self.say(f"  {printable(skipped)}")
        if self.live:
            from rich.progress import Progress as RichProgress

            from .bars import columns

            self._progress = RichProgress(*columns(), transient=True)
            self._progress.start()
            # the total is the bytes to copy, which the first progress report brings
            self._task = self._progress.add_task("copying", total=None)

    def _show_progress(self, p: Progress) -> None:
        if self._progress is not None:
            bad = (
                f" ({human_bytes(p.unreadable_bytes)} unreadable in {p.unreadable_ranges})"
                if p.unreadable_ranges
                else ""
            )
            self._progress.update(
                self._task,
                completed=p.done_bytes,
                total=p.total_bytes,
                description=f"{self._phase}{bad}",
            )
        elif self.json_mode:
            now = time.monotonic()
            if now - self._last_json >= 1.0 or p.done_bytes == p.total_bytes:
                self._last_json = now
                # every field of Progress, as for Done, so the line can't drift
                self.emit(event="progress", phase=self._phase, **asdict(p))

    def member(self, gp: Any) -> None:
        """Multicast: one receiver's state or progress (joined, receiving, evicted,
        unicast, done...): a line per change, and its own bar on a terminal."""
        if self.log is not None:
            self.log.member(gp)
        if self.json_mode:  # every field, as for Done
            self.emit(event="receiver", **{**asdict(gp), "rate": round(gp.rate)})
            return
        changed = self._member_state.get(gp.name) != gp.state
        self._member_state[gp.name] = gp.state
        if self._progress is not None:
            label = f"{gp.name} {gp.state}" + (f", {gp.repairs} repaired" if gp.repairs else "")
            task = self._member_task.get(gp.name)
            if task is None:
                task = self._member_task[gp.name] = self._progress.add_task(
                    label, total=gp.total_bytes or None
                )
            self._progress.update(task, description=label, completed=gp.done_bytes)
        now = time.monotonic()
        if changed or (self._progress is None and now - self._member_said.get(gp.name, 0) >= 5):
            self._member_said[gp.name] = now
            line = f"receiver {gp.name}: {gp.state}" + (f" — {gp.why}" if gp.why else "")
            if not changed and gp.total_bytes:  # a progress line (no live display)
                line += (
                    f", {gp.done_bytes / gp.total_bytes:.0%} of {human_bytes(gp.total_bytes)}"
                    f", {human_bytes(gp.rate)}/s, {gp.repairs} fragments repaired"
                )
            self.say(line)

    def pause(self) -> None:
        """Stop any live display before asking a question."""
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                self._progress.stop()
            self._progress = None

    def _stop_quietly(self) -> None:
        """The live display stops without drawing (its terminal may be gone)."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.live.transient = True
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                progress.stop()

    def error(self, exc: P2PCloneError) -> None:
        """The one place an error is printed: one sentence, escaped."""
        if self.log is not None:
            self.log.error(exc)
        self._stop()
        if self.json_mode:
            self.emit(event="error", code=exc.code, message=exc.message)
        self._write(f"p2pclone: error: {printable(exc.message)}", sys.stderr)


def _cut(d: Done) -> str:
    """What a smaller target did not take, for the done line ("" when it took all)."""
    if not d.cut_at:
        return ""
    past = human_bytes(d.source_bytes - d.cut_at)
    if d.dropped_bytes:
        return (
            f"; the {past} past byte {d.cut_at} not copied: "
            f"{human_bytes(d.dropped_bytes)} of data there let go (--cut)"
        )
    return f"; the {past} past byte {d.cut_at} not copied (all zeros, or let go with --cut)"


def _silence(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null: nothing written to it fails again,
    Python's flush at exit included."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _and(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def _here(port: str) -> str:
    """This machine's addresses as tcp:// URLs (link-local ones without a zone: ours
    means nothing on the sender, which tries each of its own interfaces)."""
    from ..transports import url_host
    from ..transports.mdns import local_addresses

    urls = [f"tcp://{url_host(a.partition('%')[0])}:{port}" for a in local_addresses()[:6]]
    return ", ".join(urls) or "(none: this machine has no address but loopback)"
