"""``p2pclone image info | verify | export``: looking into an image without a receiver."""

from __future__ import annotations

import datetime
import functools
from typing import IO, Any

import trio

from ..errors import IntegrityError, P2PCloneError
from ..pipeline import default_threads
from ..session import Done, Progress, Reporter, Verifying, no_report
from ..units import merged
from ..volumes.layout import left_out, partitions_hit
from ..volumes.table import SCHEME_NAMES
from . import format as fmt
from .reader import DATA, MISSING, ImageSource, read_header, root_of
from .urls import open_store


def info(url: str, password: str | None = None, passphrase: str | None = None) -> dict[str, Any]:
    """What the image says about itself; needs no passphrase, but its root hash is in
    its index, which only its passphrase opens (or ``?plain=1`` for an unencrypted
    one).  Blocking."""
    store = open_store(url, create=False, password=password)
    url = store.url  # without a password that the URL may hold
    try:
        header, _ = read_header(store, url)
        stored = store.size()
        tail = (
            store.read(stored - fmt.FOOTER_SIZE, fmt.FOOTER_SIZE)
            if stored >= fmt.FOOTER_SIZE
            else b""
        )
    finally:
        store.close()
    enc = header.encryption
    return {
        "url": url,
        "format": fmt.FORMAT_VERSION,
        "created": header.created,
        "generator": header.generator,
        "source": header.source,
        "source_bytes": header.source_size,
        "chunk_size": header.chunk_size,
        "chunks": header.chunk_count,
        "stored_bytes": stored,
        "ratio": round(stored / header.source_size, 4) if header.source_size else 0.0,
        "complete": fmt.decode_footer(tail) is not None,
        "saved": _when(fmt.footer_saved(tail)),
        "root": _root(url, header.encryption is not None, passphrase, password),
        "encrypted": enc is not None,
        "cipher": enc["cipher"] if enc else None,
        "kdf": (
            f"{enc['kdf']} (m={enc['memory_kib']} KiB, t={enc['iterations']}, p={enc['lanes']})"
            if enc
            else None
        ),
    }


def _in(where: str) -> str:
    return where if where.startswith("outside") else f"in {where}"


def _when(seconds: int) -> str | None:
    if not seconds:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _root(url: str, encrypted: bool, passphrase: str | None, password: str | None) -> str | None:
    """The root hash the image's index holds, when it can be opened and trusted: with
    the passphrase, or an unencrypted image given ``?plain=1``; else None."""
    if encrypted and not passphrase:
        return None
    try:
        source = ImageSource.open(url, passphrase or "", password)
    except P2PCloneError:
        return None
    try:
        return source.index.root.hex() if source.index.root else None
    finally:
        source.close()


def ranges(source: ImageSource, indices: list[int]) -> str:
    """Chunk indices as merged byte ranges: 'bytes 0-1048575, 4194304-5242879'."""
    spans: list[tuple[int, int]] = []
    for i in sorted(indices):
        start = i * source.chunk_size
        end = start + source.header.chunk_length(i)
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    shown = ", ".join(f"{a}-{b - 1}" for a, b in spans[:8])
    more = f" and {len(spans) - 8} more ranges" if len(spans) > 8 else ""
    return f"bytes {shown}{more}"


async def verify(
    url: str,
    code: str,
    password: str | None = None,
    report: Reporter = no_report,
) -> Done:
    """Decrypt, decompress and hash every chunk, and check the root hash.

    Raises:
        IntegrityError: naming the damaged or missing byte ranges (exit 6).
    """
    started = trio.current_time()
    # Without an index it still checks every record it finds, and then says so (exit 6).
    source = await trio.to_thread.run_sync(
        functools.partial(ImageSource.open, url, code, password, need_index=False)
    )
    url = source.url  # without a password that the URL may hold
    try:
        n = source.header.chunk_count
        report(Verifying(source.size))
        damaged = source.missing()
        threads = default_threads()
        limiter = trio.CapacityLimiter(threads)
        in_flight = trio.Semaphore(2 * threads)  # chunks being checked, at most
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            try:
                await trio.to_thread.run_sync(source.read_chunk, i, limiter=limiter)
            except IntegrityError:
                damaged.append(i)
            finally:
                in_flight.release()
            done += source.header.chunk_length(i)
            report(Progress(done, source.size, 0))

        async with trio.open_nursery() as nursery:
            for i in range(n):
                if source.index.kinds[i] == DATA:
                    await in_flight.acquire()
                    nursery.start_soon(one, i)
        if damaged:
            at = source.chunk_size
            spans = merged((i * at, i * at + source.header.chunk_length(i)) for i in damaged)
            hit = partitions_hit(source.header.source, spans)
            raise IntegrityError(
                f"the image {url} is damaged: {len(damaged)} of {n} chunks are unreadable "
                f"or missing ({ranges(source, damaged)}"
                + (f"; {', '.join(_in(h) for h in hit)}" if hit else "")
                + "); restoring it would leave those ranges unwritten — save the source again"
            )
        root = source.index.root
        if root is not None and root_of(bytes(source.index.hashes)) != root:
            raise IntegrityError(f"the index of {url} is damaged (its root hash does not match)")
        if not source.complete:
            raise IntegrityError(
                f"the image {url} has no index: the save was interrupted; run the same "
                "send again to complete it"
            )
        return Done(
            source_bytes=source.size,
            wire_bytes=0,
            chunks=n,
            zero_chunks=sum(1 for k in source.index.kinds if k not in (DATA, MISSING)),
            digest=source.index.root.hex() if source.index.root else "",
            seconds=trio.current_time() - started,
            verified=True,
            **_unreadable(source),
        )
    finally:
        await trio.to_thread.run_sync(source.close)


