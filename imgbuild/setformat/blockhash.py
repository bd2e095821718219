"""Per-block SHA-256 of a file, so damage can be located to a 4 MiB block and repaired block by block.

The manifest (format v2) lists, for every file it covers, the SHA-256 of each consecutive BLOCK_SIZE
block (the last one shorter). The whole-file SHA-256 stays the root of trust; block hashes only say
*where* a file is damaged. verify hashes both in the one read of each file (``BlockHasher``), so a damaged
file is located without reading it again.
"""

from __future__ import annotations

import hashlib

BLOCK_SIZE = 4 * 1024 * 1024


class BlockHasher:
    """Hashes a stream once for its whole-file SHA-256 and its per-block SHA-256 list."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._whole = hashlib.sha256()
        self._block = hashlib.sha256()
        self._in_block = 0
        self._blocks: list[str] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._whole.update(view)
        self.size += len(view)
        while len(view):
            take = min(len(view), self.block_size - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == self.block_size:
                self._blocks.append(self._block.hexdigest())
                self._block = hashlib.sha256()
                self._in_block = 0

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def whole_copy(self) -> "hashlib._Hash":
        """A copy of the whole-file hash state, to go on hashing a longer stream this file begins."""
        return self._whole.copy()

    def block_hexdigests(self) -> list[str]:
        """The block list; an empty file has no blocks."""
        tail = [self._block.hexdigest()] if self._in_block else []
        return self._blocks + tail


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-size // block_size)
