"""A hypothesis state machine over whole sessions with a faulty link and a crashing disk.

Each step runs a real sender and receiver (the production drivers, over an in-memory
stream) and may inject one fault: bytes dropped, duplicated or reordered on the link,
the link cut, or the receiver's machine crashing (every write not yet fsynced is
lost, and the journal may be torn).  Between steps the source may change.  The
invariant a user relies on: a session that reports success leaves the target
byte-identical to the source as it was then — and with a clean link, the next run
always gets there, resuming from what survived.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import p2pclone.receiver.data as receiver_mod
from p2pclone.disks import Source, Target
from p2pclone.options import ReceiveOptions, SendOptions
from p2pclone.receiver import receive_stream
from p2pclone.sender import send_stream
from p2pclone.session import Done

CHUNK = 4096
CHUNKS = 24


class VolatileTarget(Target):
    """A file target whose writes sit in a 'page cache' until sync(); crash() loses them."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        super().__init__(path, fd, False, os.fstat(fd).st_size, None)
        self.pending: list[tuple[int, bytes]] = []

    def write(self, offset: int, data) -> None:
        self.pending.append((offset, bytes(data)))

    def zero(self, offset: int, length: int) -> None:
        self.pending.append((offset, bytes(length)))

    def read(self, offset: int, length: int) -> bytes:
        data = bytearray(super().read(offset, length))
        for off, piece in self.pending:  # reads see unsynced writes, as with a page cache
            lo, hi = max(off, offset), min(off + len(piece), offset + length)
            if lo < hi:
                data[lo - offset : hi - offset] = piece[lo - off : hi - off]
        return bytes(data)

    def sync(self) -> None:
        for off, piece in self.pending:
            super().write(off, piece)
        self.pending.clear()
        super().sync()

    def start_writeback(self) -> None:
        pass

    def crash(self) -> None:
        self.pending.clear()


class FaultyStream(trio.abc.Stream):
    """Passes the sender's bytes through, except for one fault at byte ``at``."""

    def __init__(
        self,
        inner: trio.abc.Stream,
        fault: str | None,
        at: int,
        crash: trio.CancelScope | None = None,
    ) -> None:
        self.inner, self.fault, self.at, self.sent = inner, fault, at, 0
        self.held: bytes | None = None
        self.crash = crash

    async def send_all(self, data) -> None:
        data = bytes(data)
        start, self.sent = self.sent, self.sent + len(data)
        if self.fault is None or not start <= self.at < self.sent:
            if self.held is not None:  # reorder: the held piece goes after this one
                await self.inner.send_all(data + self.held)
                self.held = None
                return
            await self.inner.send_all(data)
            return
        fault, self.fault = self.fault, None
        cut = self.at - start
        if fault == "drop":
            await self.inner.send_all(data[:cut] + data[cut + 1 :])
        elif fault == "duplicate":
            await self.inner.send_all(data[: cut + 1] + data[cut : cut + 64] + data[cut + 1 :])
        elif fault == "reorder":
            await self.inner.send_all(data[:cut])
            self.held = data[cut:]
        elif fault == "cut":
            await self.inner.send_all(data[:cut])
            await self.inner.aclose()
            raise trio.BrokenResourceError("link cut")
        elif fault == "crash":  # the receiving machine dies once this much has gone out
            await self.inner.send_all(data[:cut])
            await trio.sleep(0.05)  # let the receiver write (and maybe commit) it
            assert self.crash is not None
            self.crash.cancel()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CloneMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        # Commit the journal every two chunks, so sessions hold many commits and a
        # crash lands between them (the production value is 64 MiB or 1 s).
        self._old_commit = receiver_mod.COMMIT_BYTES
        receiver_mod.COMMIT_BYTES = 2 * CHUNK
        self.dir = Path(tempfile.mkdtemp(prefix="p2pclone-stateful-"))
        self.rng = random.Random(seed)
        self.source = self.dir / "source.img"
        content = bytearray()
        for i in range(CHUNKS):  # zero, compressible and random chunks
            kind = i % 3
            content += (
                bytes(CHUNK)
                if kind == 0
                else (b"abc%d" % i) * (CHUNK // 4)
                if kind == 1
                else self.rng.randbytes(CHUNK)
            )
        self.source.write_bytes(bytes(content[: CHUNKS * CHUNK - 100]))  # short last chunk
        self.target_path = self.dir / "target.img"
        self.target_path.write_bytes(self.rng.randbytes(CHUNKS * CHUNK))  # a used disk
        self.state = self.dir / "state"
        self.synced_ok = False

    def teardown(self) -> None:
        receiver_mod.COMMIT_BYTES = getattr(self, "_old_commit", receiver_mod.COMMIT_BYTES)
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    def session(self, fault: str | None, at: int) -> Done | None:
        """One run; returns the receiver's Done, or None if the run failed."""
        target = VolatileTarget(str(self.target_path))
        source = Source.open(str(self.source))
        result: dict[str, object] = {}

        async def main() -> None:
            a, b = trio.testing.memory_stream_pair()
            with trio.move_on_after(5):
                async with trio.open_nursery() as nursery:

                    async def rx() -> None:
                        try:
                            result["rx"] = await receive_stream(
                                b, target, ReceiveOptions(state_dir=self.state), code="4-a-b"
                            )
                        except Exception as exc:  # noqa: BLE001 - any failure is a failed run
                            result["rx"] = exc
                            nursery.cancel_scope.cancel()

                    async def tx() -> None:
                        try:
                            result["tx"] = await send_stream(
                                FaultyStream(a, fault, at, nursery.cancel_scope),
                                source,
                                SendOptions(),
                                code="4-a-b",
                                chunk_size=CHUNK,
                            )
                        except Exception as exc:  # noqa: BLE001
                            result["tx"] = exc

                    nursery.start_soon(rx)
                    nursery.start_soon(tx)

        try:
            trio.run(main)
        finally:
            if fault == "crash":
                target.crash()  # the machine died: whatever wasn't fsynced is gone
            target.close()
            source.close()
        done = result.get("rx")
        return done if isinstance(done, Done) else None

    def check(self, done: Done | None) -> None:
        if done is not None:
            got = self.target_path.read_bytes()[: self.source.stat().st_size]
            assert got == self.source.read_bytes(), "a run reported success with wrong data"
            self.synced_ok = True
        else:
            self.synced_ok = False

    @rule(fault=st.sampled_from(["drop", "duplicate", "reorder", "cut"]), at=st.integers(0, 60_000))
    def faulty_run(self, fault: str, at: int) -> None:
        self.check(self.session(fault, at))

    @rule(at=st.integers(0, 110_000))
    def crash_mid_run(self, at: int) -> None:
        self.check(self.session("crash", at))

    @rule(chunk=st.integers(0, CHUNKS - 1))
    def source_changes(self, chunk: int) -> None:
        with open(self.source, "r+b") as f:
            f.seek(chunk * CHUNK)
            f.write(self.rng.randbytes(64))
        self.synced_ok = False

    @rule()
    def clean_run_always_finishes(self) -> None:
        done = self.session(None, 0)
        assert done is not None, "a run over a clean link failed"
        self.check(done)

    @invariant()
    def nothing_lies(self) -> None:
        # The only success claims are checked in check(); this keeps hypothesis honest
        # about the machine still being consistent between steps.
        assert self.source.exists() and self.target_path.exists()


CloneMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_clone_state_machine = pytest.mark.slow(CloneMachine.TestCase)
