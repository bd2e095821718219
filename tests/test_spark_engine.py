"""The SparkTTS engine of the runtime: prompts in SparkTTS's own token format, token parsing, sentence cuts,
the `--engine sparktts` registry entry and the server's exit when the model cannot load.

These need neither torch nor the model; the prompts are checked against the format of SparkTTS's
cli/SparkTTS.py (process_prompt, process_prompt_control), which is what the LLM was trained on. The engine
running Spark-TTS's code on a stand-in model is tests/test_spark_serve.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("imgbuild_runtime")

from imgbuild_runtime import spark_engine as spark  # noqa: E402
from imgbuild_runtime.state import ServerConfig, make_engine  # noqa: E402


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


def test_token_budget_grows_with_the_sentence_up_to_sparktts_limit() -> None:
    assert spark.token_budget("Hi.") == 175
    assert spark.token_budget("x" * 40) > spark.token_budget("x" * 20)
    assert spark.token_budget("x" * 1000) == spark.MAX_NEW_TOKENS


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


def test_registry_makes_the_engine_lazily(tmp_path: Path) -> None:
    """`--engine sparktts` picks this engine; building it imports neither torch nor SparkTTS's code."""
    engine = make_engine(ServerConfig(model=tmp_path, engine="sparktts", threads=3))
    assert isinstance(engine, spark.SparkEngine) and engine.threads == 3
    done = subprocess.run([sys.executable, "-c", "import sys; import imgbuild_runtime.state as s; "
                           "s.make_engine(s.ServerConfig(model=sys.argv[1], engine='sparktts')); "
                           "print(sorted(m for m in ('torch', 'transformers', 'sparktts') if m in sys.modules))",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def run_spark_server(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgbuild_runtime", "--engine", "sparktts", "--host", "127.0.0.1",
                           "--port", "0", *args], capture_output=True, text=True, timeout=timeout)


def test_server_exits_1_with_the_reason_when_the_model_cannot_load(tmp_path: Path) -> None:
    """The container must stop, with the cause in its log, rather than answer 503 forever."""
    (tmp_path / "BiCodec").mkdir()
    done = run_spark_server("--model", str(tmp_path), "--no-such-flag", timeout=60)
    assert done.returncode == 2 and "--no-such-flag" in done.stderr
    # Not a SparkTTS folder: the reason is named before torch is even imported.
    done = run_spark_server("--model", str(tmp_path), "--ref-data", str(tmp_path / "none"), "--no-disk-cache")
    assert done.returncode == 1 and "no config.yaml" in done.stderr, done.stderr[-2000:]
    (tmp_path / "config.yaml").write_text("sample_rate: 16000\n")
    done = run_spark_server("--model", str(tmp_path), "--ref-data", str(tmp_path / "none"),
                       "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 1, done.stderr[-2000:]
    # Here torch/SparkTTS are missing; in an image built from a bad source zip the same path reports it.
    assert "ModuleNotFoundError" in done.stderr or "No module named" in done.stderr, done.stderr[-2000:]
