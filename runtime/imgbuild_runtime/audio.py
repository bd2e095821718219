"""Audio in and out: float32 mono chunks -> 16-bit WAV, raw PCM or FLAC; reference files -> float32."""

from __future__ import annotations

import io
import struct
from typing import Literal

import numpy as np

AudioFormat = Literal["wav", "pcm", "flac"]
FORMATS: tuple[str, ...] = ("wav", "pcm", "flac")
STREAM_FORMATS: tuple[str, ...] = ("wav", "pcm")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
# Unknown length while streaming: the largest sizes a RIFF header can state. Players read to the end.
_UNKNOWN = 0xFFFFFFFF


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


def encode(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole utterance in one of FORMATS."""
    if fmt == "pcm":
        return to_pcm16(audio)
    if fmt == "wav":
        return wav_header(sample_rate, len(audio)) + to_pcm16(audio)
    if fmt == "flac":
        import soundfile

        buffer = io.BytesIO()
        # The same 16-bit samples as wav/pcm (libsndfile's own float conversion rounds differently).
        samples = np.frombuffer(to_pcm16(audio), dtype="<i2")
        soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
        return buffer.getvalue()
    raise ValueError(f"unknown audio format {fmt!r}")


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Any file libsndfile reads (WAV, FLAC, OGG...) -> (mono float32 samples, sample rate)."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1).astype(np.float32), int(rate)
