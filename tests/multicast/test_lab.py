"""A lab LAN as people set one up (issue 24): static addresses, no router, no default
route and no multicast route — the receivers given no URL at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MiB, random_file
from tests.multicast.conftest import Lan

CLI = [sys.executable, "-m", "p2pclone"]


def test_a_lab_with_no_router_clones_with_no_url_on_the_receivers(lan, tmp_path: Path) -> None:
    """Two receivers with no URL, a sender with `multicast://GROUP` and no iface=, on a
    LAN with no route for the group: the receivers join on the interface the group's
    announcement came from, the sender sends on the one interface it has (and says
    so), both targets end byte-identical.  Before: the receivers failed to join ("No such
    device") and the sender said to start them first (negative control, tried: without
    the interface picked from the announcement, and without the sender's pick)."""
    net: Lan = lan(3, multicast_route=False)
    source = tmp_path / "s.img"
    data = random_file(source, 8 * MiB)
    env = {**os.environ, "P2PCLONE_CODE": "12-acoustic-garden-rocket"}
    rx = []
    for k in (1, 2):
        e = {**env, "P2PCLONE_STATE_DIR": str(tmp_path / f"s{k}")}
        p = net.run(k, *CLI, "receive", str(tmp_path / f"t{k}.img"), "--yes", "--json",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)  # fmt: skip
        assert p.stdout is not None and json.loads(p.stdout.readline())["event"] == "listening"
        rx.append(p)
    tx = net.run(0, *CLI, "send", str(source), "multicast://239.77.2.2", "--receivers", "2",
                 "--wait", "30", "--exact", "--json", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        out, err = tx.communicate(timeout=120)
        outs = [p.communicate(timeout=60) for p in rx]
    finally:
        for p in (tx, *rx):
            p.kill()
    assert tx.returncode == 0, err + "".join(e for _o, e in outs)
    assert "no route goes to the group" in out and "eth0" in out, out
    for k, p in zip((1, 2), rx, strict=True):
        assert p.returncode == 0, outs[k - 1][1]
        assert (tmp_path / f"t{k}.img").read_bytes() == data
        assert (
            "joining the multicast group multicast://239.77.2.2:7412?iface=eth0" in outs[k - 1][0]
        )


def test_nobody_joined_says_what_the_sender_saw(lan, tmp_path: Path) -> None:
    """A group nobody joins: the sender's sentence says that nobody connected to its
    control port — no receiver runs, or the datagrams do not reach them — instead of
    "start the receivers first" (a guess, when they had been started)."""
    net: Lan = lan(2, multicast_route=False)
    source = tmp_path / "s.img"
    random_file(source, MiB)
    env = {**os.environ, "P2PCLONE_CODE": "12-acoustic-garden-rocket"}
    r = net.run(0, *CLI, "send", str(source), "multicast://239.77.2.3", "--wait", "2",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    _out, err = r.communicate(timeout=60)
    assert r.returncode == 5, err
    assert "none connected to the control port" in err and "on eth0" in err, err
