"""The p2pclone image format, version 1: pure encoding and decoding, no I/O.

An image is what a sender sends, kept in a file (docs/image-format.md)::

    preamble (16) | header (msgpack) | header check (32) | record ... | INDEX record | footer (32)

* **Preamble**: ``b"P2PCIMG\\n"``, format version u16, reserved u16, header length u32.
* **Header**: a msgpack map in the clear (so ``image info`` needs no passphrase):
  format, image id, creation time, source size and identity, chunk size and count,
  hash, compression, and the encryption parameters (cipher, KDF, salt, costs) or none.
* **Header check**: BLAKE3 of preamble + header; keyed with a key derived from the
  passphrase when the image is encrypted, so a wrong passphrase is known at once and
  nobody without it can alter the header unnoticed.
* **Records**, each a 32-byte header (magic, type, encoding, flags, chunk index, run
  count, chunk length, body length, CRC-32 of the header) and a body:

  - CHUNK: the chunk's BLAKE3 digest and its payload (zstd frame or raw bytes);
  - ZERO: a run of ``count`` all-zero chunks (no payload);
  - INDEX: where the latest record of every chunk is, every chunk's digest, and the
    root hash: the random-access table, written last.

  Encrypted, a body is ``nonce (12) | seal(digest) (48) | seal(payload) (n + 16)``
  (ZERO: ``nonce | seal(b"")``): AES-256-GCM under two keys derived from the
  passphrase, with a random nonce per record and the image id and record header as
  associated data, so a record can be neither altered nor moved to another place or
  another image.  The digest is sealed on its own so an interrupted save can resume
  by reading only record headers and digests.  Unencrypted: ``digest | payload``.
* **Footer**: ``b"P2PCEND\\n"``, offset and length of the INDEX record, when the save
  ended (u32 Unix seconds; 0: unknown), CRC-32.

Records may repeat a chunk (a resumed save re-sends what changed): the last one wins,
in file order and in the index.  Every record is independently checkable (its header
CRC, its seal, its digest over the decompressed bytes), so a damaged image still gives
back every intact chunk.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import AuthenticationError, IntegrityError, UsageError
from ..protocol.fields import MAX_DISK_SIZE
from ..protocol.frames import MAX_CHUNK_SIZE

FORMAT_VERSION = 1
MAGIC = b"P2PCIMG\n"
FOOTER_MAGIC = b"P2PCEND\n"
RECORD_MAGIC = b"P2PR"
HASH_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

_PREAMBLE = struct.Struct("<8sHHI")
PREAMBLE_SIZE = _PREAMBLE.size  # 16
CHECK_SIZE = 32
_RECORD = struct.Struct("<4sBBHQIII")
_CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = _RECORD.size + _CRC.size  # 32
_FOOTER = struct.Struct("<8sQQI")
FOOTER_SIZE = _FOOTER.size + _CRC.size  # 32
MAX_HEADER = 1 << 20

CHUNK, ZERO, INDEX = 1, 2, 3
RAW, ZSTD = 0, 1
FLAG_SEALED = 0x0001

#: Argon2id costs for a new image: 64 MiB and 3 passes, about 0.2 s here (RFC 9106's
#: second recommended option); stored in the header, so they can change later.
KDF_MEMORY_KIB = 64 * 1024
KDF_ITERATIONS = 3
KDF_LANES = 4
CIPHER = "aes-256-gcm"
KDF = "argon2id"
#: The most an image's header may ask of Argon2id.  The header can only be
#: authenticated with the key the KDF gives, so its costs are used before they are
#: known to be genuine: a header altered to ask for 64 GiB or a million passes must be
#: refused first, not obeyed.  16x and 3x today's costs leave room to raise them.
KDF_MAX_MEMORY_KIB = 1 << 20  # 1 GiB
KDF_MAX_ITERATIONS = 10
KDF_MAX_LANES = 16


class Keys:
    """The keys an encrypted image's passphrase gives: header MAC, digest and data seals."""

    def __init__(self, master: bytes) -> None:
        self.mac = blake3.blake3(master, derive_key_context="p2pclone image v1 header").digest()
        self.digest_aead = AESGCM(
            blake3.blake3(master, derive_key_context="p2pclone image v1 digest").digest()
        )
        self.data_aead = AESGCM(
            blake3.blake3(master, derive_key_context="p2pclone image v1 data").digest()
        )

    @classmethod
    def derive(cls, passphrase: str, enc: dict[str, Any], where: str) -> Keys:
        """The keys from ``passphrase`` and the header's (unauthenticated) KDF settings.

        Raises:
            UsageError: a cipher or KDF this release does not know.
            AuthenticationError: KDF settings out of bounds (``KDF_MAX_*``): refused
                before Argon2id runs, since they cannot be authenticated before it has.
        """
        if enc.get("kdf") != KDF or enc.get("cipher") != CIPHER:
            raise UsageError(
                f"the image is encrypted with {enc.get('cipher')}/{enc.get('kdf')}, which this "
                "p2pclone does not know: use a newer release"
            )
        salt: Any = enc.get("salt")
        memory: Any = enc.get("memory_kib")
        passes: Any = enc.get("iterations")
        lanes: Any = enc.get("lanes")
        if not (
            isinstance(salt, bytes)
            and 16 <= len(salt) <= 64
            and _int_in(lanes, 1, KDF_MAX_LANES)
            and _int_in(passes, 1, KDF_MAX_ITERATIONS)
            and _int_in(memory, 8 * lanes, KDF_MAX_MEMORY_KIB)
        ):
            raise AuthenticationError(
                f"the header of {where} asks for key-derivation costs p2pclone refuses "
                f"(m={memory!r} KiB, t={passes!r}, p={lanes!r}; at most "
                f"{KDF_MAX_MEMORY_KIB} KiB, {KDF_MAX_ITERATIONS} passes, {KDF_MAX_LANES} lanes): "
                "it was altered or not made by p2pclone; nothing was read or written"
            )
        kdf = Argon2id(salt=salt, length=32, iterations=passes, lanes=lanes, memory_cost=memory)
        return cls(kdf.derive(passphrase.encode()))


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def new_encryption() -> dict[str, Any]:
    return {
        "cipher": CIPHER,
        "kdf": KDF,
        "salt": os.urandom(16),
        "memory_kib": KDF_MEMORY_KIB,
        "iterations": KDF_ITERATIONS,
        "lanes": KDF_LANES,
    }


