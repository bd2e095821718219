"""The SparkTTS engine's pure parts: prompts in SparkTTS's own token format, token parsing, sentence cuts.

The model itself (0.5B LLM + BiCodec, torch, transformers) cannot run here; the prompts are checked
against the format of SparkTTS's cli/SparkTTS.py (process_prompt, process_prompt_control), which is what
the LLM was trained on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("imgbuild_runtime")

PATH = Path(__file__).resolve().parent.parent / "Containerfiles" / "spark-tts" / "spark_engine.py"
spec = importlib.util.spec_from_file_location("spark_engine", PATH)
assert spec and spec.loader
spark = importlib.util.module_from_spec(spec)
sys.modules["spark_engine"] = spark
spec.loader.exec_module(spark)


def test_clone_prompt_with_transcript_continues_the_reference_semantics() -> None:
    prompt = spark.clone_prompt("Hi there.", [7, 8], [1, 2, 3], "reference words")
    assert prompt == ("<|task_tts|><|start_content|>reference wordsHi there.<|end_content|>"
                      "<|start_global_token|><|bicodec_global_7|><|bicodec_global_8|><|end_global_token|>"
                      "<|start_semantic_token|><|bicodec_semantic_1|><|bicodec_semantic_2|><|bicodec_semantic_3|>")


def test_clone_prompt_without_transcript_uses_the_voice_only() -> None:
    prompt = spark.clone_prompt("Hi.", [5], [1, 2], None)
    assert prompt == ("<|task_tts|><|start_content|>Hi.<|end_content|><|start_global_token|>"
                      "<|bicodec_global_5|><|end_global_token|>")
    assert "semantic" not in prompt


def test_control_prompt_labels_and_validation() -> None:
    prompt = spark.control_prompt("Hello.", "male", "low", "very_high")
    assert prompt == ("<|task_controllable_tts|><|start_content|>Hello.<|end_content|><|start_style_label|>"
                      "<|gender_1|><|pitch_label_1|><|speed_label_4|><|end_style_label|>")
    with pytest.raises(ValueError):
        spark.control_prompt("Hello.", "robot")


def test_token_ids_parse_generated_text() -> None:
    generated = "<|bicodec_global_12|><|bicodec_global_3|>x<|bicodec_semantic_400|><|bicodec_semantic_0|>"
    assert spark.token_ids(generated, "global") == [12, 3]
    assert spark.token_ids(generated, "semantic") == [400, 0]
    assert spark.token_ids("no tokens", "semantic") == []


@pytest.mark.parametrize("speed,level", [(0.5, "very_low"), (0.8, "low"), (1.0, "moderate"), (1.4, "high"),
                                         (2.0, "very_high")])
def test_speed_levels(speed: float, level: str) -> None:
    assert spark.speed_level(speed) == level


def test_sentences_cut_at_ends_and_long_runs() -> None:
    assert spark.sentences("One. Two!  Three?\n\n测试说话。好的") == ["One.", "Two!", "Three?", "测试说话。", "好的"]
    long = " ".join(["word"] * 200)
    parts = spark.sentences(long)
    assert all(len(p) <= 300 for p in parts) and " ".join(parts) == long
    assert spark.sentences("   ") == []


def test_engine_describes_itself_before_loading(tmp_path: Path) -> None:
    (tmp_path / "BiCodec").mkdir()
    engine = spark.SparkEngine(tmp_path, threads=2)
    info = engine.info()
    assert (info.engine, info.sample_rate, info.clones_voices, info.speakers) == ("sparktts", 16000, True,
                                                                                ("female", "male"))
    assert engine.encoder_id().startswith("sparktts-bicodec-")


def test_server_exits_1_with_the_reason_when_the_model_cannot_load(tmp_path: Path) -> None:
    """The container must stop, with the cause in its log, rather than answer 503 forever."""
    import subprocess

    (tmp_path / "config.yaml").write_text("sample_rate: 16000\n")
    (tmp_path / "BiCodec").mkdir()
    script = PATH.with_name("serve_spark.py")
    done = subprocess.run([sys.executable, str(script), "--model", str(tmp_path), "--host", "127.0.0.1",
                           "--port", "0", "--ref-data", str(tmp_path / "none"), "--no-such-flag"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--no-such-flag" in done.stderr
    done = subprocess.run([sys.executable, str(script), "--model", str(tmp_path), "--host", "127.0.0.1",
                           "--port", "0", "--ref-data", str(tmp_path / "none"),
                           "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    # Here torch/SparkTTS are missing; in an image built from a bad source zip the same path reports it.
    assert "ModuleNotFoundError" in done.stderr or "No module named" in done.stderr, done.stderr[-2000:]
