"""Receivers found by their code: DNS-SD over mDNS (RFC 6762, 6763), via ``zeroconf``.

A receiver listening on every address (``tcp://``, or no URL at all) announces
``<nameplate>-<host>-<random>._p2pclone._tcp.local.`` on every up interface, IPv4 and
IPv6 (link-local included); its TXT record holds the nameplate (the code's leading
number), the protocol version, the target's size and the host name — never the code's
words, nor anything that helps guess them.  A sender with no host in its URL browses
for its nameplate and connects to whichever address answers first.  ``avahi-browse -r
_p2pclone._tcp`` sees the receivers too.

Blocking functions (zeroconf runs its own thread): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import url_host

if TYPE_CHECKING:
    from zeroconf import Zeroconf

SERVICE = "_p2pclone._tcp.local."
#: after the first receiver with the nameplate answers, listen this long for a second
#: one (two receivers under one nameplate is an error, never a guess)
SETTLE = 0.2
#: a name that did not resolve is asked about again after RETRY s, for at most RESOLVE s
RETRY = 1.0
RESOLVE = 1.5


@dataclass
class Announced:
    """A receiver seen on the links around."""

    name: str
    nameplate: str
    host: str
    port: int
    addresses: list[str]  # IPv6 link-local ones with their zone: fe80::1%eth0
    size: int | None = 0  # None: it announced something that is not a size
    version: str = ""
    since: float = 0.0  # when it started waiting (its clock, Unix time)
    group: str = ""  # a multicast sender's GROUP:PORT ("": a receiver)
    #: what was wrong with the announcement and left out ("a size that is not a
    #: number"): anyone on the LAN can announce anything
    dropped: list[str] = field(default_factory=list)

    def urls(self) -> list[str]:
        return [f"tcp://{url_host(a)}:{self.port}" for a in self.addresses]


def _zeroconf() -> Zeroconf:
    from zeroconf import InterfaceChoice, IPVersion, Zeroconf

    return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.All)


def local_addresses() -> list[str]:
    """Every address of this machine's up interfaces but loopback (link-local IPv6
    with its zone, as ``fe80::1%eth0``)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):  # IPv6: (address, flowinfo, scope_id)
                addr = ipaddress.IPv6Address(ip.ip[0].partition("%")[0])
                if addr.is_loopback:
                    continue
                text = str(addr) + (f"%{adapter.nice_name}" if addr.is_link_local else "")
            else:
                if ipaddress.IPv4Address(ip.ip).is_loopback:
                    continue
                text = ip.ip
            out.append(text)
    return list(dict.fromkeys(out))


def ipv4_interfaces() -> dict[str, list[ipaddress.IPv4Network]]:
    """Every up interface with IPv4 but loopback: its name -> its networks."""
    import ifaddr

    out: dict[str, list[ipaddress.IPv4Network]] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback:
                net = ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                out.setdefault(adapter.nice_name, []).append(net)
    return out


def interface_towards(addresses: list[str]) -> str | None:
    """The interface on whose link one of ``addresses`` lies: an IPv4 address inside
    one of its networks, or an IPv6 link-local address's zone; None when none does."""
    nets = ipv4_interfaces()
    for text in addresses:
        address, _, zone = text.partition("%")
        if zone:
            return zone
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            continue
        for name, networks in nets.items():
            if any(ip in net for net in networks):
                return name
    return None


def link_local_zones() -> list[str]:
    """The interfaces with an IPv6 link-local address (up, IPv6): where an address of
    the form fe80::… can be, when its zone is not known."""
    return [a.rpartition("%")[2] for a in local_addresses() if "%" in a]


class Announcement:
    """This receiver, announced while it waits for its sender (``start``/``stop``)."""

    def __init__(self, nameplate: str, port: int, size: int, version: str, group: str = "") -> None:
        """``group``: a multicast sender's GROUP:PORT (its ``port`` the control port)."""
        from zeroconf import ServiceInfo

        host = socket.gethostname().split(".")[0] or "p2pclone"
        self.name = f"{nameplate}-{host}-{secrets.token_hex(3)}.{SERVICE}"
        addresses = [a.partition("%")[0] for a in local_addresses()]
        self.info = ServiceInfo(
            SERVICE,
            self.name,
            port=port,
            properties={
                "n": nameplate,
                "v": version,
                "size": str(size),
                "host": host,
                "t": str(int(time.time())),  # since when it waits
                **({"g": group} if group else {}),
            },
            server=f"{host}-{secrets.token_hex(3)}.local.",
            parsed_addresses=addresses,
        )
        self.zc: Zeroconf | None = None

    def start(self) -> None:
        zc = self.zc = _zeroconf()
        # Our name carries random bytes: no probing for a conflict is needed.
        zc.register_service(self.info, cooperating_responders=True)

    def stop(self) -> None:
        if self.zc is not None:
            try:
                self.zc.unregister_service(self.info)
            finally:
                self.zc.close()
                self.zc = None


