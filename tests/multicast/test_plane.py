"""Both ends of the data plane on real UDP sockets (loopback): sealing, slices that
arrive whole before the control connection has announced them, forged fragments, GSO
bursts and GRO receives, and the sender's sharing of its socket and its reports."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2pclone.errors import RemoteProtocolError
from p2pclone.multicast.plane import AHEAD_BYTES, AHEAD_SLICES, ReceivePlane, seal
from p2pclone.multicast.slices import LossReports as _Reports
from p2pclone.multicast.slices import Wire as _Wire
from p2pclone.protocol import bitmap
from p2pclone.protocol.dataplane import Fragment, RateGovernor, split
from p2pclone.transports.multicast import UDP_GRO, BurstSender, receive_datagrams


def pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return tx, rx


async def test_a_slice_whole_before_its_ref_is_complete_only_at_the_ref() -> None:
    tx, rx = pair()
    key, session = os.urandom(32), 77
    plane = ReceivePlane(rx)
    plane.start(key, session)
    aead = AESGCM(key)
    for number, data in ((0, b"a" * 5000), (1, b"b" * 3000)):
        for frag in split(session, number, data):
            tx.send(seal(aead, frag))
    await trio.sleep(0.05)
    plane.drain()
    # All their fragments are here, but only a REF (from the sealed control
    # connection) says what a slice is: nothing is complete before it.
    assert plane.take_ready(None) == []
    plane.expect(0, 4, 5000, {})
    plane.expect(1, 3, 3000, {})
    # Slice 1 stays, whole, until it is polled (the writers take slices at the POLL).
    assert [n for n, _ in plane.take_ready(0)] == [0]
    assert plane.missing(1) == b""  # complete: the REPORT says so
    assert plane.take_ready(1) == [(1, b"b" * 3000)]
    assert plane.take_ready(None) == []


async def test_datagrams_sealed_with_another_key_or_session_are_ignored() -> None:
    tx, rx = pair()
    key, session = os.urandom(32), 5
    plane = ReceivePlane(rx)
    plane.start(key, session)
    plane.expect(0, 1, 100, {})
    (frag,) = split(session, 0, b"x" * 100)
    tx.send(seal(AESGCM(os.urandom(32)), frag))  # a stranger's key
    (other,) = split(session + 1, 0, b"y" * 100)
    tx.send(seal(AESGCM(key), other))  # another session
    tx.send(b"not a datagram of ours")
    await trio.sleep(0.05)
    plane.drain()
    assert plane.take_ready(None) == []
    assert plane.missing(0) == b"\x01"  # still missing its only fragment
    tx.send(seal(AESGCM(key), frag))
    await trio.sleep(0.05)
    plane.drain()
    assert plane.take_ready(None) == [(0, b"x" * 100)]


async def test_fragments_forged_with_the_group_key_neither_crash_nor_block_a_slice() -> None:
    tx, rx = pair()
    key, session = os.urandom(32), 9
    aead = AESGCM(key)
    plane = ReceivePlane(rx)
    plane.start(key, session)
    real = split(session, 0, b"r" * 3000)  # three fragments
    # A rogue member, before the REF: a fragment of slice 0 with the right count but
    # another length (it comes first, and must not pin the slice)...
    tx.send(seal(aead, Fragment(session, 0, 0, 3, 2999, b"z" * 1400)))
    await trio.sleep(0.05)
    plane.drain()
    plane.expect(0, len(real), 3000, {})
    # ...after it: one claiming the slice has a single fragment, and a whole slice 1
    # whose length disagrees with its fragments.
    tx.send(seal(aead, Fragment(session, 0, 0, 1, 10, b"z" * 10)))
    tx.send(seal(aead, Fragment(session, 1, 0, 1, 999, b"z" * 10)))
    await trio.sleep(0.05)
    plane.drain()  # no exception
    assert plane.take_ready(None) == []
    assert plane.missing(0) == bitmap([0, 1, 2], 3)  # nothing forged was counted
    for frag in real:
        tx.send(seal(aead, frag))
    await trio.sleep(0.05)
    plane.drain()
    assert plane.take_ready(None) == [(0, b"r" * 3000)]


async def test_a_forged_one_fragment_slice_sent_before_the_ref_does_not_complete_it() -> None:
    """Catches a datagram deciding that a slice is complete: a group-key holder's
    one-fragment "slice 0", sent before the REF, was taken as the whole slice, the
    sender's own fragments were then ignored, and every chunk of the slice was fetched
    again by unicast."""
    tx, rx = pair()
    key, session = os.urandom(32), 11
    aead = AESGCM(key)
    plane = ReceivePlane(rx)
    plane.start(key, session)
    tx.send(seal(aead, Fragment(session, 0, 0, 1, 10, b"z" * 10)))  # "whole", and forged
    await trio.sleep(0.05)
    plane.drain()
    plane.expect(0, 3, 3000, {})  # the REF: three fragments, 3000 bytes
    assert plane.take_ready(None) == []
    for frag in split(session, 0, b"r" * 3000):
        tx.send(seal(aead, frag))
    await trio.sleep(0.05)
    plane.drain()
    assert plane.take_ready(None) == [(0, b"r" * 3000)]


def held(plane: ReceivePlane) -> int:
    """Payload bytes the plane holds in partial slices."""
    return sum(
        len(part)
        for shapes in plane.asm.values()
        for asm in shapes.values()
        for part in asm._parts.values()
    )


async def test_fragments_of_slices_never_announced_are_held_only_so_far_and_so_much() -> None:
    """Catches a receiver keeping whatever a group-key holder multicasts: partial
    slices for numbers never announced were kept forever, and fragments of any size
    (500 forged 60 KB datagrams held ~29 MiB).  Now a fragment must have its exact size,
    and unannounced slices are held only AHEAD_SLICES past the last REF or POLL, within
    AHEAD_BYTES, and dropped once the control connection has passed them."""
    tx, rx = pair()
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    key, session = os.urandom(32), 12
    aead = AESGCM(key)
    plane = ReceivePlane(rx)
    plane.start(key, session)

    async def send(datagrams: list[bytes]) -> None:
        for k in range(0, len(datagrams), 50):  # in bites the socket buffer holds
            for d in datagrams[k : k + 50]:
                tx.send(d)
            await trio.sleep(0.002)
            plane.drain()

    # Oversized fragments of 500 different slices, never to be announced.
    big = b"z" * 60000
    await send([seal(aead, Fragment(session, 1000 + k, 0, 50, 60000, big)) for k in range(500)])
    assert held(plane) < 1 << 20
    # Fragments of the right size: far ahead, dropped; the next few slices, held up to
    # the budget (a real slice is ~4 MiB; these claim 90 MB each).
    count = 65535
    length = count * 1400
    chunk = b"y" * 1400
    far = AHEAD_SLICES + 1
    await send([seal(aead, Fragment(session, far, k, count, length, chunk)) for k in range(100)])
    assert held(plane) == 0
    per_slice = 6000
    await send(
        [
            seal(aead, Fragment(session, sl, k, count, length, chunk))
            for sl in range(AHEAD_SLICES)
            for k in range(per_slice)
        ]
    )
    assert AHEAD_BYTES // 2 < held(plane) <= AHEAD_BYTES
    # The control connection moves on: what it passed without announcing is dropped.
    plane.expect(3, 1, 100, {})
    assert 3 not in plane.asm and not [sl for sl in plane.asm if sl < 3]
    plane.polled(AHEAD_SLICES)
    assert held(plane) == 0 and plane.ahead_bytes == 0


def test_bursts_cut_by_the_kernel_arrive_as_the_datagrams_that_were_sent() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    burst = BurstSender(tx, rx.getsockname())
    sent = [os.urandom(1440) for _ in range(50)] + [os.urandom(300), os.urandom(1440)]
    assert burst.send(sent) == len(sent)
    assert burst.gso  # this kernel takes UDP GSO: runs of equal datagrams, one call each
    got: list[bytes] = []
    calls = 0
    while len(got) < len(sent):
        batch = receive_datagrams(rx)
        assert batch is not None, f"only {len(got)} of {len(sent)} datagrams arrived"
        calls += 1
        got += batch
    assert got == sent  # the same datagrams, in order, whether coalesced or not
    assert calls < len(sent)  # ...and coalesced (UDP GRO): fewer receives than datagrams


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EMSGSIZE])
def test_without_udp_gso_every_datagram_goes_out_on_its_own(refusal: int) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)

    class NoGSO(socket.socket):  # a kernel (or device) that refuses UDP_SEGMENT
        def sendmsg(self, *args: object, **kw: object) -> int:
            raise OSError(refusal, "no GSO here")  # no checksum offload; a small MTU

    tx = NoGSO(socket.AF_INET, socket.SOCK_DGRAM)
    burst = BurstSender(tx, rx.getsockname())
    sent = [os.urandom(1440) for _ in range(5)]
    assert burst.send(sent) == 5
    assert not burst.gso
    got = []
    while (batch := receive_datagrams(rx)) is not None:
        got += batch
    assert got == sent


async def test_slices_and_repairs_sending_at_once_take_turns_on_the_socket() -> None:
    """The next slice and the repairs of earlier ones go out concurrently; when the
    socket takes only part of a burst, each waits for it to be writable — one at a
    time (two waiters on one socket is an error in trio)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)

    class Partial(BurstSender):  # a socket that is full after every second datagram
        def send(self, datagrams: list[bytes]) -> int:
            return super().send(datagrams[:1])

    stats = {"wire": 0}
    wire = _Wire(tx, Partial(tx, rx.getsockname()), RateGovernor(rate=1e9), stats)
    sealed = [os.urandom(100) for _ in range(20)]
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(wire.multicast, sealed, list(range(20)))
    assert stats["wire"] == 3 * 20 * 100


