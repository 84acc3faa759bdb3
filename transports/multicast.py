"""multicast://GROUP[:PORT][?iface=NAME&rate=RATE] — one sender, many receivers.

GROUP is an IPv4 group (224.0.0.0/4) or, in brackets, an IPv6 one (``[ff02::7]``: the
link-local scope, for labs joined by nothing but cables).  Without ``iface=`` an IPv4
group goes where the routing table says; an IPv6 one on the machine's one interface
with IPv6 link-local (with several, ``iface=`` must say which).

Not a stream: a datagram data plane beside one two-way control connection (TCP) per
receiver.  This module holds the sockets and the URL; the session logic is in
p2pclone/multicast/.

* The sender multicasts an ANNOUNCE datagram twice a second (session number and the
  TCP port of its control listener); a receiver joins the group, waits for one, and
  connects to the address it came from.
* Data datagrams are p2pclone.multicast.dataplane fragments, sealed with the group key.
* Sending is non-blocking, in bursts: ``BurstSender`` writes as many datagrams as the
  socket takes without a trio checkpoint per datagram, with UDP GSO where offered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import socket
import struct
from urllib.parse import parse_qs

from p2pclone.errors import TransportError, UsageError

from . import split_url, url_host

DEFAULT_PORT = 7412
ANNOUNCE = struct.Struct("<4sQH")
ANNOUNCE_MAGIC = b"PMA1"
_SIOCGIFADDR = 0x8915


def parse_rate(text: str) -> float:
    """'100m', '1g', '500k' (bits per second, like tc) or a plain number -> bytes/s."""
    t = text.strip().lower().removesuffix("bit").removesuffix("bps")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if t[-1:] in "kmg" else t) * scale
    except ValueError:
        raise UsageError(f"rate={text!r} is not a rate: write e.g. rate=100m (bits/s)") from None
    if value <= 0:
        raise UsageError("rate= must be positive")
    return value / 8


def iface_address(name: str) -> str:
    """The IPv4 address of interface ``name``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            raise UsageError(
                f"there is no network interface {name!r} with an IPv4 address: see `ip addr`"
            ) from None
    return socket.inet_ntoa(raw[20:24])


