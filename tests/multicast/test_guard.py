"""The multicast sender's count of failed pairings (p2pclone/multicast/guard.py)."""

from __future__ import annotations

from p2pclone.multicast.guard import PairingGuard


def test_an_address_gets_three_failures_and_a_run_two_per_receiver_and_four() -> None:
    guard = PairingGuard(receivers=2)
    assert guard.per_run == 8
    for _ in range(3):
        assert guard.begin("a")
        guard.end("a", paired=False)
    assert not guard.admits("a") and not guard.begin("a")  # that address is done
    assert guard.begin("b")
    guard.end("b", paired=True)  # a pairing that succeeds costs nothing
    assert guard.by_address["b"] == 0
    for host in ("c", "c", "c", "d", "d"):
        assert guard.begin(host)
        guard.end(host, paired=False)
    assert guard.exhausted and not guard.admits("e")
    assert guard.worst(2) == [("a", 3), ("c", 3)]


def test_pairings_in_progress_count_so_concurrent_ones_cannot_overshoot() -> None:
    guard = PairingGuard(receivers=0)  # 4 failures allowed
    assert all(guard.begin(host) for host in "abcd")
    assert not guard.begin("e")  # four guesses are out: no fifth CONFIRM goes out
    guard.end("a", paired=True)
    assert guard.begin("e")
