"""meter.py without I/O: progress in used bytes, and the sender's wire marks turned
back into what the far end has (issue 24 §5)."""

from __future__ import annotations

from p2pclone.meter import Meter, in_flight
from p2pclone.volumes.extents import Extents


def test_used_bytes_before_a_position_skip_the_free_ranges() -> None:
    meter = Meter(100, Extents.of([(10, 20), (50, 80)]))
    assert meter.total == 60
    assert [meter.used_before(p) for p in (0, 10, 15, 20, 50, 60, 80, 100, 500)] == [
        0, 10, 10, 10, 40, 40, 40, 60, 60,
    ]  # fmt: skip


def test_what_the_far_end_has_follows_the_delivered_bytes_not_the_handed() -> None:
    """Two frames handed at once (wire 0..1000 covers the disk to 40, 1000..3000 to
    100): what the far end has moves with the delivered bytes, proportionally inside
    a frame, and never backwards; the frame being handed over (``ahead``) is
    interpolated before its mark exists."""
    meter = Meter(100, Extents())
    meter.mark(1000, 40)
    meter.mark(3000, 100)
    assert meter.taken(0) == 0
    assert meter.taken(500) == 20
    assert meter.taken(1000) == 40
    assert meter.taken(2000) == 70
    assert meter.taken(3000) == 100
    fresh = Meter(100, Extents())
    assert fresh.taken(500, ahead=(1000, 50)) == 25


def test_a_chunk_in_flight_counts_by_its_share_of_bytes_arrived() -> None:
    assert in_flight(4096, 0, 0, 1024) == 4096
    assert in_flight(4096, 300, 600, 1024) == 4096 + 512
    assert in_flight(4096, 900, 600, 1024) == 4096 + 1024
