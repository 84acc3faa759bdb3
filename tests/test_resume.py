"""Resume after interruption and delta re-sync: never send twice what the target holds."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from p2pclone.errors import RemoteProtocolError, TransportError
from p2pclone.jobs import receive, send
from p2pclone.journal import read_records
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.session import Done, Notice, pick_error
from tests.conftest import MiB, random_file, write_layout
from tests.failing_disk import failing_disk


async def run_pair(
    source: Path,
    target: Path,
    *,
    cut_after: int | None = None,
    fresh: bool = False,
    delta_rx: bool = False,
    delta_tx: bool = False,
    verify: bool = False,
    notes: list[str] | None = None,
) -> dict[str, object]:
    """Receiver and sender over loopback TCP; optionally through a relay that cuts the
    link (RST both ways) after ``cut_after`` bytes from the sender.  The receiver's
    notices go to ``notes``."""
    out: dict[str, object] = {}

    def report(event: object) -> None:
        if notes is not None and isinstance(event, Notice):
            notes.append(event.message)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
                try:
                    out["rx"] = await receive(
                        str(target),
                        "tcp://127.0.0.1:0",
                        ReceiveOptions(code="2-c-d", fresh=fresh, delta=delta_rx, verify=verify),
                        report=report,
                        task_status=task_status,
                    )
                except BaseException as exc:  # noqa: BLE001
                    out["rx"] = pick_error(exc)

            url = await nursery.start(rx)
            if cut_after is not None:
                url = await nursery.start(cutting_relay, int(url.rsplit(":", 1)[1]), cut_after)
            try:
                out["tx"] = await send(str(source), url, SendOptions(code="2-c-d", delta=delta_tx))
            except BaseException as exc:  # noqa: BLE001
                out["tx"] = pick_error(exc)
    return out


async def cutting_relay(port: int, budget: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    a = await listeners[0].accept()
    b = await trio.open_tcp_stream("127.0.0.1", port)

    async def back() -> None:
        try:
            while data := await b.receive_some(65536):
                await a.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as inner:
        inner.start_soon(back)
        left = budget
        while left > 0:
            data = await a.receive_some(min(65536, left))
            if not data:
                break
            left -= len(data)
            await b.send_all(data)
        await trio.sleep(0.2)  # let the receiver write (and journal) what arrived
        inner.cancel_scope.cancel()
    for s in (a, b):
        s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        await s.aclose()
    await listeners[0].aclose()


@pytest.mark.parametrize("fraction", [0.2, 0.55, 0.9])
async def test_cut_link_then_rerun_resumes(tmp_path: Path, fraction: float) -> None:
    source = tmp_path / "s.img"
    data = random_file(source, 24 * MiB)  # incompressible: wire bytes track progress
    reference = await run_pair(source, tmp_path / "ref.img")
    full = reference["tx"]
    assert isinstance(full, Done)

    target = tmp_path / "t.img"
    cut = await run_pair(source, target, cut_after=int(full.wire_bytes * fraction))
    for side in ("tx", "rx"):
        assert isinstance(cut[side], TransportError), cut[side]
        assert cut[side].exit_code == 5
    assert "resumes where it stopped" in str(cut["rx"])

    again = await run_pair(source, target)
    tx = again["tx"]
    assert isinstance(tx, Done) and isinstance(again["rx"], Done), again
    assert target.read_bytes() == data
    assert tx.same_chunks > 0
    assert tx.wire_bytes <= (1 - fraction + 0.05) * full.wire_bytes, (tx.wire_bytes, full)
    assert not list(Path(os.environ["P2PCLONE_STATE_DIR"]).glob("*.journal"))  # done: gone


async def test_source_changed_between_runs_is_sent_again(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    random_file(source, 16 * MiB, seed=1)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=9 * MiB)
    with open(source, "r+b") as f:  # change a chunk that had arrived and one that hadn't
        for off in (1 * MiB + 5, 14 * MiB + 7):
            f.seek(off)
            f.write(b"CHANGED")
    out = await run_pair(source, target)
    assert isinstance(out["tx"], Done), out
    assert target.read_bytes() == source.read_bytes()


async def test_torn_journal_tail_is_dropped(tmp_path: Path, state_dir: Path) -> None:
    source = tmp_path / "s.img"
    data = random_file(source, 16 * MiB, seed=2)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=10 * MiB)
    [journal] = state_dir.glob("*.journal")
    intact = len(read_records(journal))
    with open(journal, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage-from-a-crash")
    assert len(read_records(journal)) == intact
    out = await run_pair(source, target)
    assert isinstance(out["tx"], Done) and out["tx"].same_chunks > 0
    assert target.read_bytes() == data


async def test_journal_entry_that_lies_about_the_target_is_rechecked(
    tmp_path: Path, state_dir: Path
) -> None:
    """A chunk of the last commit, lost after it was journaled, is re-hashed and resent."""
    source = tmp_path / "s.img"
    data = random_file(source, 16 * MiB, seed=3)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=10 * MiB)
    [journal] = state_dir.glob("*.journal")
    last = read_records(journal)[-1]["i"]
    with open(target, "r+b") as f:  # the disk "lost" a write the journal counted
        f.seek(last[-1] * MiB)
        f.write(bytes(MiB))
    out = await run_pair(source, target)
    assert isinstance(out["tx"], Done), out
    assert target.read_bytes() == data


async def test_target_file_deleted_between_runs_is_cloned_whole(
    tmp_path: Path, state_dir: Path
) -> None:
    """Ctrl-C, then the user deletes the target file to "start over" and runs the same
    commands: the journal belongs to the deleted file, so the clone starts over and the
    new file ends up byte-identical.

    Negative control: before the journal named its medium and the claims were
    re-hashed, the second run said "Done, N already there" and exited 0 over a file
    that held only what the second run sent (this test failed on that code).
    """
    source = tmp_path / "s.img"
    data = random_file(source, 16 * MiB, seed=5)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=10 * MiB)
    assert list(state_dir.glob("*.journal"))
    target.unlink()
    notes: list[str] = []
    out = await run_pair(source, target, notes=notes)
    assert isinstance(out["tx"], Done) and isinstance(out["rx"], Done), out
    assert target.read_bytes() == data
    assert out["rx"].same_chunks == 0
    assert any("replaced since the interrupted run" in n or "changed since" in n for n in notes)


async def test_any_journaled_chunk_the_target_lost_is_sent_again(
    tmp_path: Path, state_dir: Path
) -> None:
    """Every chunk the journal claims is re-hashed before it is offered, not only the
    last commit's: chunks zeroed in the middle of the cloned part between the runs
    (a partial wipe) are sent again, the rest is not, and the user is told.

    Negative control: with only the last commit re-checked (the code before), the
    run ended Done with the wiped chunks still zero on the target.
    """
    source = tmp_path / "s.img"
    data = random_file(source, 16 * MiB, seed=6)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=12 * MiB)
    [journal] = state_dir.glob("*.journal")
    held = sorted(i for rec in read_records(journal)[1:] for i in rec.get("i", []))
    assert len(held) >= 6, held
    wiped = held[:2]  # the first commit's chunks, not the last
    with open(target, "r+b") as f:
        for i in wiped:
            f.seek(i * MiB)
            f.write(bytes(MiB))
    notes: list[str] = []
    out = await run_pair(source, target, notes=notes)
    assert isinstance(out["tx"], Done) and isinstance(out["rx"], Done), out
    assert target.read_bytes() == data
    assert out["rx"].same_chunks == len(held) - len(wiped)
    assert len(notes) == 1 and "changed since the interrupted run" in notes[0], notes


@pytest.mark.root
async def test_device_wiped_between_runs_is_repaired(
    tmp_path: Path, state_dir: Path, loop_device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sgdisk --zap-all`` on the target disk between an interrupted run and its re-run
    (its first and last sectors: both GPT copies) must not end in a false Done: the
    wiped chunks are re-hashed, found changed and sent again.

    Negative control: the old code printed Done with the GPT gone (this test failed).
    """
    from p2pclone.receiver import data as receiver

    # Commit every 2 MiB, so the first chunk is not in the last commit record (which
    # the old code did re-check).
    monkeypatch.setattr(receiver, "COMMIT_BYTES", 2 * MiB)
    source = tmp_path / "s.img"
    size = 16 * MiB
    data = bytearray(random.Random(7).randbytes(size))
    source.write_bytes(data)
    dev = loop_device(size)
    await run_pair(source, Path(dev), cut_after=15 * MiB)
    with open(dev, "r+b") as f:  # as --zap-all does: the first and last 34 sectors
        f.write(bytes(34 * 512))
        f.seek(size - 34 * 512)
        f.write(bytes(34 * 512))
        os.fsync(f.fileno())
    out = await run_pair(source, Path(dev))
    assert isinstance(out["tx"], Done) and isinstance(out["rx"], Done), out
    with open(dev, "rb") as f:
        assert f.read(size) == data