async def test_a_report_that_answers_an_earlier_poll_is_not_taken_for_a_fresh_one() -> None:
    reports = _Reports()
    reports.opened(0, 8)
    reports.polled(0, "a")  # round 1: no answer in time
    reports.polled(0, "a")  # round 2
    reports.add(0, "a", b"\x01")  # the late answer to round 1: stale
    with trio.move_on_after(0.05):
        assert await reports.wait(0, [], 1.0) == {}
    reports.add(0, "a", b"")  # the answer to round 2
    assert await reports.wait(0, [], 1.0) == {"a": b""}


@pytest.mark.parametrize(
    ("slice_no", "bits", "why"),
    [
        (0, b"\x01", "bitmap of 1 bytes where the slice's 2999 fragments need 375"),
        (0, bytes(374) + b"\xff", "naming fragments past the slice's 2999"),
        (1, b"", "slice 1, never polled"),
    ],
)
def test_a_report_that_does_not_fit_its_slice_is_that_members_protocol_error(
    slice_no: int, bits: bytes, why: str
) -> None:
    """A REPORT is checked against the slice it answers before it is used (a short
    bitmap raised IndexError in the sender's repair round, which failed the group)."""
    reports = _Reports()
    reports.opened(0, 2999)
    reports.polled(0, "a")
    with pytest.raises(RemoteProtocolError, match=why):
        reports.add(slice_no, "a", bits)
    reports.add(0, "a", bitmap([0, 2998], 2999))  # a well-formed one is taken
    reports.finished(0)
    reports.add(0, "a", b"\x01")  # late, after the slice's rounds: ignored