@dataclass
class Header:
    """What an image says about itself, readable without the passphrase."""

    source_size: int
    chunk_size: int
    source: dict[str, Any]
    image_id: bytes = field(default_factory=lambda: os.urandom(16))
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    encryption: dict[str, Any] | None = None
    generator: str = ""
    #: the used map's free ranges, as a PLAN body encodes them (protocol/freemap.py)
    free: bytes = b""
    free_count: int = 0

    @property
    def chunk_count(self) -> int:
        return -(-self.source_size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.source_size - index * self.chunk_size)

    def to_map(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "image_id": self.image_id,
            "created": self.created,
            "generator": self.generator,
            "source_size": self.source_size,
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
            "source": self.source,
            "hash": "blake3",
            "compression": "zstd",
            "encryption": self.encryption,
            "free": self.free,
            "free_count": self.free_count,
        }


def encode_header(header: Header, keys: Keys | None) -> bytes:
    """Preamble, header map and header check: the first bytes of an image."""
    body: bytes = msgpack.packb(header.to_map(), use_bin_type=True)
    head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body
    return head + _header_check(head, keys)


def _header_check(head: bytes, keys: Keys | None) -> bytes:
    if keys is None:
        return blake3.blake3(head).digest()
    return blake3.blake3(head, key=keys.mac).digest()


def header_length(preamble: bytes, where: str) -> int:
    """Total length of the header section, from the first PREAMBLE_SIZE bytes."""
    if len(preamble) < PREAMBLE_SIZE or preamble[:8] != MAGIC:
        raise UsageError(f"{where} is not a p2pclone image (it does not start like one)")
    version: int
    n: int
    _, version, _, n = _PREAMBLE.unpack_from(preamble)
    if version != FORMAT_VERSION:
        raise UsageError(
            f"{where} is a p2pclone image of format {version}; this p2pclone reads format "
            f"{FORMAT_VERSION}: use a newer release"
        )
    if n > MAX_HEADER:
        raise IntegrityError(f"the header of {where} is damaged (it claims {n} bytes)")
    return PREAMBLE_SIZE + n + CHECK_SIZE


