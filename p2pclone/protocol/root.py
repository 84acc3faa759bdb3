"""The session's root hash: BLAKE3 over every chunk's digest in chunk order.

Chunks are covered in order, except those a failing source left for later (LATER):
their digests come after the first pass over the disk, and the digests that follow
them wait here (32 bytes a chunk, from the first such chunk on) until they are known.
"""

from __future__ import annotations

from functools import lru_cache

import blake3

HASH_SIZE = 32


@lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    """BLAKE3 of ``length`` zero bytes (the hash of a ZERO chunk)."""
    return blake3.blake3(bytes(length)).digest()


class RootHash:
    """Fed chunk digests in order (``add``), with holes (``hole``) filled later."""

    def __init__(self) -> None:
        self._hash = blake3.blake3()
        self._next = 0  # chunks covered so far (digests added or holes)
        self._first = 0  # the first chunk whose digest is not hashed yet
        self._tail = bytearray()  # digests of chunks _first.._next (holes: zeros)
        #: chunks left for later whose digests have not come yet
        self.holes: set[int] = set()

    def add(self, digests: bytes) -> None:
        """The digests of the next ``len(digests) // 32`` chunks."""
        self._next += len(digests) // HASH_SIZE
        if self.holes:
            self._tail += digests
        else:
            self._hash.update(digests)
            self._first = self._next

    def hole(self, count: int) -> None:
        """The next ``count`` chunks come later (``fill``)."""
        self.holes.update(range(self._next, self._next + count))
        self._tail += bytes(HASH_SIZE * count)
        self._next += count

    def fill(self, index: int, digest: bytes) -> None:
        """The digest of chunk ``index``, left for later; hashes what it held back."""
        self.holes.remove(index)  # KeyError: not a hole (the caller checks first)
        at = HASH_SIZE * (index - self._first)
        self._tail[at : at + HASH_SIZE] = digest
        upto = min(self.holes, default=self._next)
        ready = HASH_SIZE * (upto - self._first)
        if ready > 0:
            self._hash.update(self._tail[:ready])
            del self._tail[:ready]
            self._first = upto

    def digest(self) -> bytes:
        """The root over what is hashed so far (every chunk, once no hole is left)."""
        return self._hash.digest()
