"""Audio basics: 16-bit PCM and WAV headers (encoders.py builds the response formats on them), and reading
uploaded or stored reference recordings with a bound on their decoded length."""

from __future__ import annotations

import io
import struct

import numpy as np

# Unknown length while streaming: the largest sizes a RIFF header can state. Players read to the end.
_UNKNOWN = 0xFFFFFFFF
_UNKNOWN_FRAMES = 2**62


def wav_header(sample_rate: int, num_samples: int | None, channels: int = 1) -> bytes:
    """44-byte PCM16 WAV header; num_samples None (streaming) writes the 'unknown length' sizes."""
    block_align = 2 * channels
    if num_samples is None:
        data_size = riff_size = _UNKNOWN
    else:
        data_size = num_samples * block_align
        riff_size = 36 + data_size
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE", b"fmt ", 16, 1, channels,
        sample_rate, sample_rate * block_align, block_align, 16, b"data", data_size,
    )  # fmt: skip


def to_pcm16(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> little-endian signed 16-bit bytes."""
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class TooLong(ValueError):
    """A recording whose decoded length is over the limit; raised before it is decoded further."""


def read_audio(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Any file libsndfile reads (WAV, FLAC, OGG...) -> (mono float32 samples, sample rate).

    With max_seconds, at most that much (plus one frame) is decoded whatever the header claims: a small
    compressed file of an hour of silence must not become gigabytes of samples.
    """
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as f:
        rate = int(f.samplerate)
        limit = -1 if max_seconds is None else int(max_seconds * rate) + 1
        # libsndfile reports a length it does not know (a streamed FLAC) as the largest count.
        if max_seconds is not None and limit < f.frames < _UNKNOWN_FRAMES:
            raise TooLong(f"{f.frames / rate:.1f} s long; at most {max_seconds:g} s")
        samples = f.read(limit, dtype="float32", always_2d=True)
    if max_seconds is not None and len(samples) >= limit:
        raise TooLong(f"over {max_seconds:g} s long; at most {max_seconds:g} s")
    return samples.mean(axis=1).astype(np.float32), rate
