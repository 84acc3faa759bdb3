"""The live progress bar's columns, in the units the rest of the output uses (IEC:
KiB, MiB, GiB), which rich's own download and speed columns do not."""

from __future__ import annotations

from typing import Any

from rich.progress import ProgressColumn, Task
from rich.text import Text

from ..units import human_bytes


class Amount(ProgressColumn):
    """``1.2 GiB of 3.4 GiB``: what is done of what is to be copied."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(human_bytes(task.completed))
        return Text(f"{human_bytes(task.completed)} of {human_bytes(task.total)}")


class Speed(ProgressColumn):
    """``45.0 MiB/s``, as rich measures it over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{human_bytes(speed)}/s")


def columns() -> list[Any]:
    from rich.progress import BarColumn, TimeRemainingColumn

    return [
        "[progress.description]{task.description}",
        BarColumn(),
        Amount(),
        Speed(),
        TimeRemainingColumn(),
    ]


__all__ = ["Amount", "Speed", "columns"]
