"""A little LAN in network namespaces for the multicast tests.

A "switch" namespace holds a bridge; every host is a namespace with one veth into it,
an address in 10.77.0.0/24 and a multicast route.  Per host, ``tc … tbf`` limits its
downlink and an nftables rule on the bridge (``numgen random mod 100 < N drop``)
drops a share of the frames towards it (this kernel has no netem).  Needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Lan:
    tag: str
    hosts: list[str] = field(default_factory=list)  # namespace names; hosts[0] sends

    @property
    def switch(self) -> str:
        return f"p2pm-{self.tag}-sw"

    def addr(self, k: int) -> str:
        return f"10.77.0.{k + 1}"

    def port(self, k: int) -> str:
        return f"p{self.tag}{k}"  # the bridge side of host k's veth (<= 15 chars)

    def name(self, k: int) -> str:
        """Host ``k``'s host name (its own UTS namespace: a lab machine's name)."""
        return f"pc{k}"

    def member(self, k: int) -> str:
        """How a multicast sender names host ``k``'s receiver: host name and address."""
        return f"{self.name(k)} ({self.addr(k)})"

    def run(self, k: int, *argv: str, **kw) -> subprocess.Popen[bytes]:
        """``argv`` on host ``k``: in its network namespace, under its own host name
        (each ``exec``s the next: the process is ``argv``'s, signals reach it)."""
        named = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.name(k)]
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[k], *named, *argv], **kw)

    def loss(self, k: int, percent: int) -> None:
        """Drop ``percent`` % of the frames the switch forwards to host ``k``."""
        table = f"p2pm{self.tag}"
        script = (
            f"add table bridge {table}\n"
            f"add chain bridge {table} drops {{ type filter hook forward priority 0; }}\n"
            f'add rule bridge {table} drops oifname "{self.port(k)}" '
            f"numgen random mod 100 < {percent} drop\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.switch, "nft", "-f", "-"],
            input=script.encode(),
            check=True,
            capture_output=True,
        )

    def unplug(self, k: int) -> None:
        """Pull host ``k``'s cable: its switch port goes down, nothing more gets through."""
        sh("ip", "-n", self.switch, "link", "set", self.port(k), "down")

    def rate(self, k: int, rate: str) -> None:
        """Limit what reaches host ``k`` to ``rate`` (tc tbf on its switch port)."""
        sh(
            "ip", "netns", "exec", self.switch, "tc", "qdisc", "replace", "dev", self.port(k),
            "root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms",
        )  # fmt: skip


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nft"):
        if not shutil.which(tool):
            return f"{tool} is not installed (.ci/run installs iproute2 and nftables)"
    return None


@pytest.fixture
def lan() -> Iterator[Callable[[int], Lan]]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    made: list[Lan] = []

    def make(n_hosts: int, *, multicast_route: bool = True) -> Lan:
        """``multicast_route`` False: a lab as people set one up by hand — static
        addresses, no default route, no route for 224.0.0.0/4 either."""
        net = Lan(uuid.uuid4().hex[:6])
        made.append(net)
        sh("ip", "netns", "add", net.switch)
        sh("ip", "-n", net.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", net.switch, "link", "set", "br0", "up")
        sh("ip", "-n", net.switch, "link", "set", "lo", "up")
        for k in range(n_hosts):
            host = f"p2pm-{net.tag}-h{k}"
            net.hosts.append(host)
            sh("ip", "netns", "add", host)
            sh("ip", "link", "add", net.port(k), "netns", net.switch, "type", "veth",
               "peer", "name", "eth0", "netns", host)  # fmt: skip
            sh("ip", "-n", net.switch, "link", "set", net.port(k), "master", "br0", "up")
            sh("ip", "-n", host, "addr", "add", f"{net.addr(k)}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "link", "set", "lo", "up")
            if multicast_route:
                sh("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return net

    yield make
    for net in made:
        for ns in [*net.hosts, net.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