class MulticastGroup:
    """A multicast:// URL, parsed and checked, and the group's sockets.  Not a link
    (:class:`~p2pclone.transports.Transport`): p2pclone's multicast driver runs the
    group over these sockets and one control connection per receiver."""

    scheme = "multicast"

    def __init__(self, url: str) -> None:
        self.url = url
        hint = (
            "write multicast://GROUP[:PORT][?iface=NAME&rate=RATE], "
            "e.g. multicast://239.7.7.7?iface=eth0"
        )
        parts = split_url(url, hint)
        try:
            group = ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            raise UsageError(f"{url!r} is not a multicast URL: {hint}") from None
        self.family = socket.AF_INET6 if group.version == 6 else socket.AF_INET
        self.group = str(group)
        try:
            self.port = parts.port or DEFAULT_PORT
        except ValueError:
            raise UsageError(f"{url!r} has a bad port number (1-65535): {hint}") from None
        if parts.path not in ("", "/"):
            raise UsageError(f"{url!r} has a path ({parts.path}), which a group has not: {hint}")
        if not group.is_multicast:
            raise UsageError(
                f"{self.group} is not a multicast group (224.0.0.0/4, or ff00::/8): {hint}"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"iface", "rate"}
        if unknown:
            raise UsageError(f"unknown multicast:// option {sorted(unknown)[0]!r}: {hint}")
        self.iface = query.get("iface")
        #: the interface chosen because the URL named none and no route goes to the
        #: group ("" when the URL or the routing table decided)
        self.picked = ""
        self.rate = parse_rate(query["rate"]) if "rate" in query else None
        if self.family == socket.AF_INET6:
            self.iface = self.iface or _only_ipv6_interface(url)
            try:
                self.ifindex = socket.if_nametoindex(self.iface)
            except OSError:
                raise UsageError(
                    f"there is no network interface {self.iface!r}: see `ip addr`"
                ) from None
            self.address = "::"  # the control port: every address (the zone comes along)
        else:
            self.ifindex = 0
            if not self.iface and _no_route(self.group):
                # A lab with static addresses and no router has no route for the group:
                # the kernel cannot pick an interface, so we do, when only one can be it.
                self.iface = _only_ipv4_interface(url)
                self.picked = self.iface
            self.address = iface_address(self.iface) if self.iface else "0.0.0.0"

    def sender_socket(self) -> socket.socket:
        """A non-blocking UDP socket sending to the group (wait with trio.lowlevel)."""
        s = socket.socket(self.family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        if self.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            if self.iface:
                s.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.address)
                )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setblocking(False)
        return s

    def receiver_socket(self) -> socket.socket:
        """A non-blocking UDP socket that has joined the group."""
        s = socket.socket(self.family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        try:
            if self.family == socket.AF_INET6:
                s.bind((self.group, self.port, 0, self.ifindex))
                mreq = socket.inet_pton(socket.AF_INET6, self.group) + struct.pack(
                    "@I", self.ifindex
                )
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            else:
                s.bind((self.group, self.port))
                mreq = struct.pack(
                    "4s4s", socket.inet_aton(self.group), socket.inet_aton(self.address)
                )
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            s.close()
            raise TransportError(
                f"cannot join the multicast group {self.where} ({exc.strerror}): "
                "check the interface (iface=) and that it has a multicast route"
            ) from None
        s.setblocking(False)
        with contextlib.suppress(OSError):  # coalesced receives, where the kernel offers them
            s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        return s

    @property
    def where(self) -> str:
        """GROUP:PORT as a person writes it (IPv6 in brackets)."""
        return f"{url_host(self.group)}:{self.port}"


def _no_route(group: str) -> bool:
    """Whether this machine has no route to the IPv4 ``group`` (no default route and no
    multicast route: a lab LAN set up by hand)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((group, 9))
        except OSError as exc:
            return exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV)
    return False


def _only_ipv4_interface(url: str) -> str:
    """The one interface with IPv4 (loopback aside), for a group with no route."""
    from .mdns import ipv4_interfaces

    names = sorted(ipv4_interfaces())
    if len(names) != 1:
        raise UsageError(
            f"{url!r}: no route goes to the group (no default route, no multicast route), "
            f"and this machine has {len(names) or 'no'} interfaces with IPv4 "
            f"({', '.join(names) or 'none up'}): add ?iface=NAME for the lab's"
        )
    return names[0]


def _only_ipv6_interface(url: str) -> str:
    """The one interface with IPv6 link-local, for an IPv6 group given no iface=."""
    from .mdns import link_local_zones

    zones = link_local_zones()
    if len(zones) != 1:
        raise UsageError(
            f"{url!r}: an IPv6 group needs its interface, and this machine has "
            f"{len(zones) or 'no'} with IPv6 link-local ({', '.join(zones) or 'none up'}): "
            "add ?iface=NAME"
        )
    return zones[0]


def peer_host(address: tuple) -> str:  # type: ignore[type-arg]
    """The host of a recvfrom() address, an IPv6 link-local one with its zone."""
    if len(address) >= 4 and address[3]:
        try:
            zone = socket.if_indextoname(address[3])
        except OSError:
            zone = str(address[3])
        return f"{address[0].partition('%')[0]}%{zone}"
    return str(address[0])


#: UDP_SEGMENT (linux/udp.h): the segment size of a UDP GSO send
UDP_SEGMENT = 103
#: UDP_GRO (linux/udp.h): receive runs of datagrams coalesced, with their segment size
UDP_GRO = 104
_GRO_CMSG = socket.CMSG_SPACE(4)


def receive_datagrams(sock: socket.socket) -> list[bytes] | None:
    """The datagram(s) waiting first in ``sock``: one, or a run of them that the kernel
    coalesced (UDP_GRO: one system call for up to 64 KB of them); None when nothing
    waits.  Never blocks."""
    try:
        data, ancillary, flags, _ = sock.recvmsg(65536, _GRO_CMSG)
    except (BlockingIOError, InterruptedError):
        return None
    for level, kind, value in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            (size,) = struct.unpack("=i", value[:4])
            if 0 < size < len(data):
                if flags & socket.MSG_TRUNC:  # a run longer than the buffer: keep the
                    data = data[: len(data) // size * size]  # whole ones (the rest is repaired)
                return [data[k : k + size] for k in range(0, len(data), size)]
    return [data]


#: at most this many datagrams per GSO send (the kernel takes 64; 44 x 1440 bytes
#: stay under the 64 KiB of one UDP datagram)
GSO_SEGMENTS = 44
_GSO_LIMIT = 65000


class BurstSender:
    """Sends datagrams to the group without blocking, as many as the socket takes now.

    Where the kernel offers UDP GSO (Linux >= 4.18), runs of equal-size datagrams go
    out as one ``sendmsg`` of up to 44 of them with a UDP_SEGMENT size, which the
    kernel or the NIC cuts into the same datagrams on the wire: the network stack's
    per-packet work is paid once per ~63 KB instead of per 1.4 KB (measured on the
    namespace LAN: it was most of the sender's CPU).  Where it does not, one
    ``sendto`` per datagram.  No trio checkpoint per datagram either way.
    """

    def __init__(self, sock: socket.socket, to: tuple[str, int]) -> None:
        self.sock = sock
        self.to = to
        self.gso = True

    def send(self, datagrams: list[bytes]) -> int:
        """Send from the start of ``datagrams``; how many went out (the caller waits
        with ``trio.lowlevel.wait_writable`` and sends the rest)."""
        sent = 0
        while sent < len(datagrams):
            n = self._run(datagrams, sent) if self.gso else 1
            try:
                if n == 1:
                    self.sock.sendto(datagrams[sent], self.to)
                else:
                    size = len(datagrams[sent])
                    self.sock.sendmsg(
                        [b"".join(datagrams[sent : sent + n])],
                        [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))],
                        0,
                        self.to,
                    )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    break
                # Not offered here (EIO: no checksum offload; EMSGSIZE: a segment does
                # not fit the link's MTU, which plain sends fragment): one per call.
                if n > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT,
                                           errno.EOPNOTSUPP, errno.EMSGSIZE):  # fmt: skip
                    self.gso = False
                    continue
                raise TransportError(
                    f"sending to the multicast group {self.to[0]}:{self.to[1]} failed "
                    f"({exc.strerror or exc}): check the network link; run the sender again "
                    "(the receivers resume)"
                ) from None
            sent += n
        return sent

    @staticmethod
    def _run(datagrams: list[bytes], first: int) -> int:
        """How many datagrams from ``first`` one GSO send can carry: equal sizes (the
        last may be shorter), at most GSO_SEGMENTS and _GSO_LIMIT bytes."""
        size = len(datagrams[first])
        n = 1
        total = size
        while (
            first + n < len(datagrams)
            and n < GSO_SEGMENTS
            and total + len(datagrams[first + n]) <= _GSO_LIMIT
        ):
            length = len(datagrams[first + n])
            if length > size:
                break
            n += 1
            total += length
            if length < size:
                break  # a shorter one can only be the last segment
        return n


def encode_announce(session: int, port: int) -> bytes:
    return ANNOUNCE.pack(ANNOUNCE_MAGIC, session, port)


def decode_announce(data: bytes) -> tuple[int, int] | None:
    if len(data) != ANNOUNCE.size:
        return None
    magic, session, port = ANNOUNCE.unpack(data)
    return (session, port) if magic == ANNOUNCE_MAGIC else None
