"""How many guesses at the code a multicast sender allows, sans I/O.

A unicast receiver pairs once per run: a wrong code ends it, and the next run shows a
new code.  A multicast sender must pair many times with the same code (every receiver,
and every one that comes back for unicast), so it counts the failures instead:

1. A guess is spent when the sender sends its CONFIRM (an HMAC under keys from the
   peer's PAKE message and the code): with it the peer can test its guess offline.
   So a pairing that goes on past that point and does not end with the peer's valid
   CONFIRM is a failure, however it ends: a wrong CONFIRM, an ERROR, a closed link or
   the handshake's timeout.  (A guesser needs only our CONFIRM; it never sends its own.)
2. Before that point nothing that tests the code has left: a port scan, a stranger's
   garbage or a connection that never speaks costs a handshake slot until it closes or
   times out, and never counts.
3. Per address: PER_ADDRESS failures; later connections from it are closed unpaired.
4. Per run: 2 x the expected receivers + RUN_SLACK failures, but never more than keep
   an attacker's chance per run at or below one in a million for the code in use
   (p2pclone/codes.py: 4 with a two-word code, the full count with three words); then
   the sender stops pairing altogether (docs/security.md#multicast).
5. A pairing past point 1 counts against both limits until it ends, so handshakes in
   progress at once cannot overshoot them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codes import guesses_allowed

#: Failed pairings one address may make in a run (a receiver with a mistyped code
#: fails once, and exits: it never retries).
PER_ADDRESS = 3
#: Failed pairings a run allows beyond two per expected receiver.
RUN_SLACK = 4


@dataclass
class PairingGuard:
    """The failed pairings of one multicast run, by address (see the module's notes)."""

    receivers: int
    code: str = ""  # the run's code: how many guesses it can afford
    per_address: int = PER_ADDRESS
    failures: int = 0
    pending: int = 0  # pairings past our CONFIRM, not ended yet
    by_address: dict[str, int] = field(default_factory=dict)  # failures + pending

    @property
    def per_run(self) -> int:
        wanted = 2 * self.receivers + RUN_SLACK
        return guesses_allowed(self.code, wanted) if self.code else wanted

    @property
    def exhausted(self) -> bool:
        """The run's failures reached its limit: no more pairing."""
        return self.failures >= self.per_run

    def admits(self, address: str) -> bool:
        """A connection from ``address`` may try to pair."""
        return not self.exhausted and self.by_address.get(address, 0) < self.per_address

    def begin(self, address: str) -> bool:
        """Just before our CONFIRM goes out: True, and the guess is counted as spent
        until ``end``; False, and it must not go out (no guess left)."""
        if self.failures + self.pending >= self.per_run or not self.admits(address):
            return False
        self.pending += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return True

    def end(self, address: str, *, paired: bool) -> None:
        """A pairing that ``begin`` let through has ended (``paired``: the peer's
        CONFIRM was right)."""
        self.pending -= 1
        if paired:
            self.by_address[address] -= 1
        else:
            self.failures += 1

    def worst(self, n: int = 3) -> list[tuple[str, int]]:
        """The addresses with the most failed or pending pairings, most first."""
        return sorted(self.by_address.items(), key=lambda kv: -kv[1])[:n]