def decode_header(data: bytes, where: str) -> Header:
    """The header, unauthenticated (``check_header`` authenticates it)."""
    end = header_length(data, where) - CHECK_SIZE
    try:
        m = msgpack.unpackb(data[PREAMBLE_SIZE:end], raw=False)
        header = Header(
            source_size=int(m["source_size"]),
            chunk_size=int(m["chunk_size"]),
            source=dict(m["source"]),
            image_id=bytes(m["image_id"]),
            created=str(m["created"]),
            encryption=m["encryption"],
            generator=str(m.get("generator", "")),
            free=bytes(m.get("free", b"")),
            free_count=int(m.get("free_count", 0)),
        )
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        header = None
    # Sizes as a PLAN allows them (protocol/messages.py): even unauthenticated (``image
    # info``), nothing here may divide by zero or size a read after a forged number.
    if (
        header is None
        or not 0 < header.chunk_size <= MAX_CHUNK_SIZE
        or not 0 <= header.source_size <= MAX_DISK_SIZE
        or not isinstance(header.encryption, dict | None)
    ):
        raise IntegrityError(f"the header of {where} is damaged and cannot be read")
    return header


def check_header(data: bytes, keys: Keys | None, where: str) -> None:
    """Authenticate the header (and so the passphrase); raise if it fails."""
    end = header_length(data, where) - CHECK_SIZE
    if _header_check(data[:end], keys) == data[end : end + CHECK_SIZE]:
        return
    if keys is not None:
        raise AuthenticationError(
            f"wrong passphrase for {where} (or its header was altered): check the "
            "passphrase it was saved with"
        )
    raise IntegrityError(f"the header of {where} is damaged (its checksum does not match)")


@dataclass(frozen=True, slots=True)
class RecordHead:
    type: int
    encoding: int
    flags: int
    index: int
    count: int
    length: int
    body_len: int
    raw: bytes

    @property
    def total(self) -> int:
        return RECORD_HEADER_SIZE + self.body_len


def _pack_head(
    rtype: int, encoding: int, sealed: bool, index: int, count: int, length: int, body_len: int
) -> bytes:
    head = _RECORD.pack(
        RECORD_MAGIC, rtype, encoding, FLAG_SEALED if sealed else 0, index, count, length, body_len
    )
    return head + _CRC.pack(zlib.crc32(head))


def decode_record_head(data: bytes | memoryview) -> RecordHead | None:
    """The record header at the start of ``data``, or None if it is not a valid one."""
    if len(data) < RECORD_HEADER_SIZE:
        return None
    raw = bytes(data[:RECORD_HEADER_SIZE])
    (crc,) = _CRC.unpack_from(raw, _RECORD.size)
    if zlib.crc32(raw[: _RECORD.size]) != crc:
        return None
    magic, rtype, encoding, flags, index, count, length, body_len = _RECORD.unpack_from(raw)
    if magic != RECORD_MAGIC or rtype not in (CHUNK, ZERO, INDEX) or encoding not in (RAW, ZSTD):
        return None
    return RecordHead(rtype, encoding, flags, index, count, length, body_len, raw)


