"""``--log FILE``: the whole run, as ``--json`` prints it, written to a file beside
what the terminal shows (a technician's record of a lab's clones).

Each record is one JSON line with ``"time"`` (UTC, ISO 8601) added; the file is
appended to, so one log can hold a day's runs, each opened by a ``"run"`` record.
The log is best-effort as the screen is: a full disk stops the log, never the clone.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import P2PCloneError, UsageError, redact
from .output import Output


class LogOutput(Output):
    """An :class:`Output` in JSON mode whose lines go to the log file, stamped; what
    it would say to the terminal (never part of the JSON record) it keeps to itself."""

    def __init__(self, file: Any, role: str) -> None:
        super().__init__(json_mode=True, role=role, stream=file)
        self.live = False

    def emit(self, **fields: Any) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        try:
            self.stream.write(redact(json.dumps({"time": now, **fields})) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # best-effort: the clone goes on

    def say(self, text: str) -> None:
        pass

    def error(self, exc: P2PCloneError) -> None:
        self.emit(event="error", code=exc.code, message=exc.message, exit=int(exc.exit_code))


def open_log(path: str, role: str) -> LogOutput:
    """The log at ``path``, opened for appending, its ``run`` record written.

    Raises:
        UsageError: it cannot be written (exit 2, before anything else is done).
    """
    try:
        file = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 (open for the run)
    except OSError as exc:
        raise UsageError(
            f"cannot write the log {path} ({exc.strerror or exc}): give --log a file in a "
            "directory that exists and that you may write; nothing was done"
        ) from None
    log = LogOutput(file, role)
    log.emit(event="run", command=role, version=__version__, pid=os.getpid())
    return log


__all__ = ["LogOutput", "open_log"]
