"""The erasure code of parity volumes: Reed-Solomon over GF(2^8) as implemented by zfec, applied byte-wise.

Each volume's payload is one byte stream (FORMAT.md, "Parity volumes"): D_0 .. D_{N-1} for the data volumes,
zero-padded to the length L of the longest. Parity volume j holds P_j[p] = sum_i C[j][i] * D_i[p] for every
byte position p < L, in GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11D). C is the bottom part of zfec's
systematic generator matrix for k = N, n = N + M; it is stored in the manifest, so a reader needs only GF(2^8)
arithmetic and a k x k matrix inversion, not zfec. Because the code is byte-wise, the chunk size used here to
feed zfec is a speed knob, not part of the format: any N of the N + M streams give back the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO

import zfec

SCHEME = "zfec-rs-gf256"
GF_POLYNOMIAL = 0x11D
MAX_VOLUMES = 256  # GF(2^8): at most 256 distinct code rows
CHUNK = 8 * 1024 * 1024  # zfec's unit of work here; large so a drive reads long runs of each volume


def coefficients(n_data: int, n_parity: int) -> list[list[int]]:
    """C[j][i]: the GF(2^8) factor of data stream i in parity stream j, read back from zfec itself."""
    check_shape(n_data, n_parity)
    encoder = zfec.Encoder(n_data, n_data + n_parity)
    rows = [[0] * n_data for _ in range(n_parity)]
    for i in range(n_data):
        unit = tuple(bytes([1 if col == i else 0]) for col in range(n_data))
        for j, out in enumerate(encoder.encode(unit, tuple(range(n_data, n_data + n_parity)))):
            rows[j][i] = out[0]
    return rows


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8) with the polynomial GF_POLYNOMIAL, as FORMAT.md describes it (independent of zfec)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= GF_POLYNOMIAL
        b >>= 1
    return product


def check_shape(n_data: int, n_parity: int) -> None:
    if n_data < 1 or n_parity < 1 or n_data + n_parity > MAX_VOLUMES:
        raise ValueError(f"parity needs 1 <= N, 1 <= M and N + M <= {MAX_VOLUMES}; got N={n_data}, M={n_parity}")


@dataclass(frozen=True)
class Segment:
    """One file of a volume's payload stream: ``name`` relative to the volume, ``size`` bytes."""

    name: str
    size: int


Opener = Callable[[str], BinaryIO]


class PayloadStream:
    """A volume's payload as one byte stream: its payload files back to back, zeros after their end."""

    def __init__(self, segments: Sequence[Segment], opener: Opener,
                 hasher: Callable[[], Any] | None = None) -> None:
        self.segments = list(segments)
        # With a hasher (hashlib.sha256 or BlockHasher), reads must be sequential from 0; each file is then
        # hashed on the way (archive checks its data files did not change before parity was made).
        self.hashers = [hasher() for _ in self.segments] if hasher else None
        self.hashed = [0] * len(self.segments)
        self.length = sum(s.size for s in self.segments)
        self._opener = opener
        self._files: dict[str, BinaryIO] = {}
        self._stack = ExitStack()
        starts, pos = [], 0
        for seg in self.segments:
            starts.append(pos)
            pos += seg.size
        self.starts = starts

    def __enter__(self) -> PayloadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._files.clear()

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; beyond the stream's end, zeros (the padding of the code)."""
        out = bytearray(length)
        for index, seg in enumerate(self.segments):
            start = self.starts[index]
            lo, hi = max(offset, start), min(offset + length, start + seg.size)
            if lo >= hi:
                continue
            fh = self._files.get(seg.name)
            if fh is None:
                fh = self._stack.enter_context(self._opener(seg.name))
                self._files[seg.name] = fh
            fh.seek(lo - start)
            data = fh.read(hi - lo)
            if len(data) != hi - lo:
                raise OSError(f"{seg.name}: shorter than its {seg.size} bytes")
            out[lo - offset:hi - offset] = data
            if self.hashers is not None:
                if self.hashed[index] != lo - start:
                    raise ValueError("hashing needs sequential reads")
                self.hashers[index].update(data)
                self.hashed[index] += len(data)
        return bytes(out)


def chunks(length: int, chunk: int = CHUNK, start: int = 0) -> Iterator[tuple[int, int]]:
    """(offset, size) pieces covering [start, length)."""
    for offset in range(start, length, chunk):
        yield offset, min(chunk, length - offset)


def read_ahead(streams: Sequence[PayloadStream], pieces: Sequence[tuple[int, int]]) -> Iterator[list[bytes]]:
    """The blocks of ``streams`` at each (offset, size) piece, read in parallel threads one piece ahead.

    File reads and zfec release the GIL, so reading the next piece overlaps with coding this one.
    """
    if not pieces:
        return
    with ThreadPoolExecutor(max_workers=min(8, len(streams) + 1)) as pool:

        def submit(offset: int, size: int) -> list:
            return [pool.submit(s.read_at, offset, size) for s in streams]

        ahead = submit(*pieces[0])
        for index in range(len(pieces)):
            blocks = [f.result() for f in ahead]
            if index + 1 < len(pieces):
                ahead = submit(*pieces[index + 1])
            yield blocks


def encode_streams(
    data: Sequence[PayloadStream],
    n_parity: int,
    sinks: Sequence[Callable[[bytes], None]],
    on_chunk: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
) -> int:
    """Feed each parity stream to its sink, chunk by chunk; returns the parity stream length L."""
    n_data = len(data)
    encoder = zfec.Encoder(n_data, n_data + n_parity)
    wanted = tuple(range(n_data, n_data + n_parity))
    length = max(s.length for s in data)
    pieces = list(chunks(length, chunk))
    for (offset, size), blocks in zip(pieces, read_ahead(data, pieces)):
        for sink, out in zip(sinks, encoder.encode(tuple(blocks), wanted)):
            sink(bytes(out))
        if on_chunk:
            on_chunk(offset + size)
    return length


def rebuild(n_data: int, n_parity: int, have: dict[int, bytes], want: Sequence[int]) -> dict[int, bytes]:
    """From at least N equally long blocks (by stream index, parity streams are N..N+M-1), the wanted ones."""
    if len(have) < n_data:
        raise ValueError(f"need {n_data} good streams to rebuild, have {len(have)}")
    # Data streams first: when all of them are at hand no decoding is needed at all.
    use = sorted(have, key=lambda i: (i >= n_data, i))[:n_data]
    if all(i < n_data for i in use):
        primary = [have[i] for i in range(n_data)]
    else:
        decoded = zfec.Decoder(n_data, n_data + n_parity).decode(tuple(have[i] for i in use), tuple(use))
        primary = [bytes(b) for b in decoded]
    out = {i: primary[i] for i in want if i < n_data}
    parity_wanted = tuple(i for i in want if i >= n_data)
    if parity_wanted:
        encoded = zfec.Encoder(n_data, n_data + n_parity).encode(tuple(primary), parity_wanted)
        out.update({i: bytes(b) for i, b in zip(parity_wanted, encoded)})
    return out
