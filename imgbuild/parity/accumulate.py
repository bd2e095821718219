"""Lost volumes rebuilt while the other volumes are read one after another: repair reads each disc once.

The parity code is linear (imgbuild/parity/erasure.py): with N good streams S chosen, every lost stream is
L = sum over s in S of c_s * D_s in GF(2^8), byte by byte. A volume that is lost before anything is read
(not among the folders given) is therefore built up while verify reads the N sources - one disc after the
other, each read once - every chunk multiplied by its coefficient and XORed into the lost volume's files.
The coefficients come from the decoder itself, fed unit vectors, as ``erasure.coefficients`` does.

Where verify then finds one of the sources damaged, the stretch it spoils has more bad volumes than the lost
ones; repair decodes such stretches again the usual way, from N volumes read at the same offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from imgbuild.parity import erasure
from imgbuild.parity.damage import file_offsets, pick_sources
from imgbuild.setformat.manifest import SetManifest

XorInto = Callable[[int, int, bytes], None]  # (lost volume, payload stream offset, bytes to XOR in)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """a XOR b, of equal lengths."""
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


class LostStreams:
    """The payload streams of the volumes ``lost``, accumulated from the sources' bytes as they are read."""

    def __init__(self, manifest: SetManifest, lost: Sequence[int], xor_into: XorInto) -> None:
        parity = manifest.parity
        assert parity is not None and 0 < len(lost) <= parity.parity_volumes
        n, m = parity.data_volumes, parity.parity_volumes
        self.lost = tuple(lost)
        self.sources = tuple(pick_sources(manifest, frozenset(lost)))
        self.offsets = {v: file_offsets(manifest.volume(v)) for v in self.sources}
        self.rows: dict[int, dict[int, int]] = {v: {} for v in self.lost}
        for source in self.sources:
            unit = {s - 1: bytes([s == source]) for s in self.sources}
            out = erasure.rebuild(n, m, unit, [v - 1 for v in self.lost])
            for v in self.lost:
                self.rows[v][source] = out[v - 1][0]
        factors = {c for row in self.rows.values() for c in row.values()} - {0, 1}
        self.tables = {c: bytes(erasure.gf_mul(c, x) for x in range(256)) for c in factors}
        self.xor_into = xor_into
        self.seconds = 0.0

    def feed(self, volume: int, relative: str, offset: int, data: bytes) -> None:
        """``data``, read at ``offset`` of file ``relative`` of ``volume``: its share of each lost stream."""
        start = self.offsets.get(volume, {}).get(relative)
        if start is None:  # not a source, or not part of its payload stream
            return
        tick = time.monotonic()
        for lost, row in self.rows.items():
            factor = row[volume]
            if factor:
                self.xor_into(lost, start + offset, data if factor == 1 else data.translate(self.tables[factor]))
        self.seconds += time.monotonic() - tick
