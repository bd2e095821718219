"""Audio out: float32 mono chunks -> the response formats of OpenAI's speech API, whole or as a stream.

wav and pcm are a 44-byte header and 16-bit samples, written here. mp3, opus (in Ogg), aac (in ADTS) and a
streamed flac go through FFmpeg's encoders and muxers via PyAV, whose wheels bundle FFmpeg with LAME,
libopus and FFmpeg's own AAC encoder: libsndfile has no AAC encoder, and its Opus takes only 8-48 kHz
rates that piper voices (22050 Hz) do not have, so one library covers every compressed format, resampling
included. Every container here can be played before it ends (MP3 frames, Ogg pages flushed every 20 ms,
ADTS frames, FLAC frames), so each format streams. A whole flac is written by libsndfile instead, so its
header states the length (a streamed one says "unknown", which FFmpeg-based players accept).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod

import numpy as np

from .audio import to_pcm16, wav_header

FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
DEFAULT_FORMAT = "mp3"  # OpenAI's default when response_format is absent
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    # The body is an Ogg file (RFC 7845 registers audio/ogg for Ogg Opus); browsers play this type.
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# format -> (FFmpeg muxer, encoder, bits per second; None = lossless). Speech in mono needs little.
_AV_FORMATS = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
    "flac": ("flac", "flac", None),
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class Encoder(ABC):
    """Feed chunks in order, then finish(); each call returns the bytes that are ready to send."""

    @abstractmethod
    def feed(self, samples: np.ndarray) -> bytes: ...

    @abstractmethod
    def finish(self) -> bytes: ...


class _Raw(Encoder):
    def __init__(self, rate: int, header: bool) -> None:
        self._header = wav_header(rate, None) if header else b""

    def feed(self, samples: np.ndarray) -> bytes:
        out, self._header = self._header + to_pcm16(samples), b""
        return out

    def finish(self) -> bytes:
        return self._header


class _WholeWav(Encoder):
    """Keeps only the 16-bit samples (half of the float chunks) and writes the exact header at the end."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._parts: list[bytes] = []

    def feed(self, samples: np.ndarray) -> bytes:
        self._parts.append(to_pcm16(samples))
        return b""

    def finish(self) -> bytes:
        samples = sum(len(p) for p in self._parts) // 2
        return wav_header(self._rate, samples) + b"".join(self._parts)


class _Sink:
    """A write-only file for PyAV: not seekable, so muxers never go back to patch what was already sent."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _Av(Encoder):
    def __init__(self, fmt: str, rate: int) -> None:
        import av

        muxer, codec, bit_rate = _AV_FORMATS[fmt]
        out_rate = rate
        if codec == "libopus":
            out_rate = next((r for r in _OPUS_RATES if r >= rate), 48000)
        self._rate = rate
        self._sink = _Sink()
        options = {"page_duration": "20000"} if muxer == "ogg" else {}
        self._container = av.open(self._sink, mode="w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=out_rate, layout="mono")
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._av = av

    def _mux(self, frame: object) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def feed(self, samples: np.ndarray) -> bytes:
        if not samples.size:
            return b""
        pcm = np.frombuffer(to_pcm16(samples), dtype="<i2").reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self._rate
        return self._mux(frame)

    def finish(self) -> bytes:
        out = self._mux(None)
        self._container.close()
        return out + self._sink.take()


class _WholeFlac(Encoder):
    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._parts: list[np.ndarray] = []

    def feed(self, samples: np.ndarray) -> bytes:
        # The same 16-bit samples as wav/pcm (libsndfile's own float conversion rounds differently).
        self._parts.append(np.frombuffer(to_pcm16(samples), dtype="<i2"))
        return b""

    def finish(self) -> bytes:
        import soundfile

        samples = np.concatenate(self._parts) if self._parts else np.zeros(0, "<i2")
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, self._rate, format="FLAC", subtype="PCM_16")
        return buffer.getvalue()


def open_encoder(fmt: str, rate: int, stream: bool) -> Encoder:
    """An encoder for one response; `stream` asks for bytes as early as the container allows."""
    if fmt == "wav" and not stream:
        return _WholeWav(rate)
    if fmt in ("wav", "pcm"):
        return _Raw(rate, header=fmt == "wav")
    if fmt == "flac" and not stream:
        return _WholeFlac(rate)
    if fmt in _AV_FORMATS:
        return _Av(fmt, rate)
    raise ValueError(f"unknown audio format {fmt!r}")


def encode(audio: np.ndarray, rate: int, fmt: str) -> bytes:
    """A whole utterance in one of FORMATS (wav and flac state their length in the header)."""
    encoder = open_encoder(fmt, rate, stream=False)
    return encoder.feed(audio) + encoder.finish()
