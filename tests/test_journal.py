"""The resume journal on its own: commits, retractions, torn tails, plan changes."""

from __future__ import annotations

from pathlib import Path

from p2pclone.journal import RECORD_ENTRIES, Header, Journal, read_records

H = Header(chunk_size=1 << 20, source_size=300_000 << 20, target="file:/t.img")


def digest(i: int) -> bytes:
    return i.to_bytes(4, "little") * 8


def test_commits_survive_a_reopen(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, H)
    j.commit([(0, digest(0)), (5, digest(5))])
    j.commit([(7, digest(7))])
    j.close()
    again = Journal.open(tmp_path, H)
    assert len(again.have) == 3 and again.have.get(5) == digest(5) and 6 not in again.have
    assert not again.replaced


def test_a_journal_of_another_medium_is_discarded(tmp_path: Path) -> None:
    """Same path and plan, but another file there now (deleted and created again):
    nothing the old journal says is trusted, and the caller is told."""
    j = Journal.open(tmp_path, H)
    j.commit([(0, digest(0))])
    j.close()
    other = Header(H.chunk_size, H.source_size, H.target, medium="inode:1:2")
    again = Journal.open(tmp_path, other)
    assert again.replaced and len(again.have) == 0


def test_a_retraction_is_durable(tmp_path: Path) -> None:
    """Chunks found wrong are forgotten in the file too, not just in memory."""
    j = Journal.open(tmp_path, H)
    j.commit([(1, digest(1)), (2, digest(2))])
    j.forget([1])
    j.commit([(3, digest(3))])
    j.close()
    again = Journal.open(tmp_path, H)
    assert 1 not in again.have and 2 in again.have and 3 in again.have


def test_another_plan_or_fresh_starts_over(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, H)
    j.commit([(1, digest(1))])
    j.close()
    other = Header(chunk_size=H.chunk_size, source_size=H.source_size + 1, target=H.target)
    assert len(Journal.open(tmp_path, other).have) == 0
    assert len(Journal.open(tmp_path, H, fresh=True).have) == 0


def test_huge_commits_are_split_into_bounded_records(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, H)
    n = RECORD_ENTRIES * 2 + 10
    j.commit([(i, digest(i)) for i in range(n)])
    j.close()
    assert len(read_records(j.path)) == 1 + 3
    assert len(Journal.open(tmp_path, H).have) == n


def test_a_malformed_record_ends_the_journal(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, H)
    j.commit([(1, digest(1))])
    j._append([{"i": [2, 3], "h": b"short"}])  # passes its CRC, fails its shape
    j.commit([(4, digest(4))])
    j.close()
    again = Journal.open(tmp_path, H)
    assert 1 in again.have and 4 not in again.have
    again.commit([(9, digest(9))])  # appends after the intact prefix, not after junk
    again.close()
    assert 9 in Journal.open(tmp_path, H).have


def test_memory_is_33_bytes_a_chunk(tmp_path: Path) -> None:
    j = Journal.open(tmp_path, H)
    assert len(j.have._hashes) + len(j.have._present) == 33 * 300_000
