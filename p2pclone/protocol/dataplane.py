"""The multicast data plane, sans I/O: slices, fragments, repair rounds, eviction, rate.

One sender multicasts the chunks to a group; each receiver also has its own two-way
control connection (pairing, the plan with every chunk hash, resume state, reports).
On the data plane (udpcast/UFTP style):

* the sender cuts what it sends into **slices** (a few chunks' worth of bytes) and
  each slice into **fragments** that fit one datagram; fragments are sealed with the
  group key (the receiver still accepts a chunk only if it matches the hash its own
  authenticated plan gave for it — never because it decrypted);
* after a slice, every receiver still in the group reports which fragments it is
  missing (a bitmap) over its control connection; the sender multicasts the **union**
  of what is missing, and repeats until everyone holds the slice;
* a receiver that needs more than ``max_rounds`` repair rounds for a slice, or stays
  silent past ``silence``, is **evicted**: it leaves the group and finishes by unicast
  resume over its control connection, and the others go on without it;
* a **rate governor** paces the sender: additive increase while reports come back
  clean, multiplicative decrease when the union loss is high.

Everything here is pure: bytes and times in, decisions out; no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: Datagram header: magic, version, flags, session id, slice, fragment, fragments in
#: the slice, slice length.
_DGRAM = struct.Struct("<2sBBQIHHI")
DGRAM_HEADER = _DGRAM.size  # 24
MAGIC = b"PM"
VERSION = 1
#: Payload bytes per fragment: 1500-byte Ethernet MTU - IPv4 (20) - UDP (8) - our
#: header - a 16-byte AEAD tag, rounded down.
FRAGMENT = 1400
MAX_FRAGMENTS = 0xFFFF


class DatagramError(ValueError):
    """Not one of our datagrams, or not of this session: ignored by receivers."""


def check_bitmap(bits: bytes, n: int) -> str:
    """What is wrong with a REPORT's bitmap for a slice of ``n`` fragments ("" if it is
    well formed: empty, or exactly ``n`` bits with no bit set past them)."""
    if bits and len(bits) != -(-n // 8):
        return f"a bitmap of {len(bits)} bytes where the slice's {n} fragments need {-(-n // 8)}"
    if bits and n % 8 and bits[-1] >> (n % 8):
        return f"a bitmap naming fragments past the slice's {n}"
    return ""


@dataclass(frozen=True, slots=True)
class Fragment:
    session: int
    slice: int
    index: int
    count: int
    slice_len: int
    payload: bytes

    def encode(self) -> bytes:
        head = _DGRAM.pack(
            MAGIC, VERSION, 0, self.session, self.slice, self.index, self.count, self.slice_len
        )
        return head + self.payload

    @classmethod
    def decode(cls, data: bytes, session: int) -> Fragment:
        sl, idx, count, slen = read_header(data, session)
        return cls(session, sl, idx, count, slen, data[DGRAM_HEADER:])


def encode_header(session: int, slice_no: int, index: int, count: int, slice_len: int) -> bytes:
    return _DGRAM.pack(MAGIC, VERSION, 0, session, slice_no, index, count, slice_len)


def read_header(data: bytes | memoryview, session: int) -> tuple[int, int, int, int]:
    """(slice, fragment, fragments in the slice, slice length) of a datagram of ``session``.

    Raises:
        DatagramError: not one of ours, another session's, or malformed.
    """
    if len(data) < DGRAM_HEADER:
        raise DatagramError("short datagram")
    magic, version, _, sess, sl, idx, count, slen = _DGRAM.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise DatagramError("not a p2pclone multicast datagram")
    if sess != session:
        raise DatagramError("another session's datagram")
    # The count follows from the length: a datagram cannot declare a shape of its own
    if not 0 <= idx < count or count != max(1, -(-slen // FRAGMENT)):
        raise DatagramError("malformed fragment numbering")
    return sl, idx, count, slen


def fragment_size(index: int, slice_len: int) -> int:
    """Payload bytes of fragment ``index`` of a slice of ``slice_len`` bytes: FRAGMENT,
    the last one the rest.  A datagram of any other size is not the sender's."""
    return max(0, min(FRAGMENT, slice_len - index * FRAGMENT))


