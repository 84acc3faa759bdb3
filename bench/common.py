"""Small helpers the benchmark scripts share."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def drop_caches() -> None:
    """Flush and drop the page cache, so the next read comes from the device (root)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def identical(a: Path, b: Path) -> bool:
    """``b`` exists and holds exactly ``a``'s bytes."""
    return b.exists() and subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def publish(res: dict[str, Any], text: str, out: Path | None, markdown: Path | None) -> None:
    """Print the markdown report; write it and the JSON results where asked."""
    print(text)
    if out:
        out.write_text(json.dumps(res, indent=2) + "\n")
    if markdown:
        markdown.write_text(text)
