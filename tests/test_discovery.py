"""The code is all a user types (issue 16): receivers announce themselves over mDNS
(DNS-SD, ``_p2pclone._tcp``), a sender with no URL finds the one of its code's
nameplate.  Real processes in network namespaces: a bare cable with no IPv4 at all
(IPv6 link-local only), and a switched LAN of several hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MiB, random_file
from tests.multicast import conftest as lans
from tests.multicast.conftest import Lan, sh

lan = lans.lan  # the switched LAN of the multicast tests, as a fixture here too

CLI = [sys.executable, "-m", "p2pclone"]


@pytest.fixture
def cable() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by one veth pair with no IPv4 address anywhere: only the
    automatic IPv6 link-local addresses (duplicate-address detection off, which would
    hold them back 1-2 s)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    a, b = f"p2pd-{tag}-a", f"p2pd-{tag}-b"
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
               "net.ipv6.conf.default.accept_dad=0")  # fmt: skip
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "name", "eth0",
           "netns", b)  # fmt: skip
        for ns in (a, b):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the link-local addresses, ready
            out = subprocess.run(["ip", "-n", b, "-6", "addr", "show", "dev", "eth0",
                                  "scope", "link", "-tentative"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            if "fe80" in out:
                break
            time.sleep(0.05)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def receiver(ns: str, target: Path, code: str, state: Path) -> subprocess.Popen[str]:
    """`p2pclone receive TARGET` with no URL, in namespace ``ns``; returns once it
    listens (and announces)."""
    env = {**os.environ, "P2PCLONE_CODE": code, "P2PCLONE_STATE_DIR": str(state)}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *CLI, "receive", str(target), "--yes", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "listening"
    return proc


def sender(ns: str, source: Path, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`p2pclone send SOURCE [URL]` in namespace ``ns`` (``extra``: a URL, options)."""
    env = {**os.environ, "P2PCLONE_CODE": code}
    return subprocess.run(
        ["ip", "netns", "exec", ns, *CLI, "send", str(source), *extra, "--exact", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_a_bare_cable_with_no_ipv4_needs_no_url(cable, tmp_path: Path) -> None:
    """(a) Neither side is given a URL, and the cable has no IPv4 address: the sender
    finds the receiver by the code's nameplate over mDNS on IPv6 link-local, connects
    with the right zone, and the clone is byte-identical.  Found well within 2 s."""
    a, b = cable
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    data = random_file(source, 4 * MiB)
    rx = receiver(b, target, "7-bare-cable", tmp_path / "state")
    started = time.monotonic()
    tx = sender(a, source, "7-bare-cable")
    took = time.monotonic() - started
    rx_out, rx_err = rx.communicate(timeout=60)
    assert (tx.returncode, rx.returncode) == (0, 0), tx.stderr + rx_err
    assert target.read_bytes() == data
    connected = [json.loads(x) for x in tx.stdout.splitlines() if '"connected"' in x]
    assert connected and "fe80::" in connected[0]["url"] and "%eth0" in connected[0]["url"]
    assert took < 5, took  # discovery + a 4 MiB clone; the bench measures discovery alone


@pytest.mark.parametrize("zone", ["", "%nosuch0", "%25eth0"], ids=["none", "theirs", "rfc6874"])
def test_a_link_local_url_without_our_zone_is_tried_on_our_interfaces(
    cable, tmp_path: Path, zone: str
) -> None:
    """(item 6) `tcp://[fe80::…]` as the receiver prints it — no zone, a zone naming an
    interface the sender does not have, or RFC 6874's `%25` form — reaches the
    receiver: the sender tries the address on each of its interfaces with IPv6
    link-local.  Negative control (tried): without that, all three fail as the issue
    saw ("nobody is listening" / "cannot resolve the host")."""
    a, b = cable
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    data = random_file(source, MiB)
    shown = subprocess.run(["ip", "-n", b, "-6", "-o", "addr", "show", "dev", "eth0",
                            "scope", "link"], capture_output=True, text=True).stdout  # fmt: skip
    address = shown.split("inet6 ")[1].split("/")[0]
    rx = receiver(b, target, "8-link-local", tmp_path / "state")
    tx = sender(a, source, "8-link-local", f"tcp://[{address}{zone}]:7411")
    rx_out, rx_err = rx.communicate(timeout=60)
    assert (tx.returncode, rx.returncode) == (0, 0), tx.stderr + rx_err
    assert target.read_bytes() == data
    connected = [json.loads(x) for x in tx.stdout.splitlines() if '"connected"' in x]
    assert connected[0]["url"] == f"tcp://[{address}%eth0]:7411", connected


def test_on_a_lan_the_sender_reaches_the_receiver_of_its_code(lan, tmp_path: Path) -> None:
    """(b) and (e): two receivers wait under different codes on one switch; `peers`
    lists both; the sender given one code reaches that one, and the other target is
    untouched."""
    net: Lan = lan(3)
    source = tmp_path / "s.img"
    data = random_file(source, 2 * MiB)
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    two.write_bytes(b"untouched")
    rx1 = receiver(net.hosts[1], one, "11-first-code", tmp_path / "s1")
    rx2 = receiver(net.hosts[2], two, "12-second-code", tmp_path / "s2")
    try:
        peers = subprocess.run(
            ["ip", "netns", "exec", net.hosts[0], *CLI, "peers", "--json", "--wait", "2"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        listed = [json.loads(x) for x in peers.stdout.splitlines()]
        assert sorted(p["nameplate"] for p in listed) == ["11", "12"], peers.stdout
        assert all(p["urls"] and p["host"] and p["age"] is not None for p in listed)
        assert {p["nameplate"]: p["target_bytes"] for p in listed} == {"11": 0, "12": 9}
        assert not any("first" in x or "second" in x for x in peers.stdout.split('"'))
        tx = sender(net.hosts[0], source, "12-second-code")
        assert tx.returncode == 0, tx.stderr
        rx2.communicate(timeout=60)
        assert rx2.returncode == 0
    finally:
        rx1.kill()
        rx1.communicate()
    assert two.read_bytes() == data
    assert not one.exists() or one.read_bytes() != data


def test_two_receivers_with_one_nameplate_are_an_error_not_a_guess(lan, tmp_path: Path) -> None:
    """(c) Two receivers announce the same nameplate: the sender stops with exit 2,
    listing both and saying to give a URL; neither target is touched.  Negative control
    (tried): taking the first one found instead, the sender reached the other receiver
    and the pairing failed (exit 3) — a guess, which this forbids."""
    net: Lan = lan(3)
    source = tmp_path / "s.img"
    random_file(source, MiB)
    targets = [tmp_path / "one.img", tmp_path / "two.img"]
    for t in targets:
        t.write_bytes(b"untouched")
    rx = [receiver(net.hosts[k], targets[k - 1], f"5-same-{k}", tmp_path / f"s{k}") for k in (1, 2)]
    try:
        tx = sender(net.hosts[0], source, "5-same-1", "--wait", "3")
    finally:
        for r in rx:
            r.kill()
            r.communicate()
    assert tx.returncode == 2, tx.stderr
    error = json.loads(tx.stdout.splitlines()[-1])
    assert "2 receivers announce the code 5-" in error["message"], error
    assert "tcp://10.77.0.2:" in error["message"] and "tcp://10.77.0.3:" in error["message"]
    assert all(t.read_bytes() == b"untouched" for t in targets)


def test_a_network_that_drops_multicast_gets_a_sentence_and_exit_5(lan, tmp_path: Path) -> None:
    """(d) mDNS dropped on the switch (nftables): the sender, given no URL, stops after
    its wait with exit 5 and a sentence saying to give the receiver's address."""
    net: Lan = lan(2)
    subprocess.run(
        ["ip", "netns", "exec", net.switch, "nft", "-f", "-"],
        input=f"add table bridge m{net.tag}\n"
        f"add chain bridge m{net.tag} f {{ type filter hook forward priority 0; }}\n"
        f"add rule bridge m{net.tag} f udp dport 5353 drop\n"
        f"add rule bridge m{net.tag} f udp sport 5353 drop\n",
        text=True, check=True, capture_output=True,
    )  # fmt: skip
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    random_file(source, MiB)
    rx = receiver(net.hosts[1], target, "9-no-multicast", tmp_path / "s")
    try:
        started = time.monotonic()
        tx = sender(net.hosts[0], source, "9-no-multicast", "--wait", "2")
        took = time.monotonic() - started
    finally:
        rx.kill()
        rx.communicate()
    assert tx.returncode == 5, tx.stderr
    message = json.loads(tx.stdout.splitlines()[-1])["message"]
    assert "drops multicast" in message and "tcp://ADDRESS:7411" in message, message
    assert took < 12, took


def test_multicast_on_ipv6_link_local_with_no_iface(cable, tmp_path: Path) -> None:
    """(item 5) `multicast://[ff02::…]` on a bare cable with no IPv4: an IPv6
    link-local group, no iface= on either side (each has one interface with IPv6
    link-local); the receiver finds the sender by its ANNOUNCE and connects to its
    control port at its link-local address with the right zone; byte-identical."""
    a, b = cable
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    data = random_file(source, 4 * MiB)
    url = "multicast://[ff02::7:1]:17500"
    env = {**os.environ, "P2PCLONE_CODE": "6-six-cable", "P2PCLONE_STATE_DIR": str(tmp_path)}
    rx = subprocess.Popen(
        ["ip", "netns", "exec", b, *CLI, "receive", str(target), url, "--yes", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    tx = subprocess.run(
        ["ip", "netns", "exec", a, *CLI, "send", str(source), url, "--receivers", "1",
         "--wait", "20", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    rx_out, rx_err = rx.communicate(timeout=60)
    assert (tx.returncode, rx.returncode) == (0, 0), tx.stderr + rx_err
    assert target.read_bytes() == data
    connected = [json.loads(x) for x in rx_out.splitlines() if '"connected"' in x]
    assert "fe80::" in connected[0]["url"] and "%" in connected[0]["url"], connected


def test_a_receiver_with_no_url_joins_the_group_announced_for_its_code(
    cable, tmp_path: Path
) -> None:
    """(item 5) The multicast sender announces its group under the code's nameplate; a
    receiver given no URL at all — which also waits for a unicast sender — finds it and
    joins the group; byte-identical.  Negative control (tried): with the sender's
    announcement removed, the receiver keeps waiting for a unicast sender and the
    group sender gives up after its --wait."""
    a, b = cable
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    data = random_file(source, 4 * MiB)
    rx = receiver(b, target, "4-group-join", tmp_path / "state")
    env = {**os.environ, "P2PCLONE_CODE": "4-group-join"}
    tx = subprocess.run(
        ["ip", "netns", "exec", a, *CLI, "send", str(source), "multicast://[ff02::7:2]",
         "--receivers", "1", "--wait", "15", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    try:
        rx_out, rx_err = rx.communicate(timeout=60)
    finally:
        rx.kill()
    assert (tx.returncode, rx.returncode) == (0, 0), tx.stderr + rx_err
    assert target.read_bytes() == data
    assert "joining the multicast group multicast://[ff02::7:2]:7412" in rx_out, rx_out


FORGE = """
import socket, sys, time
from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf
address, port = sys.argv[1], int(sys.argv[2])
info = ServiceInfo("_p2pclone._tcp.local.", "33-forged-000000._p2pclone._tcp.local.",
                   port=port, properties={"n": "33", "v": "1", "size": "1", "host": "forged"},
                   server="forged.local.", parsed_addresses=[address])
zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.All)
zc.register_service(info, cooperating_responders=True)
print("ready", flush=True)
time.sleep(30)
"""


def test_a_forged_announcement_wastes_a_connection_and_nothing_more(lan, tmp_path: Path) -> None:
    """(4) Host 2 announces nameplate 33 pointing at host 1's receiver, which waits
    under another code: the sender with code 33-… connects there, the pairing fails
    (exit 3) and the target there is untouched."""
    net: Lan = lan(3)
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    random_file(source, MiB)
    target.write_bytes(b"untouched")
    rx = receiver(net.hosts[1], target, "34-real-code", tmp_path / "state")
    forger = net.run(2, sys.executable, "-c", FORGE, net.addr(1), "7411",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert forger.stdout is not None and forger.stdout.readline().strip() == "ready"
        tx = sender(net.hosts[0], source, "33-forged-code", "--wait", "3")
    finally:
        for p in (rx, forger):
            p.kill()
            p.communicate()
    assert tx.returncode == 3, tx.stderr
    assert target.read_bytes() == b"untouched"


def test_the_receiver_prints_its_addresses_without_its_zone(cable, tmp_path: Path) -> None:
    """(item 6) The receiver's hint lists its addresses as URLs; a link-local one comes
    without the receiver's own zone (which means nothing on the sender), as the sender
    tries each of its interfaces.  Before: `0.0.0.0` and `THIS-HOST`."""
    _a, b = cable
    env = {**os.environ, "P2PCLONE_CODE": "3-print-it", "P2PCLONE_STATE_DIR": str(tmp_path)}
    rx = subprocess.Popen(
        ["ip", "netns", "exec", b, *CLI, "receive", str(tmp_path / "t.img"), "--yes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert rx.stdout is not None
        lines = [rx.stdout.readline() for _ in range(3)]
    finally:
        rx.kill()
        rx.communicate()
    hint = lines[2]
    assert "or give one of this machine's addresses: tcp://[fe80::" in hint, lines
    assert "%" not in hint and "THIS-HOST" not in "".join(lines), lines


def test_a_mistyped_number_names_the_receiver_that_is_waiting(cable, tmp_path: Path) -> None:
    """Issue 24 §7: the receiver shows 66-…, the sender types 65-…: after saying what it
    looks for, the sender stops (exit 5) naming the number that is announced, so the
    person checks the number — not "start the receiver first" (it had).  The target
    is untouched.  Negative control (tried): without the others collected by browse(),
    the old sentence came ("no receiver with the code 65-… answered … start …")."""
    a, b = cable
    source, target = tmp_path / "s.img", tmp_path / "t.img"
    random_file(source, MiB)
    target.write_bytes(b"untouched" * 1000)
    rx = receiver(b, target, "66-quiet-harbor", tmp_path / "state")
    try:
        tx = sender(a, source, "65-quiet-harbor", "--wait", "5")
    finally:
        rx.kill()
        rx.wait()
    assert tx.returncode == 5, tx.stderr
    events = [json.loads(x) for x in tx.stdout.splitlines()]
    assert any(
        e["event"] == "notice" and "looking for the receiver with the code 65-…" in e["message"]
        for e in events
    ), events
    assert "a receiver with the code 66-… (on " in events[-1]["message"]
    assert "check the number" in events[-1]["message"]
    assert target.read_bytes() == b"untouched" * 1000
