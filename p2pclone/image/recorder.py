"""The image recorder: the receiver's side of a session, keeping what it is sent in an image.

``p2pclone send SOURCE file:///…/pc1.p2pc`` runs the ordinary sender; its peer is this
recorder, in the same process, over an in-memory stream.  It pairs like a receiver,
takes the PLAN, and writes every CHUNK and ZERO it gets as an image record
(p2pclone/image/format.py), then the index and the footer.

An interrupted save resumes: the recorder reads the record headers and digests already
in the image, keeps those that are intact, cuts off the torn tail and tells the sender
what it holds in HAVE frames, exactly as a receiver reports its journal; the sender
sends SAME for what is unchanged and the rest again.  A chunk recorded twice is read
from its last record.
"""

from __future__ import annotations

import functools
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import assert_never

import trio

from .. import __version__
from ..errors import (
    IntegrityError,
    P2PCloneError,
    RemoteProtocolError,
    SafetyError,
    UsageError,
)
from ..pipeline import chunk_span
from ..protocol import (
    HASH_SIZE,
    MAX_HASHES,
    Accept,
    Chunk,
    Connection,
    End,
    Later,
    Lost,
    Plan,
    Result,
    Role,
    Same,
    Zero,
)
from ..protocol.freemap import encode_free, fit_free
from ..protocol.root import zero_digest
from ..session import Channel, HaveReport, pair, pick_error
from ..units import merged
from . import format as fmt
from .reader import read_header, read_index, scan_records
from .store import Store
from .urls import ReadOptions, open_store, read_options

#: Write the image in pieces of about this size (over SMB: four 8 MiB requests at once).
WRITE_BYTES = 32 << 20
#: Make the image durable at least this often, so a resumed save loses little.
SYNC_BYTES = 256 << 20
UNKNOWN = bytes(HASH_SIZE)


class Recorder:
    """One image being written: opened (and checked) before the session starts."""

    def __init__(self, url: str, store: Store, passphrase: str) -> None:
        self.url = url
        self.store = store
        self.passphrase = passphrase
        self.header: fmt.Header | None = None
        self.keys: fmt.Keys | None = None

    @classmethod
    def open(cls, url: str, passphrase: str, password: str | None, fresh: bool) -> Recorder:
        """Open (or create) the image; check the passphrase of an existing one.  Blocking."""
        if not passphrase:
            raise UsageError(
                "an image needs a passphrase to encrypt it: give one with --passphrase "
                "(or set P2PCLONE_PASSPHRASE)"
            )
        if read_options(url) != ReadOptions():
            raise UsageError(
                f"{url}: ?plain=1 and ?salvage=1 are for reading an image; a save always "
                "writes an encrypted, complete one: remove them"
            )
        store = open_store(url, create=True, password=password)
        url = store.url  # without a password that the URL may hold
        try:
            rec = cls(url, store, passphrase)
            if fresh:
                store.truncate(0)
            elif store.size():
                rec.header, data = read_header(store, url)
                if rec.header.encryption is None:
                    raise SafetyError(
                        f"{url} holds an unencrypted image: p2pclone will not add to it; "
                        "use --fresh to replace it"
                    )
                rec.keys = fmt.Keys.derive(passphrase, rec.header.encryption, url)
                fmt.check_header(data, rec.keys, url)
            return rec
        except BaseException:
            store.close()
            raise

    async def run(self, stream: trio.abc.Stream, code: str) -> None:
        """The session, paired with ``code`` (a system task: never raises; failures go
        to the sender)."""
        channel = Channel(Connection(Role.RECEIVER, code=code, seal=False), stream, self.url)
        try:
            await self._session(channel)
        except trio.Cancelled:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to the sender instead
            await channel.fail(_reportable(pick_error(exc), "recorder"))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.store.close)

    async def _session(self, channel: Channel) -> None:
        await pair(channel)
        plan = await channel.expect(Plan, "the sender's PLAN")
        known = await trio.to_thread.run_sync(self._prepare, plan)
        await channel.send(
            Accept(
                target={"name": self.url, "kind": "image", "size": plan.source_size},
                have=bool(known),
            )
        )
        state = _Writing(self, plan, known)
        end = await state.run(channel)
        if end.root != channel.conn.root_digest():  # the Connection checked coverage
            raise RemoteProtocolError("the sender's root hash disagrees with its chunks")
        await trio.to_thread.run_sync(state.finish, end.root)
        if state.lost:
            # What arrived is kept (and indexed); the chunks that did not are missing
            # from the image, which is not a copy of the source: never a success.
            raise IntegrityError(
                f"the sender could not provide {len(state.lost)} chunks "
                f"({chunk_span(plan, state.lost[0])} first): its source image is damaged; "
                f"{self.url} lacks them and `image verify` names them"
            )
        await channel.send(Result(root=end.root, verified=False))
        await channel.close()

    def _prepare(self, plan: Plan) -> dict[int, tuple[int, bytes]]:
        """Fit the image to ``plan``: a new header, or what an old save left.  Blocking."""
        h = self.header
        if h is not None:
            same = (
                h.source_size == plan.source_size
                and h.chunk_size == plan.chunk_size
                and _identity(h.source) == _identity(plan.source)
            )
            if same and h.free != _free_map(plan):
                # A restore writes only what the header's map calls used: data the first
                # part of this save skipped as free may be in use now.
                raise SafetyError(
                    f"the filesystems of the source changed since the interrupted save to "
                    f"{self.url} (their used blocks differ): use --fresh to save it again"
                )
            if not same:
                raise SafetyError(
                    f"{self.url} holds an image of another source ({_describe(h.source)}, "
                    f"{h.source_size} bytes, chunk size {h.chunk_size}): use --fresh to "
                    "replace it, or save to another name"
                )
            assert self.keys is not None
            codec = fmt.Codec(h, self.keys)
            found = read_index(self.store, codec)
            if found is not None:
                # A complete image: its index says where everything is.  New records go
                # where the old index was (a new one follows them).
                offsets, hashes, _, _, end = found
                known = {
                    i: (offsets[i], hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)])
                    for i in range(plan.chunk_count)
                    if offsets[i]
                }
            else:
                known, end = scan_records(self.store, codec, self.url)
            self.store.truncate(end)
            self.end = end
            self.codec = codec
            return known
        enc = fmt.new_encryption()
        h = self.header = fmt.Header(
            source_size=plan.source_size,
            chunk_size=plan.chunk_size,
            source=dict(plan.source),
            encryption=enc,
            generator=f"p2pclone {__version__}",
            free=_free_map(plan),
            free_count=len(fit_free(plan.free, FREE_MAP_LIMIT)),
        )
        self.keys = fmt.Keys.derive(self.passphrase, enc, self.url)
        self.codec = fmt.Codec(h, self.keys)
        head = fmt.encode_header(h, self.keys)
        self.store.truncate(0)
        self.store.write(0, head)
        self.end = len(head)
        return {}