def browse(
    seconds: float,
    nameplate: str | None = None,
    *,
    groups: bool = False,
    stop: threading.Event | None = None,
    ignore: frozenset[str] = frozenset(),
    others: list[Announced] | None = None,
) -> list[Announced]:
    """The receivers announcing ``_p2pclone._tcp`` within ``seconds`` (all of them, or
    those of ``nameplate``: then it returns SETTLE seconds after the first answers);
    ``groups``: the multicast senders announcing a group instead; ``stop``: set, it
    returns what it has at once; ``ignore``: groups (GROUP:PORT) not to count;
    ``others``: filled with those announcing another nameplate (a mistyped number)."""
    from zeroconf import ServiceBrowser, ServiceStateChange

    names: list[str] = []
    lock = threading.Lock()

    def changed(zeroconf, service_type, name, state_change):  # type: ignore[no-untyped-def]
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                if name not in names:
                    names.append(name)

    zc = _zeroconf()
    try:
        browser = ServiceBrowser(zc, SERVICE, handlers=[changed])
        found: dict[str, Announced] = {}
        resolved: set[str] = set()
        tried: dict[str, float] = {}  # names that did not resolve: when last tried
        deadline = time.monotonic() + seconds
        first_match: float | None = None
        while True:
            with lock:
                todo = [
                    n
                    for n in names
                    if n not in resolved and time.monotonic() - tried.get(n, -RETRY) >= RETRY
                ]
            for name in todo:
                # The deadline holds however many announced names never resolve: each
                # try gets what is left of it (it once took 1.5 s each, on top).
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    break
                got = _resolve(zc, name, min(RESOLVE, left))
                tried[name] = time.monotonic()
                if got is not None:
                    resolved.add(name)
                if got is not None and bool(got.group) == groups and got.group not in ignore:
                    found[name] = got
                    if nameplate and got.nameplate == nameplate and first_match is None:
                        first_match = time.monotonic()
            now = time.monotonic()
            settled = first_match is not None and now >= first_match + SETTLE
            if now >= deadline or settled or (stop is not None and stop.is_set()):
                break
            time.sleep(0.05)
        browser.cancel()
    finally:
        zc.close()
    if others is not None and nameplate is not None:
        others.extend(a for a in found.values() if a.nameplate != nameplate)
    return [a for a in found.values() if nameplate is None or a.nameplate == nameplate]


def _resolve(zc: Zeroconf, name: str, seconds: float) -> Announced | None:
    info = zc.get_service_info(SERVICE, name, timeout=max(1, int(seconds * 1000)))
    if info is None or not info.port:
        return None
    props = info.decoded_properties
    dropped = []
    number = _number(props.get("size"))
    size = int(number) if number is not None and number.is_integer() else None
    if size is None:
        dropped.append("a target size that is not a number of bytes")
    since = _number(props.get("t"))
    if since is None:
        dropped.append("a start time that is not a time")
    addresses = []
    for text in info.parsed_scoped_addresses():
        addr, _, zone = text.partition("%")
        if zone.isdigit():  # the interface's index: its name reads better, works the same
            with contextlib.suppress(OSError):
                zone = socket.if_indextoname(int(zone))
        addresses.append(f"{addr}%{zone}" if zone else addr)
    return Announced(
        name=name,
        nameplate=props.get("n") or "",
        host=props.get("host") or "",
        port=info.port,
        addresses=addresses,
        size=size,
        version=props.get("v") or "",
        since=since or 0.0,
        group=props.get("g") or "",
        dropped=dropped,
    )


def _number(text: str | None) -> float | None:
    """A TXT value as a number >= 0 (absent: 0), or None when it is not one."""
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
