"""The multicast data plane, sans I/O: a seeded simulation of slices, loss and repairs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pclone.protocol.dataplane import (
    FRAGMENT,
    Assembler,
    DatagramError,
    Fragment,
    Member,
    RateGovernor,
    RepairState,
    split,
)
from p2pclone.protocol.group import bitmap, from_bitmap


def simulate(
    loss: dict[str, float],
    *,
    slices: int = 12,
    slice_bytes: int = 200_000,
    seed: int = 1,
    max_rounds: int = 8,
    silent: frozenset[str] = frozenset(),
) -> tuple[dict[str, Member], int, int, dict[str, bool]]:
    """One sender, receivers losing each datagram with their own probability.

    Returns the members, datagrams sent, datagrams a lossless run needs, and for each
    receiver whether every slice it kept came out byte-identical.
    """
    rng = random.Random(seed)
    members = {n: Member(n, heard=0.0) for n in loss}
    sent = needed = 0
    now = 0.0
    intact = dict.fromkeys(loss, True)
    for s in range(slices):
        data = rng.randbytes(slice_bytes)
        frags = split(7, s, data)
        needed += len(frags)
        live = [n for n in loss if not members[n].evicted]
        asm = {n: Assembler(s, len(frags), len(data)) for n in live}
        state = RepairState(s, len(frags), members, max_rounds=max_rounds, silence=1.0)
        to_send = list(range(len(frags)))
        while to_send:
            for k in to_send:
                sent += 1
                wire = frags[k].encode()
                for n, a in asm.items():
                    if not members[n].evicted and rng.random() >= loss[n]:
                        a.add(Fragment.decode(wire, 7))
            now += 0.05
            for n, a in asm.items():
                if not members[n].evicted and n not in silent:
                    state.report(n, a.missing(), now)
            if state.done:
                break
            to_send = state.next_round(now)
            while not to_send and not state.done:  # only silent ones left: time passes
                now += 0.5
                to_send = state.next_round(now)
        for n, a in asm.items():
            if not members[n].evicted:
                intact[n] = intact[n] and a.data() == data
    return members, sent, needed, intact


def test_a_lossless_group_costs_one_transfer() -> None:
    members, sent, needed, intact = simulate({"a": 0.0, "b": 0.0, "c": 0.0})
    assert sent == needed
    assert all(intact.values()) and not any(m.evicted for m in members.values())


def test_three_percent_loss_at_one_receiver_costs_only_its_repairs() -> None:
    members, sent, needed, intact = simulate({"a": 0.0, "b": 0.03, "c": 0.0})
    assert all(intact.values()) and not any(m.evicted for m in members.values())
    assert needed < sent <= 1.06 * needed  # ~3 % repairs, plus repairs of repairs


def test_loss_everywhere_is_repaired_with_the_union_once() -> None:
    members, sent, needed, intact = simulate({f"r{k}": 0.02 for k in range(8)})
    assert all(intact.values())
    # Eight receivers at 2 % each: one multicast repair serves them all, so the cost
    # is near the union of their losses (~15 %), not eight separate retransmissions.
    assert sent <= 1.25 * needed


def test_a_hopeless_receiver_is_evicted_and_the_others_finish() -> None:
    members, sent, needed, intact = simulate({"a": 0.0, "bad": 0.3, "c": 0.01}, max_rounds=2)
    assert "repair rounds" in members["bad"].evicted
    assert not members["a"].evicted and not members["c"].evicted
    assert intact["a"] and intact["c"]
    assert sent < 2 * needed  # the group did not keep paying for it


def test_a_silent_receiver_is_evicted_after_the_silence_timeout() -> None:
    members, _, _, intact = simulate({"a": 0.0, "gone": 0.0}, silent=frozenset({"gone"}))
    assert members["gone"].evicted.startswith("silent for")
    assert intact["a"] and not members["a"].evicted


def test_datagrams_of_another_session_or_not_ours_are_refused() -> None:
    (frag,) = split(1, 0, b"x" * 100)
    assert Fragment.decode(frag.encode(), 1).payload == b"x" * 100
    with pytest.raises(DatagramError, match="another session"):
        Fragment.decode(frag.encode(), 2)
    with pytest.raises(DatagramError):
        Fragment.decode(b"GET / HTTP/1.1\r\n\r\n" + bytes(20), 1)
    with pytest.raises(DatagramError):
        Fragment.decode(b"PM", 1)


def test_inconsistent_or_duplicate_fragments_are_ignored() -> None:
    frags = split(1, 0, bytes(range(256)) * 20)
    a = Assembler(0, len(frags), 256 * 20)
    assert not a.add(frags[0])
    assert not a.add(frags[0])  # a duplicate changes nothing
    bogus = Fragment(1, 0, 1, len(frags) + 1, 5, b"zz")
    assert not a.add(bogus) and 1 in a.missing()
    for f in frags[1:]:
        a.add(f)
    assert a.complete and a.data() == bytes(range(256)) * 20


@given(st.sets(st.integers(0, 999)), st.integers(1000, 1100))
def test_bitmaps_round_trip(missing: set[int], n: int) -> None:
    assert from_bitmap(bitmap(sorted(missing), n), n) == sorted(missing)


@given(st.sets(st.integers(0, 999)), st.integers(1000, 1100))
def test_one_bitmap_for_reports_and_patches(missing: set[int], n: int) -> None:
    """The data plane's bitmap is the protocol's (a PATCH's sub-block map), not a copy."""
    from p2pclone import protocol
    from p2pclone.protocol import Encoding, Patch

    assert (bitmap, from_bitmap) == (protocol.bitmap, protocol.from_bitmap)
    patch = Patch(
        index=0,
        length=1,
        digest=bytes(32),
        encoding=Encoding.RAW,
        changed=bitmap(missing, n),
        body=b"",
    )
    assert patch.changed_blocks() == from_bitmap(patch.changed) == sorted(missing)


@given(st.binary(max_size=5 * FRAGMENT + 3))
def test_split_and_reassemble_any_slice(data: bytes) -> None:
    frags = split(3, 9, data)
    a = Assembler(9, len(frags), len(data))
    for f in reversed(frags):
        a.add(Fragment.decode(f.encode(), 3))
    assert a.data() == data


def test_rate_governor_backs_off_on_loss_and_respects_its_cap() -> None:
    gov = RateGovernor(rate=10e6, limit=20e6)
    gov.on_round(sent=1000, missing=100)  # 10 % loss
    assert gov.rate == pytest.approx(7e6)
    for _ in range(10):
        gov.on_round(sent=1000, missing=0)
    assert gov.rate == 20e6  # capped
    assert gov.allowance(0.0) == 0
    assert gov.allowance(0.005) == pytest.approx(100_000, rel=0.01)  # 5 ms at 20 MB/s
    gov.spend(100_000)
    assert gov.wait_for(20_000) == pytest.approx(0.001)


def test_a_receiver_a_little_slower_than_the_group_is_evicted_after_a_while() -> None:
    # 25 % of every slice lost: not hopeless, each slice repairable within the rounds,
    # but every slice would wait for its repairs: it leaves after three seconds of it.
    members, sent, needed, intact = simulate({"a": 0.0, "slowish": 0.25, "c": 0.0}, slices=40)
    assert "of every slice for 3 s" in members["slowish"].evicted
    assert not members["a"].evicted and not members["c"].evicted
    assert intact["a"] and intact["c"]
    assert sent < 1.6 * needed


def test_a_receiver_that_lags_briefly_stays_in_the_group() -> None:
    # Lagging for under three seconds (a busy disk, a burst of loss) costs repairs only.
    members, _, _, intact = simulate({"a": 0.0, "hiccup": 0.25, "c": 0.0}, slices=8)
    assert not any(m.evicted for m in members.values()) and all(intact.values())


def test_a_pair_where_one_is_slower_keeps_the_faster_pace() -> None:
    members, _, _, intact = simulate({"fast": 0.0, "slowish": 0.25}, slices=40)
    assert members["slowish"].evicted and not members["fast"].evicted and intact["fast"]


def test_the_rate_governor_grows_fast_until_the_first_loss_then_gently() -> None:
    gov = RateGovernor(rate=50e6)
    for _ in range(4):
        gov.on_round(sent=1000, missing=0)
    assert gov.rate == pytest.approx(50e6 * 1.25**4)  # ~122 MB/s: a 1 Gbit link, full
    gov.on_round(sent=1000, missing=50)  # 5 % loss: past the link's speed
    backed_off = gov.rate
    assert backed_off == pytest.approx(50e6 * 1.25**4 * 0.7)
    gov.on_round(sent=1000, missing=0)
    assert gov.rate == pytest.approx(backed_off + 5e6)  # additive from now on


def test_a_receiver_that_cannot_keep_up_is_evicted_after_one_round() -> None:
    members, sent, needed, intact = simulate({"a": 0.0, "slow": 0.9, "c": 0.0})
    assert "cannot keep up" in members["slow"].evicted
    assert intact["a"] and intact["c"]
    assert sent == needed  # nothing was repeated for it


def test_the_rate_governor_acts_on_the_typical_members_loss_not_the_worst() -> None:
    members = {n: Member(n, heard=0.0) for n in ("a", "b", "lossy")}
    state = RepairState(0, 100, members)
    state.report("a", [], 1.0)
    state.report("b", [5], 1.0)
    state.report("lossy", list(range(30)), 1.0)
    union = state.next_round(1.0)
    assert len(union) == 30  # the repairs serve the lossy one...
    assert state.typical_loss() == 1  # ...but its loss alone does not throttle the group
