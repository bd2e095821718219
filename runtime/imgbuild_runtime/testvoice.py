"""A tiny piper-compatible test voice: an ONNX graph with piper's signature plus its .onnx.json config.

Tests, CI and the demo (when no Hub is reachable) cannot download a real piper voice, so they make this one.
It has exactly the interface of a piper VITS export, so the real piper-tts (espeak-ng phonemizer, phoneme id
map, onnxruntime session) code path runs on it:

- inputs ``input`` int64 [1, N] (phoneme ids), ``input_lengths`` int64 [1], ``scales`` float32 [3]
  (noise, length, noise_w);
- output ``output`` float32 [1, 1, T] with T = N * round(SAMPLES_PER_ID * length_scale).

Each phoneme id becomes SAMPLES_PER_ID samples of a sine whose pitch depends on the id, so the waveform is
deterministic, never silent, and its length follows the input and the speed. It sounds like a beeping
modem, not like speech.

Run: ``python -m imgbuild_runtime.testvoice OUT_DIR [--name NAME] [--sample-rate HZ]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "en_US-imgbuild_test-tiny"
DEFAULT_SAMPLE_RATE = 22050
HOP_LENGTH = 256  # the config's hop_length (only used by piper for alignments)
# Samples per phoneme id at length_scale 1: about 46 ms at 22050 Hz, near a real voice's pace, so durations
# and real-time factors measured on this voice are of a plausible order.
SAMPLES_PER_ID = 1024
# Same opset family piper's own exports use; onnxruntime from 1.10 on runs it.
OPSET = 15


@dataclass(frozen=True)
class TestVoice:
    model: Path
    config: Path
    sample_rate: int

    def to_json(self) -> dict[str, object]:
        return {"model": str(self.model), "config": str(self.config), "sample_rate": self.sample_rate}


def build_model_bytes(sample_rate: int = DEFAULT_SAMPLE_RATE, hop: int = SAMPLES_PER_ID) -> bytes:
    """Serialized ONNX model with piper's input/output signature."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: object, dtype: object) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype=dtype), name)
        )

    nodes = [
        const("hop_f", float(hop), np.float32),
        const("one_i", [1], np.int64),
        const("idx1", [1], np.int64),
        const("zero_s", 0, np.int64),
        const("one_s", 1, np.int64),
        const("neg1", [-1], np.int64),
        const("base_hz", 180.0, np.float32),
        const("step_hz", 7.0, np.float32),
        const("two_pi_over_sr", 2.0 * np.pi / sample_rate, np.float32),
        const("amp", 0.4, np.float32),
        const("shape_out_prefix", [1, 1], np.int64),
        # samples per phoneme = max(1, round(hop * length_scale)); scales[1] is the length scale.
        helper.make_node("Gather", ["scales", "idx1"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["length_scale", "hop_f"], ["hop_scaled"]),
        helper.make_node("Round", ["hop_scaled"], ["hop_round"]),
        helper.make_node("Cast", ["hop_round"], ["hop_i_raw"], to=TensorProto.INT64),
        helper.make_node("Max", ["hop_i_raw", "one_i"], ["hop_i"]),  # shape [1]
        helper.make_node("Squeeze", ["hop_i"], ["hop_s"]),  # scalar
        # n = number of phoneme ids
        helper.make_node("Shape", ["input"], ["in_shape"]),
        helper.make_node("Gather", ["in_shape", "idx1"], ["n_1"], axis=0),  # [1]
        helper.make_node("Mul", ["n_1", "hop_i"], ["total_1"]),
        helper.make_node("Squeeze", ["total_1"], ["total_s"]),
        # t = 0 .. total-1, laid out as [N, hop]
        helper.make_node("Range", ["zero_s", "total_s", "one_s"], ["t_i"]),
        helper.make_node("Cast", ["t_i"], ["t_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["n_1", "hop_i"], ["grid_shape"], axis=0),
        helper.make_node("Reshape", ["t_f", "grid_shape"], ["t_grid"]),
        # pitch per phoneme: base + step * (id mod 64), shape [N, 1]
        helper.make_node("Reshape", ["input", "neg1"], ["ids_flat"]),
        helper.make_node("Cast", ["ids_flat"], ["ids_f"], to=TensorProto.FLOAT),
        const("mod64", 64.0, np.float32),
        helper.make_node("Mod", ["ids_f", "mod64"], ["ids_mod"], fmod=1),
        helper.make_node("Mul", ["ids_mod", "step_hz"], ["ids_hz"]),
        helper.make_node("Add", ["ids_hz", "base_hz"], ["freq"]),
        helper.make_node("Unsqueeze", ["freq", "one_i"], ["freq_col"]),
        helper.make_node("Mul", ["t_grid", "freq_col"], ["phase_cycles"]),
        helper.make_node("Mul", ["phase_cycles", "two_pi_over_sr"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node("Mul", ["wave", "amp"], ["wave_amp"]),
        helper.make_node("Concat", ["shape_out_prefix", "total_1"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["wave_amp", "out_shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "imgbuild_test_voice",
        inputs=[
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "time"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imgbuild_runtime.testvoice"
    )
    model.ir_version = 8  # readable by onnxruntime releases much older than the one we install
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_config(sample_rate: int = DEFAULT_SAMPLE_RATE) -> dict[str, object]:
    """The .onnx.json config piper-tts's PiperConfig.from_dict reads (espeak phonemes, default id map)."""
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    return {
        "audio": {"sample_rate": sample_rate, "quality": "x_low"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "num_symbols": 1 + max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids),
        "num_speakers": 1,
        "speaker_id_map": {},
        "hop_length": HOP_LENGTH,
        "piper_version": "1.0.0",
        "dataset": "imgbuild-test-voice",
    }


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def write_test_voice(out_dir: Path, name: str = DEFAULT_NAME, sample_rate: int = DEFAULT_SAMPLE_RATE) -> TestVoice:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = out_dir / f"{name}.onnx"
    config = out_dir / f"{name}.onnx.json"
    _write_atomic(model, build_model_bytes(sample_rate))
    _write_atomic(config, (json.dumps(build_config(sample_rate), ensure_ascii=False, indent=2) + "\n").encode())
    return TestVoice(model=model, config=config, sample_rate=sample_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgbuild_runtime.testvoice", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE)
    args = parser.parse_args(argv)
    voice = write_test_voice(args.out_dir, args.name, args.sample_rate)
    print(json.dumps(voice.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