#: The used map an image's header keeps (at most this encoded; MAX_HEADER is 1 MiB).
FREE_MAP_LIMIT = 512 * 1024


def _free_map(plan: Plan) -> bytes:
    return encode_free(fit_free(plan.free, FREE_MAP_LIMIT))


def fit_ranges(ranges: list[list[int]], most: int) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges, at most ``most`` of them: past that, the closest
    neighbours are joined (what lies between counts as unreadable too: the index never
    claims a byte was read that was not)."""
    spans = [(o, o + n) for o, n in ranges]
    while len(spans) > most:
        k = min(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - spans[i][1])
        spans[k : k + 2] = [(spans[k][0], spans[k + 1][1])]
    return [(a, b - a) for a, b in spans]


def _reportable(exc: BaseException, who: str) -> BaseException:
    """An error the peer is told about: a bug here must not look like a lost link there."""
    if isinstance(exc, P2PCloneError):
        return exc
    return P2PCloneError(
        f"the image {who} failed: {exc!r}; this is a bug in p2pclone, please report it"
    )


def _identity(info: Mapping[str, object]) -> tuple[object, ...]:
    return tuple(info.get(k) for k in ("name", "model", "serial"))


def _describe(info: Mapping[str, object]) -> str:
    parts = [str(info[k]) for k in ("name", "model", "serial") if info.get(k)]
    return " ".join(parts) or "unknown"


Job = Callable[[], list[bytes | memoryview]]


def _write_batch(store: Store, at: int, jobs: list[Job]) -> int:
    """Encode (seal) a batch of records and write them at ``at``; return the bytes."""
    data = b"".join(part for job in jobs for part in job())
    store.write(at, data)
    return len(data)


class _Writing:
    """The data phase: records appended in order, HAVE reports for a resumed save."""

    def __init__(self, rec: Recorder, plan: Plan, known: dict[int, tuple[int, bytes]]) -> None:
        self.rec, self.plan, self.known = rec, plan, known
        self.codec = rec.codec
        n = plan.chunk_count
        self.offsets = array("Q", bytes(8 * n))
        self.hashes = bytearray(HASH_SIZE * n)
        for i, (offset, digest) in known.items():
            self.offsets[i] = offset
            self.hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)] = digest
        self.end = rec.end  # where the next record goes
        self.buf: list[Job] = []
        self.buffered = 0
        self.unsynced = 0
        self.have: HaveReport | None = None
        self.lost: list[int] = []  # chunks the sender could not provide (LOST)
        #: chunk -> the source ranges in it its disk could not read (this run's: a
        #: chunk with any is always sent whole, never as SAME)
        self.unreadable: dict[int, tuple[tuple[int, int], ...]] = {}

    async def run(self, channel: Channel) -> End:
        send, recv = trio.open_memory_channel[list[Job] | None](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, recv)
            if self.known:
                self.have = self._have_report(channel)
                nursery.start_soon(self.have.run)
            async with send:
                end = await self._receive(channel, send)
                if self.buf:
                    await send.send(self.buf)
                await send.send(None)
        return end

    async def _receive(
        self, channel: Channel, out: trio.MemorySendChannel[list[Job] | None]
    ) -> End:
        while True:
            event = await channel.expect_one_of(
                (Chunk, Zero, Same, Lost, Later, End), "the sender's chunks"
            )
            assert isinstance(event, (Chunk, Zero, Same, Lost, Later, End))  # as asked
            match event:
                case End():
                    return event
                case Chunk():
                    self._chunk(event)
                case Zero():
                    for i in range(event.index, event.index + event.count):
                        self.unreadable.pop(i, None)
                    self._place(event.index, event.count, None)
                    zero: list[bytes | memoryview] = [self.codec.zero(event.index, event.count)]
                    self._add(len(zero[0]), functools.partial(list, zero))
                case Lost():  # its source is a damaged image: not a copy
                    self.lost += range(event.index, event.index + event.count)
                case Later():  # a failing disk's: they come as CHUNKs after the first pass
                    pass
                case Same():
                    self._same(event)
                case _:
                    assert_never(event)
            if self.have is not None:
                self.have.moved()
            if self.buffered >= WRITE_BYTES:
                buf, self.buf, self.buffered = self.buf, [], 0
                await out.send(buf)

    def _chunk(self, event: Chunk) -> None:
        # The source's unreadable ranges in this chunk (zeros in its record) go into
        # the index, so a restore says so (exit 7); a chunk sent again replaces them.
        if event.unreadable:
            self.unreadable[event.index] = event.unreadable
        else:
            self.unreadable.pop(event.index, None)
        self._place(event.index, 1, event.digest)
        # Sealed in the writer's thread, not here: the event loop is busy enough.
        self._add(
            self.codec.chunk_record_size(len(event.body)),
            functools.partial(
                self.codec.chunk,
                event.index,
                event.length,
                event.digest,
                event.encoding,
                event.body,
            ),
        )

    def _same(self, event: Same) -> None:
        for k in range(event.count):
            i = event.index + k
            if event.hashes[HASH_SIZE * k : HASH_SIZE * (k + 1)] != self._hash(i):
                raise RemoteProtocolError(
                    f"the sender called chunk {i} unchanged although the image holds "
                    "another one: refusing to trust it"
                )

    def _hash(self, i: int) -> bytes:
        return bytes(self.hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)])

    def _place(self, index: int, count: int, digest: bytes | None) -> None:
        for i in range(index, index + count):
            self.offsets[i] = self.end
            d = digest if digest is not None else zero_digest(self.plan.chunk_length(i))
            self.hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)] = d

    def _add(self, size: int, make: Callable[[], list[bytes | memoryview]]) -> None:
        """Queue a record of ``size`` bytes that ``make()`` encodes (in a worker thread)."""
        self.buf.append(make)
        self.buffered += size
        self.end += size

    async def _writer(self, recv: trio.MemoryReceiveChannel[list[Job] | None]) -> None:
        at = self.rec.end
        store = self.rec.store
        async with recv:
            async for jobs in recv:
                if jobs is None:
                    return
                written = await trio.to_thread.run_sync(_write_batch, store, at, jobs)
                at += written
                self.unsynced += written
                if self.unsynced >= SYNC_BYTES:
                    self.unsynced = 0
                    await trio.to_thread.run_sync(store.sync)

    def _have_report(self, channel: Channel) -> HaveReport:
        """Tell the sender what the image already holds, in order, as a receiver would."""

        async def batch(indices: Sequence[int]) -> tuple[list[bytes], bytes]:
            return [self.known[i][1] if i in self.known else UNKNOWN for i in indices], b""

        return HaveReport(channel, self.plan, MAX_HASHES, batch)

    def finish(self, root: bytes) -> None:
        """The index and the footer, then make it all durable.  Blocking."""
        store = self.rec.store
        bad = merged([r for i in sorted(self.unreadable) for r in self.unreadable[i]])
        index = self.codec.index(
            list(self.offsets), bytes(self.hashes), root, fit_ranges(bad, self.plan.chunk_count)
        )
        at = self.end
        store.write(at, index + fmt.encode_footer(at, len(index), int(time.time())))
        store.truncate(at + len(index) + fmt.FOOTER_SIZE)
        store.sync()