class Codec:
    """Seals and opens the records of one image (encrypted when ``keys`` is given)."""

    def __init__(self, header: Header, keys: Keys | None) -> None:
        self.header = header
        self.keys = keys

    @property
    def sealed(self) -> bool:
        return self.keys is not None

    def _aad(self, head: bytes) -> bytes:
        return self.header.image_id + head

    # -- writing ------------------------------------------------------------------

    def chunk_record_size(self, payload_len: int) -> int:
        """Bytes of a CHUNK record with a payload this long (known before sealing)."""
        body = NONCE_SIZE + HASH_SIZE + 2 * TAG_SIZE if self.sealed else HASH_SIZE
        return RECORD_HEADER_SIZE + body + payload_len

    def zero_record_size(self) -> int:
        return RECORD_HEADER_SIZE + (NONCE_SIZE + TAG_SIZE if self.sealed else 0)

    def chunk(
        self, index: int, length: int, digest: bytes, encoding: int, payload: bytes | memoryview
    ) -> list[bytes | memoryview]:
        """A CHUNK record, as buffers to write in order."""
        if self.keys is None:
            head = _pack_head(CHUNK, encoding, False, index, 1, length, HASH_SIZE + len(payload))
            return [head + digest, payload]
        body_len = NONCE_SIZE + HASH_SIZE + TAG_SIZE + len(payload) + TAG_SIZE
        head = _pack_head(CHUNK, encoding, True, index, 1, length, body_len)
        nonce = os.urandom(NONCE_SIZE)
        aad = self._aad(head)
        sealed_digest = self.keys.digest_aead.encrypt(nonce, digest, aad)
        return [head + nonce + sealed_digest, self.keys.data_aead.encrypt(nonce, payload, aad)]

    def zero(self, index: int, count: int) -> bytes:
        if self.keys is None:
            return _pack_head(ZERO, RAW, False, index, count, 0, 0)
        head = _pack_head(ZERO, RAW, True, index, count, 0, NONCE_SIZE + TAG_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        return head + nonce + self.keys.digest_aead.encrypt(nonce, b"", self._aad(head))

    def index(
        self,
        offsets: list[int],
        hashes: bytes,
        root: bytes,
        unreadable: Sequence[tuple[int, int]] = (),
    ) -> bytes:
        """The INDEX record; ``unreadable``: the source's ``(offset, length)`` ranges
        that could not be read (zeros in the records), at most one per chunk."""
        table: dict[str, Any] = {
            "offsets": struct.pack(f"<{len(offsets)}Q", *offsets),
            "hashes": hashes,
            "root": root,
        }
        if unreadable:
            table["unreadable"] = b"".join(struct.pack("<QQ", o, n) for o, n in unreadable)
        body = zlib.compress(msgpack.packb(table, use_bin_type=True), 1)
        if self.keys is None:
            head = _pack_head(INDEX, RAW, False, 0, len(offsets), 0, HASH_SIZE + len(body))
            return head + blake3.blake3(body).digest() + body
        nonce = os.urandom(NONCE_SIZE)
        head = _pack_head(INDEX, RAW, True, 0, len(offsets), 0, NONCE_SIZE + len(body) + TAG_SIZE)
        return head + nonce + self.keys.data_aead.encrypt(nonce, body, self._aad(head))

    # -- reading ------------------------------------------------------------------

    def digest_span(self, head: RecordHead) -> int:
        """How many body bytes ``open_digest`` needs (CHUNK and ZERO records)."""
        if head.type == ZERO:
            return NONCE_SIZE + TAG_SIZE if self.sealed else 0
        return NONCE_SIZE + HASH_SIZE + TAG_SIZE if self.sealed else HASH_SIZE

    def open_digest(self, head: RecordHead, body: bytes) -> bytes | None:
        """The digest a CHUNK record claims (b"" for ZERO), or None if it fails its seal."""
        if head.flags != (FLAG_SEALED if self.sealed else 0):
            return None
        if not self.sealed:
            return b"" if head.type == ZERO else bytes(body[:HASH_SIZE])
        assert self.keys is not None
        nonce = body[:NONCE_SIZE]
        try:
            return self.keys.digest_aead.decrypt(
                nonce, body[NONCE_SIZE : self.digest_span(head)], self._aad(head.raw)
            )
        except InvalidTag:
            return None

    def open_chunk(self, head: RecordHead, body: bytes | memoryview) -> tuple[bytes, bytes]:
        """(digest, payload) of a CHUNK record; IntegrityError if it fails its seal."""
        digest = self.open_digest(head, bytes(body[: self.digest_span(head)]))
        if digest is None or len(digest) != HASH_SIZE:
            raise IntegrityError("record failed its seal")
        if not self.sealed:
            return digest, bytes(body[HASH_SIZE:])
        assert self.keys is not None
        nonce = bytes(body[:NONCE_SIZE])
        try:
            payload = self.keys.data_aead.decrypt(
                nonce, body[self.digest_span(head) :], self._aad(head.raw)
            )
        except InvalidTag:
            raise IntegrityError("record failed its seal") from None
        return digest, payload

    def open_index(
        self, head: RecordHead, body: bytes
    ) -> tuple[list[int], bytes, bytes, list[tuple[int, int]]]:
        """(offsets, hashes, root, unreadable ranges) of an INDEX record;
        IntegrityError if damaged."""
        try:
            if self.keys is None:
                if blake3.blake3(body[HASH_SIZE:]).digest() != body[:HASH_SIZE]:
                    raise IntegrityError("index failed its checksum")
                packed = body[HASH_SIZE:]
            else:
                packed = self.keys.data_aead.decrypt(
                    body[:NONCE_SIZE], body[NONCE_SIZE:], self._aad(head.raw)
                )
            # The table's size follows from the chunk count: a larger one is a forgery,
            # refused before it fills memory (a zlib bomb in an unsealed image).
            limit = index_table_limit(head.count)
            inflate = zlib.decompressobj()
            table = inflate.decompress(packed, limit)
            if inflate.unconsumed_tail or not inflate.eof:
                raise IntegrityError("index is larger than its chunk count allows")
            m = msgpack.unpackb(table, raw=False)
            offsets = list(struct.unpack(f"<{head.count}Q", m["offsets"]))
            hashes, root = bytes(m["hashes"]), bytes(m["root"])
            packed_bad = bytes(m.get("unreadable", b""))
            flat = struct.unpack(f"<{len(packed_bad) // 8}Q", packed_bad)
        except (InvalidTag, zlib.error, ValueError, KeyError, TypeError, struct.error):
            raise IntegrityError("index failed its checksum") from None
        if len(hashes) != HASH_SIZE * head.count:
            raise IntegrityError("index failed its checksum")
        unreadable = list(zip(flat[::2], flat[1::2], strict=True))
        if len(unreadable) > head.count or not _apart(unreadable, self.header.source_size):
            raise IntegrityError("index lists unreadable ranges that do not fit the source")
        return offsets, hashes, root, unreadable


def _apart(ranges: list[tuple[int, int]], size: int) -> bool:
    """Sorted, non-empty, apart, inside ``[0, size)``."""
    end = -1
    for offset, length in ranges:
        if length <= 0 or offset <= end or offset + length > size:
            return False
        end = offset + length
    return True


def index_table_limit(count: int) -> int:
    """The most bytes the msgpack table of an INDEX of ``count`` chunks can take (an
    offset, a digest and at most one unreadable range per chunk)."""
    return (8 + HASH_SIZE + 16) * count + 256


def index_record_limit(count: int) -> int:
    """The most bytes an INDEX record of ``count`` chunks can take (zlib adds at most
    5 bytes per 16 KiB that does not compress, and a few of its own)."""
    table = index_table_limit(count)
    return RECORD_HEADER_SIZE + NONCE_SIZE + TAG_SIZE + HASH_SIZE + table + table // 1000 + 64


def encode_footer(index_offset: int, index_len: int, saved: int = 0) -> bytes:
    """``saved``: when the save ended (Unix seconds; the footer's u32 that was
    reserved, 0 in images made before it: unknown)."""
    head = _FOOTER.pack(FOOTER_MAGIC, index_offset, index_len, saved & 0xFFFFFFFF)
    return head + _CRC.pack(zlib.crc32(head))


def footer_saved(data: bytes) -> int:
    """When the save that wrote this footer ended (Unix seconds), 0 if unknown."""
    if decode_footer(data) is None:
        return 0
    return int(_FOOTER.unpack_from(data)[3])


def decode_footer(data: bytes) -> tuple[int, int] | None:
    """(index offset, index record length) from the last FOOTER_SIZE bytes, or None."""
    if len(data) != FOOTER_SIZE or data[:8] != FOOTER_MAGIC:
        return None
    (crc,) = _CRC.unpack_from(data, _FOOTER.size)
    if zlib.crc32(data[: _FOOTER.size]) != crc:
        return None
    _, offset, length, _ = _FOOTER.unpack_from(data)
    return offset, length
