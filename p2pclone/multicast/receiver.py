"""The multicast receiver: join the group, find the sender, take the data plane.

``receive(TARGET, "multicast://GROUP…")`` lands here.  It joins the group, waits for
the sender's ANNOUNCE, connects to its control port and runs the ordinary receiver
session over that connection, with the group's data plane attached: REF frames say
which chunks (and which hashes) come in which multicast slice, POLL asks what is
missing, and the chunks that arrive are written once their BLAKE3 matches the hash
this receiver's own authenticated connection gave.  If the sender evicts it (too
slow, too lossy), it connects again for a unicast session, which resumes from the
journal like any interrupted clone.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable

import trio

from p2pclone.transports import url_host
from p2pclone.transports.multicast import MulticastGroup, decode_announce, peer_host
from p2pclone.transports.tcp import tune

from ..disks import Target
from ..errors import TransportError
from ..options import Approve, ReceiveOptions
from ..receiver import approve_all, receive_stream
from ..receiver.feed import Reconnect
from ..session import Connected, Done, Listening, Notice, Reporter, no_report
from .feed import GroupFeed
from .plane import ReceivePlane


async def receive_multicast(
    target: Target,
    group: MulticastGroup,
    options: ReceiveOptions,
    *,
    report: Reporter = no_report,
    approve: Approve = approve_all,
    paired: Callable[[], None] = lambda: None,
    find_within: float = math.inf,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> Done:
    """Join ``group`` and receive its clone into ``target`` (opened by the caller).

    ``paired()``: called once the group's sender has proven the code (it may raise to
    stop); ``find_within``: how long to wait for the sender's ANNOUNCE.

    Raises:
        P2PCloneError: any failure (TransportError: no ANNOUNCE in ``find_within``).
    """
    code = options.code
    sock = group.receiver_socket()
    try:
        report(Listening(group.url, code))
        if group.picked:
            report(
                Notice(
                    f"no route goes to the group {group.where} (a LAN with no router): "
                    f"joining it on {group.picked}, the one interface with IPv4"
                )
            )
        task_status.started(group.url)
        host, port = "", 0
        with trio.move_on_after(find_within):
            host, port = await _find_sender(sock)
        if not host:
            raise TransportError(
                f"no sender announced itself on the multicast group {group.where} within "
                f"{find_within:g} s"
            )
        url = f"tcp://{url_host(host)}:{port}"
        stream = await _connect(host, port, url)
        report(Connected(url))
        try:
            return await receive_stream(
                stream,
                target,
                options,
                code=code,
                url=url,
                report=report,
                approve=approve,
                paired=paired,
                feed=GroupFeed(ReceivePlane(sock)),
            )
        except Reconnect as exc:
            report(Connected(f"{url} (unicast: the sender evicted this receiver: {exc})"))
            stream = await _connect(host, port, url)
            # Confirmed already: the same target, the same plan.
            return await receive_stream(stream, target, options, code=code, url=url, report=report)
    finally:
        sock.close()


async def _find_sender(sock: socket.socket) -> tuple[str, int]:
    """The sender's ANNOUNCE tells where its control port is."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data, address = sock.recvfrom(65536)
        except BlockingIOError:
            continue
        found = decode_announce(data)
        if found is not None:
            return peer_host(address), found[1]


async def _connect(host: str, port: int, url: str) -> trio.SocketStream:
    """The control connection, with the TCP link's dead-peer detection (keepalive and a
    user timeout): a sender that vanishes ends this receiver with exit 5, not a hang."""
    try:
        return tune(await trio.open_tcp_stream(host, port))
    except OSError as exc:
        raise TransportError(
            f"cannot connect to the multicast sender's control port {url} ({exc.strerror or exc}):"
            " check that the sender is still running and that no firewall blocks the port"
        ) from None
