"""The option table's fixtures: a network namespace for multicast on loopback, and a
way to run one spec inside it (the Samba server is tests/samba.py's, shared)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mc_netns() -> Iterator[str]:
    """A network namespace whose loopback carries multicast: a group's sender and its
    receivers, all in one process, on ``multicast://GROUP?iface=lo``."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("a network namespace needs root and iproute2")
    name = f"p2popt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "multicast", "on"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_in_netns(netns: str, spec: dict[str, object], timeout: float = 120) -> dict[str, object]:
    """``tests.options.run`` for ``spec`` inside ``netns``: the outcome, as a dict."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.options.run"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome
