"""Unit tests of the runtime's pure parts: CPU counting, audio framing, the test voice graph, the reference
cache, the command line."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

for _module in ("piper", "onnxruntime", "onnx", "soundfile", "imgbuild_runtime"):
    if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
        pytest.importorskip(_module)

import onnxruntime  # noqa: E402
import soundfile  # noqa: E402

from imgbuild_runtime import audio, cpu, encoders  # noqa: E402
from imgbuild_runtime.__main__ import find_model, parse_args  # noqa: E402
from imgbuild_runtime.engine import EncodedReference  # noqa: E402
from imgbuild_runtime.errors import VoiceDataError  # noqa: E402
from imgbuild_runtime.refcache import ReferenceCache  # noqa: E402
from imgbuild_runtime.testvoice import SAMPLES_PER_ID, build_model_bytes, write_test_voice  # noqa: E402
from imgbuild_runtime.voices import ReferencePair  # noqa: E402

HT_CPUINFO = "".join(
    f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p % 2}\nsiblings\t: 4\n\n" for p in range(4)
)  # 4 logical CPUs, 2 cores with 2 hyper-threads each


def test_physical_cores_from_cpuinfo() -> None:
    assert cpu.parse_cpuinfo_cores(HT_CPUINFO) == 2
    assert cpu.parse_cpuinfo_cores(HT_CPUINFO, allowed={0, 2}) == 1  # both threads of core 0
    two_sockets = HT_CPUINFO + HT_CPUINFO.replace("physical id\t: 0", "physical id\t: 1").replace(
        "processor\t: ", "processor\t: 1"
    )
    assert cpu.parse_cpuinfo_cores(two_sockets) == 4
    no_core_ids = "processor : 0\n\nprocessor : 1\n\nprocessor : 2\n"  # some VMs and arches
    assert cpu.parse_cpuinfo_cores(no_core_ids) == 3
    assert 1 <= cpu.physical_cores() <= (os.cpu_count() or 1)


def test_cgroup_cpu_limit(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu.cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu.cgroup_cpu_limit(v1) is None


def test_wav_header_and_pcm() -> None:
    samples = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    pcm = audio.to_pcm16(samples)
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16383, -16383, 32767, -32767]  # clipped, not wrapped
    data = encoders.encode(samples, 16000, "wav")
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (16000, 5, 2)
    streaming = audio.wav_header(16000, None)
    assert len(streaming) == 44 and struct.unpack("<I", streaming[40:44])[0] == 0xFFFFFFFF
    flac, rate = soundfile.read(io.BytesIO(encoders.encode(samples, 16000, "flac")), dtype="int16")
    assert rate == 16000 and flac.tolist() == np.frombuffer(pcm, "<i2").tolist()
    with pytest.raises(ValueError):
        encoders.encode(samples, 16000, "ogg")


def test_streamed_and_whole_encodings_hold_the_same_audio() -> None:
    import av

    rate = 22050
    chunks = [0.3 * np.sin(np.arange(n) / 7.0).astype(np.float32) for n in (5000, 11025, 7000)]
    whole = np.concatenate(chunks)
    for fmt in ("mp3", "opus", "aac", "flac"):
        encoder = encoders.open_encoder(fmt, rate, stream=True)
        streamed = b"".join(encoder.feed(c) for c in chunks) + encoder.finish()
        for data in (streamed, encoders.encode(whole, rate, fmt)):
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.audio[0]
                seconds = sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate
            assert whole.size / rate - 0.01 <= seconds <= whole.size / rate + 0.12, (fmt, seconds)
    pcm = encoders.open_encoder("pcm", rate, stream=True)
    assert b"".join(pcm.feed(c) for c in chunks) + pcm.finish() == audio.to_pcm16(whole)


def test_test_voice_graph_has_piper_signature() -> None:
    session = onnxruntime.InferenceSession(build_model_bytes(16000), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("input", "tensor(int64)"), ("input_lengths", "tensor(int64)"), ("scales", "tensor(float)")
    ]  # fmt: skip
    assert [o.name for o in session.get_outputs()] == ["output"]

    def run(ids: list[int], length_scale: float) -> np.ndarray:
        feeds = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.667, length_scale, 0.8], dtype=np.float32),
        }
        return session.run(None, feeds)[0]

    out = run([1, 20, 30, 2], 1.0)
    assert out.shape == (1, 1, 4 * SAMPLES_PER_ID) and out.dtype == np.float32
    assert np.sqrt(np.mean(out**2)) > 0.1  # not silent
    assert np.array_equal(out, run([1, 20, 30, 2], 1.0))  # deterministic
    assert run([1, 20, 30, 2], 2.0).shape[-1] == 8 * SAMPLES_PER_ID  # slower speech, longer audio
    assert not np.array_equal(out, run([1, 21, 30, 2], 1.0))  # depends on the ids, not only their count


def test_test_voice_loads_in_piper(tmp_path: Path) -> None:
    from piper import PiperVoice

    voice = write_test_voice(tmp_path, sample_rate=16000)
    assert not list(tmp_path.glob("*.partial"))
    piper_voice = PiperVoice.load(voice.model)
    chunks = list(piper_voice.synthesize("One sentence. And another one."))
    assert len(chunks) == 2 and all(c.sample_rate == 16000 and c.audio_float_array.size > 0 for c in chunks)


def test_piper_engine_streams_the_first_clause_first(tmp_path: Path) -> None:
    import threading

    from imgbuild_runtime.engine import SynthesisOptions
    from imgbuild_runtime.piper_engine import PiperEngine

    engine = PiperEngine(write_test_voice(tmp_path).model, threads=1)
    engine.load()
    text = "When the disc is read back on another machine, every byte is checked again. Then it plays."

    def chunks(low_latency: bool) -> list[np.ndarray]:
        options = SynthesisOptions(low_latency=low_latency)
        return list(engine.synthesize(text, (), options, threading.Event()))

    whole, quick = chunks(False), chunks(True)
    assert len(whole) == 2 and len(quick) == 3  # the first sentence is cut after its first clause
    assert quick[0].size < 0.75 * whole[0].size
    # Same speech in total, give or take the sentence-boundary symbols of the extra cut.
    assert abs(sum(c.size for c in quick) - sum(c.size for c in whole)) <= 4 * SAMPLES_PER_ID
    assert np.array_equal(quick[-1], whole[-1])
    cancel = threading.Event()
    stream = engine.synthesize(text, (), SynthesisOptions(), cancel)
    next(stream)
    cancel.set()
    assert list(stream) == []  # a cancelled request stops at the next chunk


def _pair(folder: Path, name: str, text: str, amplitude: float = 0.2) -> ReferencePair:
    soundfile.write(folder / f"{name}.wav", amplitude * np.sin(np.arange(4000) / 3.0), 16000)
    (folder / f"{name}.lab").write_text(text, encoding="utf-8")
    return ReferencePair(folder / f"{name}.wav", folder / f"{name}.lab")


def _rms_encoder(calls: list[str]):
    def encode(samples: np.ndarray, rate: int, text: str) -> EncodedReference:
        calls.append(text)
        return EncodedReference(text=text, arrays={"tokens": np.arange(6).reshape(2, 3)}, meta={"rate": rate})

    return encode


def test_reference_cache_keys_on_content(tmp_path: Path) -> None:
    calls: list[str] = []
    cache = ReferenceCache("enc-v1", _rms_encoder(calls), tmp_path / "cache")
    pair = _pair(tmp_path, "a", "hello")
    first = cache.get_pair(pair)
    assert cache.get_pair(pair) is first and calls == ["hello"]  # memory hit
    assert first.arrays["tokens"].shape == (2, 3) and first.meta == {"rate": 16000}

    fresh = ReferenceCache("enc-v1", _rms_encoder(calls), tmp_path / "cache")
    again = fresh.get_pair(pair)  # disk hit: same tokens, no encoding
    assert calls == ["hello"] and np.array_equal(again.arrays["tokens"], first.arrays["tokens"])
    assert fresh.stats().disk_hits == 1

    renamed = _pair(tmp_path, "b", "hello")  # same content under another name: same key
    assert fresh.get_pair(renamed).text == "hello" and calls == ["hello"]
    pair.text.write_text("hello, edited", encoding="utf-8")  # a changed transcript is a new reference
    assert fresh.get_pair(pair).text == "hello, edited" and calls == ["hello", "hello, edited"]
    other_codec = ReferenceCache("enc-v2", _rms_encoder(calls), tmp_path / "cache")
    other_codec.get_pair(renamed)
    assert calls[-1] == "hello" and len(calls) == 3


def test_reference_cache_recovers_from_bad_entries(tmp_path: Path) -> None:
    calls: list[str] = []
    cache = ReferenceCache("enc", _rms_encoder(calls), tmp_path / "cache")
    pair = _pair(tmp_path, "a", "text")
    cache.get_pair(pair)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    entry.write_bytes(b"truncated")
    ReferenceCache("enc", _rms_encoder(calls), tmp_path / "cache").get_pair(pair)
    assert len(calls) == 2 and entry.read_bytes()[:2] == b"PK"  # encoded again and rewritten
    bad = ReferencePair(tmp_path / "bad.wav", tmp_path / "bad.lab")
    bad.audio.write_bytes(b"not audio")
    bad.text.write_text("x")
    with pytest.raises(VoiceDataError):
        cache.get_pair(bad)
    read_only = ReferenceCache("enc", _rms_encoder(calls), Path("/proc/no-such-dir"))
    assert read_only.get_pair(pair).text == "text"  # an unwritable cache folder is not a failure


def test_command_line(tmp_path: Path) -> None:
    voice = write_test_voice(tmp_path / "v")
    assert find_model(tmp_path / "v", "piper") == voice.model
    with pytest.raises(SystemExit):
        find_model(tmp_path / "missing.onnx", "piper")
    config, _ = parse_args(["--model", str(tmp_path / "v"), "--threads", "3", "--no-disk-cache"])
    assert (config.model, config.threads, config.cache_dir) == (voice.model, 3, None)
    default_threads, _ = parse_args(["--model", str(voice.model)])
    assert default_threads.threads == cpu.physical_cores()


def test_server_exits_when_the_model_cannot_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    write_test_voice(tmp_path, name="x")
    (tmp_path / "broken.onnx.json").write_bytes((tmp_path / "x.onnx.json").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "imgbuild_runtime", "--model", str(broken), "--host", "127.0.0.1", "--port", "0",
         "--no-disk-cache"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "loading the model failed" in result.stderr


def test_reference_length_is_bounded_whatever_the_header_says() -> None:
    rate = 16000
    twenty = encoders.encode(np.full(rate * 20, 0.1, np.float32), rate, "wav")
    with pytest.raises(audio.TooLong, match="20.0 s long; at most 10 s"):
        audio.read_audio(twenty, 10)  # refused from the header, before decoding
    samples, got = audio.read_audio(twenty, 30)
    assert got == rate and samples.size == rate * 20
    stream = encoders.open_encoder("flac", rate, stream=True)  # a FLAC whose header gives no length
    unknown = stream.feed(np.full(rate * 20, 0.1, np.float32)) + stream.finish()
    with pytest.raises(Exception) as refused:  # libsndfile cannot read it; it is never taken for 0 s
        audio.read_audio(unknown, 10)
    assert not isinstance(refused.value, MemoryError)
