"""NTFS: free clusters from ``$Bitmap`` (MFT record 6), one bit per cluster.

Learned from ntfs-3g (libntfs-3g/mft.c, runlist.c, logfile.c) and partclone's ntfs
reader.  The first MFT records lie where the boot sector says; each record's update
sequence ("fixup") is checked and undone before it is parsed; ``$Bitmap``'s data runs
are decoded and its bitmap read.  The volume is copied whole when ``$Volume`` is marked
dirty, when ``$LogFile`` is not clean (a crash, or Windows hibernated or "fast
startup": the log still holds changes), when ``$Bitmap`` needs an attribute list or
is compressed or sparse, when anything disagrees with the boot sector, or when the
bitmap calls free a cluster that ``$Boot``, ``$MFT`` or ``$Bitmap`` itself occupies.  The backup
boot sector past the last cluster is never free.
"""

from __future__ import annotations

import struct

from .extents import Extents, bitmap_runs
from .fs import FsMap, Read, Unsupported

_VOLUME, _BITMAP, _LOGFILE = 3, 6, 2
_DATA, _VOLUME_INFORMATION, _ATTRIBUTE_LIST = 0x80, 0x70, 0x20
_END = 0xFFFFFFFF


class _Boot:
    def __init__(self, raw: bytes):
        self.sector = struct.unpack_from("<H", raw, 11)[0]
        spc = raw[13]
        self.cluster = self.sector * (spc if spc <= 0x80 else 1 << (256 - spc))
        self.sectors = struct.unpack_from("<Q", raw, 40)[0]
        self.mft_lcn = struct.unpack_from("<Q", raw, 48)[0]
        cpr = struct.unpack_from("<b", raw, 64)[0]
        self.record = cpr * self.cluster if cpr > 0 else 1 << -cpr
        self.clusters = self.sectors * self.sector // self.cluster if self.cluster else 0

    def check(self, size: int) -> None:
        if self.sector not in (512, 1024, 2048, 4096) or not 512 <= self.cluster <= 1 << 21:
            raise Unsupported("an implausible boot sector")
        if not 1024 <= self.record <= 4096 or self.sectors * self.sector > size:
            raise Unsupported("a boot sector that disagrees with its partition")
        if not 0 < self.mft_lcn < self.clusters:
            raise Unsupported("an MFT outside the volume")


def read_map(read: Read, size: int) -> FsMap:
    """The free ranges of the NTFS at the start of ``read``.

    Raises:
        Unsupported: why it must be copied whole.
    """
    boot = _Boot(read(0, 512))
    boot.check(size)
    free = _free(read, boot)
    return FsMap("ntfs", free, fs_size=boot.sectors * boot.sector)


def _free(read: Read, boot: _Boot) -> Extents:
    if _volume_dirty(read, boot):
        raise Unsupported("a volume marked dirty (run chkdsk /f in Windows, or ntfsfix -d)")
    if not _logfile_clean(read, boot):
        raise Unsupported(
            "a journal ($LogFile) with changes not yet applied: Windows was not shut down "
            "cleanly, or is hibernated (fast startup); shut it down fully first"
        )
    runs, length = _data_runs(_record(read, boot, _BITMAP), boot, "$Bitmap")
    if length * 8 < boot.clusters:
        raise Unsupported("a $Bitmap shorter than the volume")
    bitmap = b"".join(read(lcn * boot.cluster, count * boot.cluster) for lcn, count in runs)
    bits = Extents.of(bitmap_runs(bitmap[:length], boot.clusters, value=0))
    # The bitmap's own counterpart of a superblock count: the clusters NTFS's own
    # metadata sits in ($Boot, the MFT, $Bitmap) must be in use, or the map is doubtful.
    mft, _ = _data_runs(_record(read, boot, 0), boot, "$MFT")
    for lcn, count in [(0, 1), *mft, *runs]:
        if bits.clip(lcn, lcn + count):
            raise Unsupported(
                f"a $Bitmap that calls its own metadata free (cluster {lcn}); run chkdsk"
            )
    c = boot.cluster
    return Extents.of((a * c, b * c) for a, b in bits)


def _record(read: Read, boot: _Boot, number: int) -> bytes:
    """MFT record ``number`` (one of the first 16, which are always contiguous), fixed up."""
    raw = bytearray(read(boot.mft_lcn * boot.cluster + number * boot.record, boot.record))
    if raw[:4] != b"FILE":
        raise Unsupported(f"MFT record {number} is damaged (no FILE signature)")
    _fixup(raw, f"MFT record {number}")
    if not struct.unpack_from("<H", raw, 22)[0] & 1:
        raise Unsupported(f"MFT record {number} is not in use")
    return bytes(raw)


