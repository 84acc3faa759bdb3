"""Reading images: the header, the index (or a scan of the records), and chunks.

:class:`ImageSource` looks like a disk to the sender (``size``, ``info``, ``read``,
``next_data``), so an image can be the source of a live clone or of a restore, and it
also hands the sender a chunk's stored payload as it is (no second compression).
Everything here blocks: callers run it in worker threads.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass, field

import blake3

from ..disks.masked import next_used
from ..errors import AuthenticationError, IntegrityError, RemoteProtocolError
from ..pipeline import Encoded, chunk_span, decode_chunk, encode_chunk
from ..protocol import HASH_SIZE, Chunk, Plan
from ..protocol.freemap import decode_free
from ..protocol.root import zero_digest
from ..volumes.extents import Extents
from . import format as fmt
from .store import Store
from .urls import open_store, read_options

#: Fully re-check the records in this much of the tail of an interrupted save: data
#: written after the last sync may be missing even where record headers survived.
RECHECK_TAIL = (256 + 16) << 20
WINDOW = 32 << 20  # over SMB: four 8 MiB requests at once
_PEEK = fmt.RECORD_HEADER_SIZE + fmt.NONCE_SIZE + HASH_SIZE + fmt.TAG_SIZE
MISSING, DATA, ZEROS = 0, 1, 2


def read_header(store: Store, url: str) -> tuple[fmt.Header, bytes]:
    """(header, its raw bytes incl. the check), unauthenticated."""
    first = store.read(0, fmt.PREAMBLE_SIZE)
    n = fmt.header_length(first, url)
    data = store.read(0, n)
    if len(data) < n:
        raise IntegrityError(f"{url} ends inside its header: the image is truncated")
    return fmt.decode_header(data, url), data


def scan_records(
    store: Store, codec: fmt.Codec, url: str, start: int | None = None, deep: bool = True
) -> tuple[dict[int, tuple[int, bytes]], int]:
    """Walk the records from the start: {chunk: (record offset, digest)} of the intact
    ones (the last record of a chunk wins), and where the intact part ends.

    With ``deep``, the records near the end are also decrypted, decompressed and hashed
    (a crash can leave a record's header on disk without all of its data).
    """
    header = codec.header
    if start is None:
        _, raw = read_header(store, url)
        start = len(raw)
    size = store.size()
    known: dict[int, tuple[int, bytes]] = {}
    chunk_records: list[tuple[int, fmt.RecordHead, bytes]] = []
    pos = start
    while pos + fmt.RECORD_HEADER_SIZE <= size:
        peek = store.read(pos, _PEEK)
        head = fmt.decode_record_head(peek)
        if head is None or pos + head.total > size:
            break
        if head.type == fmt.INDEX:
            pos += head.total
            continue
        run = range(head.index, head.index + head.count)
        if not head.count or run.stop > header.chunk_count:
            break
        if head.type == fmt.CHUNK and (
            head.count != 1 or head.length != header.chunk_length(head.index)
        ):
            break
        digest = codec.open_digest(head, peek[fmt.RECORD_HEADER_SIZE :])
        if digest is None:
            break
        if head.type == fmt.CHUNK:
            known[head.index] = (pos, digest)
            chunk_records.append((pos, head, digest))
        else:
            for i in run:
                known[i] = (pos, zero_digest(header.chunk_length(i)))
        pos += head.total
    if deep:
        plan = Plan(source_size=header.source_size, chunk_size=header.chunk_size)
        for at, head, digest in reversed(chunk_records):
            if at < pos - RECHECK_TAIL:
                break
            body = store.read(at + fmt.RECORD_HEADER_SIZE, head.body_len)
            try:
                _open_checked(codec, plan, head, body, digest)
            except IntegrityError:
                # Cut here: this record and everything after it are written again.
                pos = at
                known = {i: v for i, v in known.items() if v[0] < at}
    return known, pos


def _open_checked(
    codec: fmt.Codec, plan: Plan, head: fmt.RecordHead, body: bytes, digest: bytes
) -> bytes | memoryview:
    got_digest, payload = codec.open_chunk(head, body)
    if got_digest != digest:
        raise IntegrityError("digest mismatch")
    chunk = Chunk(
        index=head.index, length=head.length, digest=digest, encoding=head.encoding, body=payload
    )
    return decode_chunk(chunk, plan)


#: What an intact INDEX says: offsets, hashes, root, unreadable ranges, where it is.
IndexTable = tuple[list[int], bytes, bytes, list[tuple[int, int]], int]


def read_index(store: Store, codec: fmt.Codec) -> IndexTable | None:
    """(offsets, hashes, root, unreadable ranges, offset of the INDEX record) from an
    intact footer and index, or None when the image has none (an interrupted save, or
    damage)."""
    size = store.size()
    if size < fmt.FOOTER_SIZE:
        return None
    footer = fmt.decode_footer(store.read(size - fmt.FOOTER_SIZE, fmt.FOOTER_SIZE))
    if footer is None:
        return None
    at, length = footer
    # The footer has only a CRC: a forged length must not size the read.
    if length > fmt.index_record_limit(codec.header.chunk_count) or at + length > size:
        return None
    raw = store.read(at, length)
    head = fmt.decode_record_head(raw)
    if head is None or head.type != fmt.INDEX or head.total != length:
        return None
    if head.count != codec.header.chunk_count:
        return None
    try:
        offsets, hashes, root, unreadable = codec.open_index(head, raw[fmt.RECORD_HEADER_SIZE :])
    except IntegrityError:
        return None
    return offsets, hashes, root, unreadable, at


@dataclass
class Index:
    """Where every chunk is: record offsets, digests, and the saved root hash."""

    offsets: array[int]
    hashes: bytearray
    root: bytes | None  # None when rebuilt by a scan (no intact index)
    kinds: bytearray
    #: source ranges its disk could not read (zeros in the records), from the index
    unreadable: Extents = field(default_factory=Extents)


class ImageSource:
    """An image opened for reading (see the module docstring)."""

    def __init__(
        self,
        url: str,
        store: Store,
        header: fmt.Header,
        keys: fmt.Keys | None,
        *,
        scan: bool = False,
    ) -> None:
        self.url = url
        self.store = store
        self.header = header
        self.codec = fmt.Codec(header, keys)
        self.size = header.source_size
        # What the source's filesystems did not use: zeros in the image, and never
        # written by a restore (the plan sent from here carries it).
        self.free = self.stored_free = _header_free(header, url)
        self.chunk_size = header.chunk_size
        self.info: dict[str, str | int] = {
            k: v for k, v in header.source.items() if isinstance(v, (str, int))
        }
        self.plan = Plan(
            source_size=header.source_size, chunk_size=header.chunk_size, free=self.free
        )
        self.index = self._load_index(scan)
        # Records are read through a window of WINDOW bytes: a restore reads them in
        # order, and one large read costs far less than one per record (over SMB, one
        # request per record).  Worker threads share it.
        self._window: tuple[int, bytes] = (0, b"")
        self._window_lock = threading.Lock()

    def _fetch(self, at: int, length: int) -> bytes:
        with self._window_lock:
            w_at, data = self._window
            if not (w_at <= at and at + length <= w_at + len(data)):
                data = self.store.read(at, max(length, WINDOW))
                w_at = at
                self._window = (w_at, data)
            return data[at - w_at : at - w_at + length]

    @classmethod
    def open(
        cls, url: str, code: str, password: str | None = None, *, need_index: bool = True
    ) -> ImageSource:
        """Open the image at ``url`` and authenticate its header.  Blocking.

        Only what the URL's query allows by name is accepted (image/store.py,
        ``read_options``): an image that is not encrypted, and so not authenticated,
        with ``?plain=1``; one without an intact index and root, found by a scan of its
        records, with ``?salvage=1`` or ``need_index=False`` (``image verify``, which
        only reports).

        Raises:
            AuthenticationError: a plain image without ``?plain=1``; no or a wrong
                passphrase; a header that is altered or asks for absurd KDF costs.
            IntegrityError: no intact index, without ``?salvage=1``.
            UsageError, TransportError: the URL; the share.
        """
        options = read_options(url)
        store = open_store(url, create=False, password=password)
        url = store.url  # without a password that the URL may hold
        try:
            header, raw = read_header(store, url)
            keys = None
            if header.encryption is None:
                # Its header check is a plain BLAKE3 anyone can compute: whoever can
                # write to the share could have made it, whatever disk it holds.
                if not options.plain:
                    raise AuthenticationError(
                        f"{url} is not encrypted, so nothing proves who made it (p2pclone "
                        "never saves such images): if you trust it, add ?plain=1 to its "
                        "URL to read it anyway"
                    )
            else:
                if not code:
                    raise AuthenticationError(
                        f"{url} is encrypted: give its passphrase with --passphrase (or set "
                        "P2PCLONE_PASSPHRASE)"
                    )
                keys = fmt.Keys.derive(code, header.encryption, url)
            fmt.check_header(raw, keys, url)
            return cls(url, store, header, keys, scan=options.salvage or not need_index)
        except BaseException:
            store.close()
            raise

    def _load_index(self, scan: bool) -> Index:
        n = self.header.chunk_count
        found = read_index(self.store, self.codec)
        if found is not None:
            offsets, hashes, root, unreadable, _ = found
            kinds = bytearray(n)
            for i in range(n):
                if offsets[i]:
                    digest = hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)]
                    zero = digest == zero_digest(self.header.chunk_length(i))
                    kinds[i] = ZEROS if zero else DATA
            bad = Extents.of((o, o + k) for o, k in unreadable)
            return Index(array("Q", offsets), bytearray(hashes), root, kinds, bad)
        if not scan:
            # A scan finds, for each chunk, its last record *in what is left*: in a
            # file cut back before a re-save's last records, an older save's chunk.
            raise IntegrityError(
                f"the image {self.url} has no intact index (an interrupted save, or a file "
                "cut short or rolled back), so it cannot prove its records are the latest "
                "save: run the same send again to complete it, or add ?salvage=1 to the "
                "URL to use whatever its records hold"
            )
        # No intact index (an interrupted save, or damage): find the records by a scan.
        known, _ = scan_records(self.store, self.codec, self.url, deep=False)
        index = Index(array("Q", bytes(8 * n)), bytearray(HASH_SIZE * n), None, bytearray(n))
        for i, (offset, digest) in known.items():
            index.offsets[i] = offset
            index.hashes[HASH_SIZE * i : HASH_SIZE * (i + 1)] = digest
            zero = digest == zero_digest(self.header.chunk_length(i))
            index.kinds[i] = ZEROS if zero else DATA
        return index

    @property
    def complete(self) -> bool:
        return self.index.root is not None

    def salvage_note(self) -> str | None:
        """Why a copy from this image is not a success even when every chunk arrived
        (opened with ``?salvage=1`` and no intact index), or None."""
        if self.complete:
            return None
        return (
            f"salvaged from {self.url} without its index: every chunk was checked against "
            "its own hash, but not against the saved root hash, so some may be from an "
            "older save; check the result before you trust it"
        )

    @property
    def unreadable(self) -> Extents:
        """The ranges of the source its disk could not read when the image was saved."""
        return self.index.unreadable

    def digest(self, index: int) -> bytes:
        return bytes(self.index.hashes[HASH_SIZE * index : HASH_SIZE * (index + 1)])

    def missing(self) -> list[int]:
        return [i for i, k in enumerate(self.index.kinds) if k == MISSING]

    def _damaged(self, index: int, why: str) -> IntegrityError:
        return IntegrityError(
            f"chunk {index} ({chunk_span(self.plan, index)}) of the image {self.url} {why}"
        )

    def _record(self, index: int) -> tuple[fmt.RecordHead, bytes, bytes]:
        """(record header, digest, payload) of chunk ``index``'s record, authenticated."""
        at = self.index.offsets[index]
        if self.index.kinds[index] == MISSING:
            raise self._damaged(
                index, "is not in it: the save was interrupted or the image is truncated"
            )
        want = (
            fmt.RECORD_HEADER_SIZE
            + self.header.chunk_size
            + 2 * fmt.TAG_SIZE
            + fmt.NONCE_SIZE
            + HASH_SIZE
        )
        raw = self._fetch(at, want)
        head = fmt.decode_record_head(raw)
        # ``want`` is the largest a CHUNK record can be (a payload never exceeds its
        # chunk): a longer one is damage, whose length must not size a read.
        if head is None or head.type != fmt.CHUNK or head.index != index or head.total > want:
            raise self._damaged(index, "is damaged (its record header is unreadable)")
        if len(raw) < head.total:
            raw += self.store.read(at + len(raw), head.total - len(raw))
        if len(raw) < head.total:
            raise self._damaged(index, "is cut short: the image is truncated")
        try:
            digest, payload = self.codec.open_chunk(head, raw[fmt.RECORD_HEADER_SIZE : head.total])
        except IntegrityError:
            raise self._damaged(
                index, "is damaged (its record fails its checksum or seal)"
            ) from None
        if digest != self.digest(index):
            raise self._damaged(index, "is damaged (its record disagrees with the index)")
        return head, digest, payload

    def read_chunk(self, index: int) -> bytes | memoryview:
        """The plain bytes of chunk ``index``, checked against its BLAKE3."""
        length = self.header.chunk_length(index)
        if self.index.kinds[index] == ZEROS:
            return bytes(length)
        head, digest, payload = self._record(index)
        chunk = Chunk(
            index=index, length=length, digest=digest, encoding=head.encoding, body=payload
        )
        try:
            return decode_chunk(chunk, self.plan)
        except IntegrityError:
            raise self._damaged(
                index, "is damaged (it does not decode to its BLAKE3 hash)"
            ) from None

    # -- the sender's view of a disk ----------------------------------------------------

    def read(self, offset: int, length: int) -> bytes | memoryview:
        index, rem = divmod(offset, self.chunk_size)
        if rem or length != self.header.chunk_length(index):
            raise ValueError("an image is read in whole chunks")
        data = self.read_chunk(index)
        holes = self.free.clip(offset, offset + length)
        if not holes or self.free is self.stored_free:  # stored free bytes are zeros
            return data
        masked = bytearray(data)
        for a, b in holes:
            masked[a - offset : b - offset] = bytes(b - a)
        return bytes(masked)

    def next_data(self, offset: int) -> int:
        offset = next_used(self.free, offset)
        i = offset // self.chunk_size
        kinds = self.index.kinds
        while i < len(kinds) and kinds[i] == ZEROS:
            i += 1
        return min(self.size, max(offset, i * self.chunk_size))

    def encode(self, plan: Plan, index: int, have: bytes | None) -> Encoded:
        """What to send for chunk ``index``: its stored payload as it is, when it can be
        (not when a smaller target cut the source off inside it: then it is masked)."""
        start = index * self.chunk_size
        end = start + self.header.chunk_length(index)
        masked = self.free is not self.stored_free and (
            self.free.clip(start, end) != self.stored_free.clip(start, end)
        )
        if masked or self.unreadable.clip(start, end):  # unreadable: named (read_chunk)
            return encode_chunk(self, plan, index, have)
        digest = self.digest(index)
        if self.index.kinds[index] == ZEROS:
            return Encoded(index, same=have) if have == digest else Encoded(index, zero=True)
        if have == digest and self.index.kinds[index] == DATA:
            return Encoded(index, same=digest)
        try:
            head, digest, payload = self._record(index)
        except IntegrityError:
            return Encoded(index, lost=True)
        chunk = Chunk(
            index=index, length=head.length, digest=digest, encoding=head.encoding, body=payload
        )
        if not self.codec.sealed:
            # No seal vouches for the payload: check it here, so damage is blamed on
            # the image and not on the link.
            try:
                decode_chunk(chunk, self.plan)
            except IntegrityError:
                return Encoded(index, lost=True)
        return Encoded(index, chunk)

    def close(self) -> None:
        self.store.close()


def _header_free(header: fmt.Header, url: str) -> Extents:
    try:
        return decode_free(header.free, header.source_size, header.free_count)
    except RemoteProtocolError:
        raise IntegrityError(
            f"the header of {url} is damaged: its map of the source's free space does not read"
        ) from None


def root_of(hashes: bytes) -> bytes:
    """The root hash over per-chunk digests (as the protocol computes it)."""
    return blake3.blake3(hashes).digest()