async def export(
    url: str,
    code: str,
    out: IO[bytes],
    password: str | None = None,
    report: Reporter = no_report,
) -> Done:
    """Write the raw disk to ``out`` in order; damaged chunks become zeros and raise at the end."""
    started = trio.current_time()
    source = await trio.to_thread.run_sync(ImageSource.open, url, code, password)
    url = source.url  # without a password that the URL may hold
    try:
        damaged: list[int] = []
        n = source.header.chunk_count
        done = 0
        for i in range(n):
            try:
                data = await trio.to_thread.run_sync(source.read_chunk, i)
            except IntegrityError:
                damaged.append(i)
                data = bytes(source.header.chunk_length(i))
            await trio.to_thread.run_sync(out.write, data)
            done += len(data)
            report(Progress(done, source.size, 0))
        await trio.to_thread.run_sync(out.flush)
        if damaged:
            raise IntegrityError(
                f"the image {url} is damaged: {ranges(source, damaged)} could not be read and "
                "were written as zeros; the exported disk is not the saved one"
            )
        if note := source.salvage_note():
            raise IntegrityError(note, code="salvaged")
        return Done(
            source_bytes=source.size,
            wire_bytes=0,
            chunks=n,
            zero_chunks=0,
            digest=source.index.root.hex() if source.index.root else "",
            seconds=trio.current_time() - started,
            **_unreadable(source),
        )
    finally:
        await trio.to_thread.run_sync(source.close)


def _unreadable(source: ImageSource) -> dict[str, Any]:
    """The Done fields for what the image's source disk could not read (exit 7)."""
    bad = merged(source.unreadable.ranges)
    return {"unreadable": bad, "unreadable_in": partitions_hit(source.info, bad)}


def describe(facts: dict[str, Any]) -> list[str]:
    """``image info`` for a person."""
    from ..units import human_bytes

    src = facts["source"]
    ident = " ".join(str(src[k]) for k in ("name", "model", "serial") if src.get(k)) or "unknown"
    return [
        f"Image:      {facts['url']}",
        f"Source:     {ident}, {human_bytes(facts['source_bytes'])}"
        f" ({facts['source_bytes']} bytes)",
        f"Chunks:     {facts['chunks']} of {human_bytes(facts['chunk_size'])}",
        f"Stored:     {human_bytes(facts['stored_bytes'])} ({facts['ratio']:.1%} of the source)",
        f"Created:    {facts['created']} by {facts['generator'] or 'unknown'}",
        "Encrypted:  "
        + (
            f"yes, {facts['cipher']}, key from {facts['kdf']}"
            if facts["encrypted"]
            else "no (nothing proves who made it: reading it needs ?plain=1 on its URL)"
        ),
        "Complete:   "
        + ("yes" if facts["complete"] else "no (an interrupted save: run the same send again)"),
        f"Saved:      {facts['saved'] or 'unknown (an image from before p2pclone kept it)'}"
        if facts["complete"]
        else "Saved:      never completed",
        "Root:       "
        + (
            facts["root"]
            or (
                "in the encrypted index: give --passphrase to show it"
                if facts["encrypted"]
                else "add ?plain=1 to the URL to read the index of an unencrypted image"
            )
        ),
        *_layout(src),
    ]


def _layout(src: dict[str, Any]) -> list[str]:
    """The partitions, as the sender's scan described them (none for an --exact save)."""
    if "layout" not in src:
        return []
    table = SCHEME_NAMES.get(src["layout"], "?")
    parts = sorted((int(k[4:]), v) for k, v in src.items() if k[4:].isdigit() and k[:4] == "part")
    skipped = left_out(src)
    return (
        [f"Layout:     {table}"]
        + [f"  {n:>2}  {text}" if n else f"  {text}" for n, text in parts]
        + ([f"Left out:   {skipped}"] if skipped else [])
    )