async def test_fresh_starts_over(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    random_file(source, 8 * MiB, seed=4)
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=5 * MiB)
    out = await run_pair(source, target, fresh=True)
    assert isinstance(out["tx"], Done) and out["tx"].same_chunks == 0
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("side", ["receiver", "sender"])
async def test_delta_sends_only_what_changed(tmp_path: Path, side: str) -> None:
    source = tmp_path / "s.img"
    write_layout(source, 20 * MiB)
    target = tmp_path / "t.img"
    first = await run_pair(source, target)
    assert isinstance(first["tx"], Done)
    rng = random.Random(9)
    with open(source, "r+b") as f:
        for chunk in (0, 2, 15):
            f.seek(chunk * MiB + rng.randrange(MiB - 4096))
            f.write(rng.randbytes(4096))
    out = await run_pair(
        source, target, delta_rx=side == "receiver", delta_tx=side == "sender", verify=True
    )
    tx = out["tx"]
    assert isinstance(tx, Done), out
    assert target.read_bytes() == source.read_bytes()
    assert tx.same_chunks == 20 - 3
    # Three changed 4 KiB blocks: a sub-block or two each (a PATCH), not three chunks.
    assert tx.wire_bytes < 3 * 128 * 1024 + 64 * 1024, tx.wire_bytes