def _fixup(raw: bytearray, what: str) -> None:
    usa_ofs, usa_count = struct.unpack_from("<HH", raw, 4)
    stride = 512  # NTFS update sequences protect every 512 bytes, whatever the sector
    if usa_count < 2 or usa_ofs + 2 * usa_count > stride or (usa_count - 1) * stride > len(raw):
        raise Unsupported(f"{what} has a malformed update sequence")
    usn = raw[usa_ofs : usa_ofs + 2]
    for k in range(1, usa_count):
        end = k * stride
        if raw[end - 2 : end] != usn:
            raise Unsupported(f"{what} is torn (its update sequence does not match)")
        raw[end - 2 : end] = raw[usa_ofs + 2 * k : usa_ofs + 2 * k + 2]


def _attributes(record: bytes) -> list[tuple[int, int, bytes]]:
    """``(type, non-resident flag, the attribute's bytes)``, unnamed ones only, plus
    every attribute list (named or not)."""
    out = []
    pos = struct.unpack_from("<H", record, 20)[0]
    while pos + 8 <= len(record):
        kind, length = struct.unpack_from("<II", record, pos)
        if kind == _END:
            break
        if length < 16 or pos + length > len(record):
            raise Unsupported("an MFT record with a malformed attribute")
        attr = record[pos : pos + length]
        if attr[9] == 0 or kind == _ATTRIBUTE_LIST:  # unnamed
            out.append((kind, attr[8], attr))
        pos += length
    return out


def _data_runs(record: bytes, boot: _Boot, what: str) -> tuple[list[tuple[int, int]], int]:
    """The ``$DATA`` runs ``(lcn, clusters)`` of a record, and the data's length."""
    attrs = _attributes(record)
    if any(kind == _ATTRIBUTE_LIST for kind, _n, _a in attrs):
        raise Unsupported(f"{what} split over several MFT records (an attribute list)")
    data = [a for kind, nonres, a in attrs if kind == _DATA and nonres]
    if len(data) != 1:
        raise Unsupported(f"{what} has no single non-resident data attribute")
    attr = data[0]
    if struct.unpack_from("<H", attr, 12)[0] & 0x00FF or struct.unpack_from("<Q", attr, 16)[0]:
        raise Unsupported(f"{what} is compressed or does not start at its first cluster")
    pairs = struct.unpack_from("<H", attr, 32)[0]
    length = struct.unpack_from("<Q", attr, 48)[0]
    runs = _decode_runs(attr[pairs:], boot.clusters, what)
    if sum(n for _l, n in runs) * boot.cluster < length:
        raise Unsupported(f"{what}'s data runs are shorter than its data")
    return runs, length


def _decode_runs(data: bytes, clusters: int, what: str) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    pos, lcn = 0, 0
    while pos < len(data) and data[pos]:
        head = data[pos]
        nlen, noff = head & 0x0F, head >> 4
        if not nlen or nlen > 8 or noff > 8 or pos + 1 + nlen + noff > len(data):
            raise Unsupported(f"{what} has a malformed run list")
        count = int.from_bytes(data[pos + 1 : pos + 1 + nlen], "little")
        if not noff:
            raise Unsupported(f"{what} is sparse")
        lcn += int.from_bytes(data[pos + 1 + nlen : pos + 1 + nlen + noff], "little", signed=True)
        if lcn < 0 or lcn + count > clusters:
            raise Unsupported(f"{what} has a run outside the volume")
        runs.append((lcn, count))
        pos += 1 + nlen + noff
    return runs


def _volume_dirty(read: Read, boot: _Boot) -> bool:
    for kind, nonres, attr in _attributes(_record(read, boot, _VOLUME)):
        if kind == _VOLUME_INFORMATION and not nonres:
            offset = struct.unpack_from("<H", attr, 20)[0]
            return bool(struct.unpack_from("<H", attr, offset + 10)[0] & 0x0001)
    raise Unsupported("$Volume has no volume information")


def _logfile_clean(read: Read, boot: _Boot) -> bool:
    """ntfs-3g's test: the first restart page's area has no client in use, or says the
    volume is clean; a log that was emptied (all 0xFF, as ntfsfix and mkntfs leave it)
    is clean too."""
    runs, _length = _data_runs(_record(read, boot, _LOGFILE), boot, "$LogFile")
    if not runs:
        raise Unsupported("$LogFile has no data")
    start = runs[0][0] * boot.cluster
    page = bytearray(read(start, 4096))
    if page == b"\xff" * len(page):
        return True
    if page[:4] != b"RSTR":
        return False
    page_size = struct.unpack_from("<I", page, 16)[0]
    if page_size != 4096:
        if page_size & (page_size - 1) or not 512 <= page_size <= 65536:
            return False
        page = bytearray(read(start, page_size))
    _fixup(page, "$LogFile's restart page")
    area = struct.unpack_from("<H", page, 24)[0]
    if area + 16 > len(page):
        return False
    in_use, flags = struct.unpack_from("<HH", page, area + 12)
    return in_use == 0xFFFF or bool(flags & 0x0002)