def fragment_count(length: int, size: int = FRAGMENT) -> int:
    """Fragments of at most ``size`` bytes a slice of ``length`` bytes is cut into."""
    count = max(1, -(-length // size))
    if count > MAX_FRAGMENTS:
        raise ValueError(f"a slice of {length} bytes needs more than {MAX_FRAGMENTS} fragments")
    return count


def split(session: int, slice_no: int, data: bytes, size: int = FRAGMENT) -> list[Fragment]:
    """A slice's bytes as fragments of at most ``size`` bytes (plaintext; the caller
    seals each payload)."""
    count = fragment_count(len(data), size)
    return [
        Fragment(session, slice_no, k, count, len(data), data[k * size : (k + 1) * size])
        for k in range(count)
    ]


class Assembler:
    """One receiver's view of one slice: which fragments it holds."""

    def __init__(self, slice_no: int, count: int, slice_len: int) -> None:
        self.slice = slice_no
        self.count = count
        self.slice_len = slice_len
        self._parts: dict[int, bytes] = {}
        self.size = 0  # payload bytes held
        #: its shape is the one the sender's REF gave (not only what datagrams claimed)
        self.announced = False

    def add(self, fragment: Fragment) -> bool:
        """Keep a fragment; True when the slice has just become complete."""
        if not self.fits(fragment.index, fragment.count, fragment.slice_len):
            return False  # inconsistent with what we saw first, or held already: ignore
        return self.put(fragment.index, fragment.payload)

    def fits(self, index: int, count: int, slice_len: int) -> bool:
        """A fragment so numbered is new to this slice and agrees with what came first."""
        return count == self.count and slice_len == self.slice_len and index not in self._parts

    @property
    def held(self) -> int:
        return len(self._parts)

    def put(self, index: int, payload: bytes) -> bool:
        """Keep a fragment that ``fits``; True when the slice has just become complete."""
        self._parts[index] = payload
        self.size += len(payload)
        return len(self._parts) == self.count

    @property
    def complete(self) -> bool:
        return len(self._parts) == self.count

    def missing(self) -> list[int]:
        return [k for k in range(self.count) if k not in self._parts]

    def data(self) -> bytes:
        if not self.complete:
            raise ValueError("slice incomplete")
        out = b"".join(self._parts[k] for k in range(self.count))
        if len(out) != self.slice_len:
            raise DatagramError("slice length disagrees with its fragments")
        return out


@dataclass
class Member:
    """The sender's view of one receiver in the group."""

    name: str
    heard: float  # last report, in the caller's clock
    evicted: str = ""  # why it left the group ("" while in it)
    repairs: int = 0  # fragments re-sent because of it, in all
    #: since when it has missed a large share of every slice sent whole (None: it has not)
    lagging_since: float | None = None


@dataclass
class RepairState:
    """The sender's side of one slice: who still misses what, and when to give up on whom.

    ``report(name, missing, now)`` takes a receiver's bitmap (an empty list: it holds
    the slice); ``next_round(now)`` gives the fragments to multicast again (the union)
    and evicts the receivers that needed too many rounds or went silent.
    """

    slice: int
    count: int
    members: dict[str, Member]
    max_rounds: int = 4
    silence: float = 10.0
    #: a member missing more than this share of the slice after it was sent whole
    #: cannot keep up with the group (a slow link): it is evicted at once
    hopeless: float = 0.5
    #: a member missing more than this share of every slice for ``chronic_window``
    #: seconds, while the typical member misses less than half as much, is slower than
    #: the group (a link a little slower than the rate): it is evicted too, or every
    #: slice would wait for its repairs.  Seconds, not slices: a hiccup (a busy disk)
    #: spans many slices at 1 Gbit, and it should not cost the member the group
    chronic: float = 0.1
    chronic_window: float = 3.0
    waiting: dict[str, list[int] | None] = field(default_factory=dict)
    #: repair rounds each member needed on this slice (slices overlap: it is per slice)
    rounds: dict[str, int] = field(default_factory=dict)
    #: how many fragments each member that reported was missing, in the last round
    losses: list[int] = field(default_factory=list)
    _reported: dict[str, int] = field(default_factory=dict)

    def typical_loss(self) -> int:
        """The median member's loss in the last round: what the rate governor acts on.
        One member on a bad link must not slow the whole group down (it is repaired,
        and evicted if it cannot keep up); loss that most members see is congestion."""
        if not self.losses:
            return 0
        ordered = sorted(self.losses)
        return ordered[(len(ordered) - 1) // 2]  # of two, the better: the other is odd

    def __post_init__(self) -> None:
        for name, m in self.members.items():
            if not m.evicted:
                self.rounds[name] = 0
                self.waiting[name] = None  # no report yet

    def report(self, name: str, missing: list[int], now: float) -> None:
        m = self.members.get(name)
        if m is None or m.evicted or name not in self.waiting:
            return
        m.heard = now
        if any(not 0 <= k < self.count for k in missing):
            raise ValueError(f"{name} reported fragments outside the slice")
        self.waiting[name] = sorted(set(missing))
        self._reported[name] = len(self.waiting[name] or [])
        if not missing:
            del self.waiting[name]

    @property
    def done(self) -> bool:
        """Every member still in the group holds the slice (or was evicted)."""
        return not self.waiting

    def pending(self) -> list[str]:
        """Members whose report for this round has not arrived."""
        return [n for n, v in self.waiting.items() if v is None]

    def next_round(self, now: float) -> list[int]:
        """Evict laggards, then the union of what the others miss (to multicast again).

        Call it once every member in the group has reported, or when the round's time
        is up (then the silent ones are judged by ``silence``).
        """
        union: set[int] = set()
        self.losses, self._reported = list(self._reported.values()), {}
        typical = self.typical_loss() / self.count if self.count else 0.0
        for name in list(self.waiting):
            m = self.members[name]
            if m.evicted:  # by another slice's rounds
                del self.waiting[name]
                continue
            missing = self.waiting[name]
            if missing is None:
                if now - m.heard > self.silence:
                    self._evict(name, f"silent for {now - m.heard:.0f} s")
                continue
            self.rounds[name] += 1
            if self.rounds[name] == 1:
                share = len(missing) / self.count
                if share > self.hopeless:
                    self._evict(name, f"cannot keep up (missed {share:.0%} of a slice)")
                    continue
                if share <= self.chronic:
                    m.lagging_since = None
                elif m.lagging_since is None:
                    m.lagging_since = now
                elif now - m.lagging_since >= self.chronic_window and typical < self.chronic / 2:
                    self._evict(
                        name,
                        f"cannot keep up (missed over {self.chronic:.0%} of every slice for "
                        f"{now - m.lagging_since:.0f} s)",
                    )
                    continue
            if self.rounds[name] > self.max_rounds:
                self._evict(name, f"still missing data after {self.max_rounds} repair rounds")
                continue
            union.update(missing)
            self.waiting[name] = None  # a new report is due after the repairs
        for name in self.waiting:
            self.members[name].repairs += len(union)
        return sorted(union)

    def _evict(self, name: str, why: str) -> None:
        self.members[name].evicted = why
        self.waiting.pop(name, None)


@dataclass
class RateGovernor:
    """Bytes per second for the multicast sender: slow start, then AIMD on the loss
    the group reports.

    ``limit`` caps it (``rate=`` in the URL); with none, it starts at ``rate`` and
    adapts: until the first high loss it grows by ``growth`` per clean round (slow
    start: from 50 MB/s, a 1 Gbit link is full after four rounds, not fourteen), then
    by ``step``; a high loss multiplies it by 0.7.  Loss is what the typical member
    missed over what was sent in a round.
    """

    rate: float = 10e6
    limit: float | None = None
    floor: float = 100e3
    step: float = 5e6
    growth: float = 1.25
    high_loss: float = 0.02
    slow_start: bool = True
    _tokens: float = 0.0
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            self.rate = min(self.rate, self.limit) if self.rate else self.limit

    def on_round(self, sent: int, missing: int) -> None:
        """After a repair round: ``missing`` of ``sent`` fragments were reported lost."""
        loss = missing / sent if sent else 0.0
        if loss > self.high_loss:
            self.slow_start = False
            self.rate = max(self.floor, self.rate * 0.7)
        elif self.slow_start:
            self.rate *= self.growth
        else:
            self.rate += self.step
        if self.limit is not None:
            self.rate = min(self.rate, self.limit)

    def allowance(self, now: float, burst: float = 0.01) -> int:
        """Bytes that may go out now (a token bucket holding ``burst`` seconds' worth)."""
        if self._last is None:
            self._last = now
        self._tokens = min(self.rate * burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return max(0, int(self._tokens))

    def spend(self, n: int) -> None:
        self._tokens -= n

    def wait_for(self, n: int) -> float:
        """Seconds until ``n`` bytes are allowed (0 if they are now)."""
        return max(0.0, (n - self._tokens) / self.rate)