async def test_one_changed_block_costs_at_most_128_kib(tmp_path: Path) -> None:
    source = tmp_path / "s.img"
    random_file(source, 16 * MiB, seed=11)  # incompressible: no help from zstd
    target = tmp_path / "t.img"
    await run_pair(source, target)
    unchanged = await run_pair(source, target, delta_rx=True)  # the delta's fixed cost
    assert isinstance(unchanged["tx"], Done) and unchanged["tx"].same_chunks == 16
    with open(source, "r+b") as f:
        f.seek(7 * MiB + 12288)
        f.write(random.Random(12).randbytes(4096))
    out = await run_pair(source, target, delta_rx=True)
    tx = out["tx"]
    assert isinstance(tx, Done), out
    assert target.read_bytes() == source.read_bytes()
    assert tx.wire_bytes - unchanged["tx"].wire_bytes <= 128 * 1024


async def test_patch_against_a_target_that_changed_is_refused(tmp_path: Path) -> None:
    """A PATCH is applied only if the rebuilt chunk has the sender's hash."""
    import blake3

    from p2pclone.disks import Target
    from p2pclone.errors import IntegrityError
    from p2pclone.pipeline import SUB_BLOCK, apply_patch
    from p2pclone.protocol import Encoding, Patch, Plan, bitmap

    target = tmp_path / "t.img"
    old = random_file(target, MiB, seed=13)
    plan = Plan(source_size=MiB, chunk_size=MiB)
    new_block = b"\x55" * SUB_BLOCK
    wanted = bytearray(old)
    wanted[:SUB_BLOCK] = new_block
    wanted[-1] ^= 1  # the sender's chunk differs elsewhere too: the patch can't produce it
    patch = Patch(
        index=0,
        length=MiB,
        digest=blake3.blake3(wanted).digest(),
        encoding=Encoding.RAW,
        changed=bitmap([0], MiB // SUB_BLOCK),
        body=new_block,
    )
    t = Target.open(str(target))
    t.prepare(MiB)
    with pytest.raises(IntegrityError, match="after patching"):
        apply_patch(t, patch, plan, SUB_BLOCK)
    t.close()
    assert target.read_bytes() == old


async def test_a_sender_claiming_unchanged_chunks_is_refused(tmp_path: Path) -> None:
    """SAME must match what the receiver reported; a lying sender can't skip chunks."""
    import p2pclone.pipeline as pipeline

    source = tmp_path / "s.img"
    random_file(source, 4 * MiB, seed=5)
    target = tmp_path / "t.img"
    junk = random_file(target, 4 * MiB, seed=6)
    real = pipeline.encode_chunk

    def liar(src, plan, index, have=None, subs=b"", sub=0, defer=False):
        return pipeline.Encoded(index, same=bytes(range(32)))

    pipeline.encode_chunk = liar
    import p2pclone.sender.ahead as sender_mod

    sender_mod.encode_chunk = liar
    try:
        out = await run_pair(source, target, delta_rx=True)
    finally:
        pipeline.encode_chunk = real
        sender_mod.encode_chunk = real
    assert isinstance(out["rx"], RemoteProtocolError), out
    assert "refusing to trust it" in str(out["rx"])
    assert target.read_bytes() == junk


class ThrottledRelay(threading.Thread):
    """A TCP relay limited to ``rate`` bytes/s from sender to receiver (real sockets)."""

    def __init__(self, port: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.rate, self.port = rate, port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"

    def run(self) -> None:
        a, _ = self.server.accept()
        b = socket.create_connection(("127.0.0.1", self.port))

        def back() -> None:
            try:
                while data := b.recv(65536):
                    a.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := a.recv(16384):
                b.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_sigkill_mid_transfer_then_restart_resumes(tmp_path: Path, victim: str) -> None:
    source = tmp_path / "s.img"
    data = random_file(source, 32 * MiB, seed=7)
    target = tmp_path / "t.img"
    cli = [sys.executable, "-m", "p2pclone"]

    def start(throttle: bool) -> tuple[subprocess.Popen, subprocess.Popen]:
        port = _free_port()
        rx = subprocess.Popen(
            [
                *cli,
                "receive",
                str(target),
                f"tcp://127.0.0.1:{port}",
                "--code",
                "8-k-l",
                "--yes",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert rx.stdout is not None
        rx.stdout.readline()
        url = f"tcp://127.0.0.1:{port}"
        if throttle:
            relay = ThrottledRelay(port, 8 * MiB)
            relay.start()
            url = relay.url
        tx = subprocess.Popen(
            [*cli, "send", str(source), url, "--code", "8-k-l", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        return rx, tx

    rx, tx = start(throttle=True)
    # Kill once the receiver reports ~16 MiB received (8 MiB/s: about 2 s, with several
    # journal commits made), not after a fixed sleep: a busy machine starts slower.
    deadline = time.monotonic() + 30
    assert rx.stdout is not None
    while time.monotonic() < deadline:
        event = json.loads(rx.stdout.readline() or "{}")
        if event.get("event") == "progress" and event["done_bytes"] >= 16 * MiB:
            break
    (rx if victim == "receiver" else tx).send_signal(signal.SIGKILL)
    for p in (rx, tx):
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    assert rx.returncode != 0 and tx.returncode != 0
    assert target.read_bytes() != data

    rx, tx = start(throttle=False)
    tx_out, _ = tx.communicate(timeout=60)
    rx.communicate(timeout=60)
    assert (tx.returncode, rx.returncode) == (0, 0)

    done = json.loads(tx_out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["same_chunks"] >= 8, done
    assert target.read_bytes() == data


@pytest.mark.parametrize("flaky", [True, False])
async def test_verify_fetches_damaged_chunks_again(tmp_path: Path, monkeypatch, flaky: bool):
    """A disk that loses a write: --verify finds it, asks for it again, and only then
    reports; a disk that keeps losing it ends with exit 6 naming the range."""
    import p2pclone.receiver.data as receiver_data
    import p2pclone.receiver.verify as receiver_verify
    from p2pclone.errors import IntegrityError, PeerError

    real = receiver_data.write_chunk
    calls: list[int] = []

    def lossy(target, chunk, plan):
        if chunk.index == 3 and (not flaky or not calls):
            calls.append(chunk.index)
            target.write(chunk.index * plan.chunk_size, b"\xee" * chunk.length)  # lost write
            return
        real(target, chunk, plan)

    monkeypatch.setattr(receiver_data, "write_chunk", lossy)  # the data phase's writes
    monkeypatch.setattr(receiver_verify, "write_chunk", lossy)  # and the repairs
    source = tmp_path / "s.img"
    data = random_file(source, 8 * MiB, seed=14)
    target = tmp_path / "t.img"
    out = await run_pair(source, target, verify=True)
    if flaky:
        assert isinstance(out["rx"], Done) and out["rx"].repaired_chunks == 1, out
        assert isinstance(out["tx"], Done)
        assert target.read_bytes() == data
    else:
        assert isinstance(out["rx"], IntegrityError), out
        assert "bytes 3145728-4194303" in str(out["rx"]) and "even after fetching it again" in str(
            out["rx"]
        )
        assert isinstance(out["tx"], PeerError) and out["tx"].exit_code == 6


def sparse_source(path: Path, size: int, data_at: list[int]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in data_at:
            f.seek(off)
            f.write(random.Random(off).randbytes(MiB))


@pytest.mark.slow
async def test_resume_across_a_long_hole_does_not_stall(tmp_path: Path) -> None:
    """A zero stretch longer than the HAVE window must not leave both sides waiting."""
    source = tmp_path / "s.img"
    size = 6 << 30
    sparse_source(source, size, [0, 3 * MiB, size - MiB])
    target = tmp_path / "t.img"
    await run_pair(source, target, cut_after=int(1.5 * MiB))  # before the long ZERO run
    with trio.fail_after(60):
        out = await run_pair(source, target)
    assert isinstance(out["tx"], Done), out
    with open(source, "rb") as a, open(target, "rb") as b:
        for off in (0, 3 * MiB, size - MiB):
            a.seek(off)
            b.seek(off)
            assert a.read(MiB) == b.read(MiB)
    assert target.stat().st_size == size


async def test_delta_with_large_chunks(tmp_path: Path) -> None:
    """HAVE frames with sub-hashes stay inside the meta limit whatever the chunk size."""
    source = tmp_path / "s.img"
    sparse_source(source, 256 * MiB, [0, 100 * MiB, 255 * MiB])
    target = tmp_path / "t.img"
    out: dict[str, object] = {}
    async with trio.open_nursery() as nursery:

        async def rx(task_status=trio.TASK_STATUS_IGNORED) -> None:
            out["rx"] = await receive(
                str(target),
                "tcp://127.0.0.1:0",
                ReceiveOptions(code="2-c-d", delta=True),
                task_status=task_status,
            )

        url = await nursery.start(rx)
        out["tx"] = await send(str(source), url, SendOptions(code="2-c-d", chunk_size=4 * MiB))
    assert isinstance(out["tx"], Done)
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_clone_on_one_machine_interrupted_then_rerun_resumes(tmp_path: Path, sig: int) -> None:
    """`p2pclone clone SOURCE TARGET` stopped half-way (Ctrl-C, or killed outright),
    then the same command again: it resumes from the target's journal (the chunks
    written before are SAME, not sent again) and ends byte-identical with exit 0.
    Ctrl-C exits 5 with one sentence, no traceback.  The source is a slow disk (a FUSE
    file whose reads take 5 ms each), so there is a half-way to stop at.  Catches a
    clone that does not keep or use its receiver's journal (tried: with the journal
    turned off, same_chunks is 0)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a slow FUSE disk needs root and /dev/fuse")
    image = tmp_path / "s.img"
    data = random_file(image, 64 * MiB, seed=11)
    target = tmp_path / "t.img"
    # 20 ms a read: about 9 MiB/s, so 24 MiB is seconds in, past two journal commits
    # (one a second), which a SIGKILL'd run keeps.
    with failing_disk(image, [], pace=0.02) as (disk, _log):
        argv = [sys.executable, "-m", "p2pclone", "clone", str(disk), str(target), "--yes",
                "--exact", "--json"]  # fmt: skip
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert first.stdout is not None
        deadline, stopped_at = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            event = json.loads(first.stdout.readline() or '{"event": "eof"}')
            if event["event"] == "eof":
                break
            if event["event"] == "progress" and event["done_bytes"] >= 24 * MiB:
                stopped_at = event["done_bytes"]
                first.send_signal(sig)
                break
        _out, err = first.communicate(timeout=30)
        assert stopped_at, "the clone ended before it could be interrupted"
        if sig == signal.SIGINT:
            assert first.returncode == 5 and "run the same command again" in err, err
            assert "Traceback" not in err, err
        assert target.read_bytes() != data

        again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["same_chunks"] >= 8, done
    if sig == signal.SIGINT:  # the journal was committed at the signal: all but the few
        assert done["same_chunks"] >= stopped_at // MiB - 4, (done, stopped_at)  # in flight
    assert target.read_bytes() == data
