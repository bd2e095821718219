"""Property tests (hypothesis) of the server's request models and the small parsers behind them: no input
crashes them or takes long, and what they accept is what the engines can use."""

from __future__ import annotations

import json
import os

import pytest

for _module in ("hypothesis", "pydantic", "imgbuild_runtime"):
    if os.environ.get("CI", "").lower() not in ("true", "1", "yes"):
        pytest.importorskip(_module)  # under CI a missing dependency fails the run instead

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from imgbuild_runtime.api_models import InvokeRequest, SpeechRequest  # noqa: E402
from imgbuild_runtime.piper_engine import split_at_budget  # noqa: E402
from imgbuild_runtime.voices import parse_voice_map  # noqa: E402

# Every code point, lone surrogates and NUL included (st.text() leaves surrogates out by default).
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=200)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
SPEECH_KEYS = st.sampled_from(["model", "input", "voice", "instructions", "response_format", "speed", "stream"])
INVOKE_KEYS = st.sampled_from(["text", "reference_text", "reference_audio", "speaker", "emotion", "format",
                               "streaming", "top_p", "temperature", "chunk_length", "max_new_tokens"])  # fmt: skip
FAST = settings(max_examples=200, deadline=500)  # each example within 0.5 s


def _speakable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@FAST
@given(st.one_of(JSON, st.dictionaries(SPEECH_KEYS, JSON), st.dictionaries(INVOKE_KEYS, JSON)))
def test_any_json_is_a_request_or_a_validation_error(body: object) -> None:
    for model in (SpeechRequest, InvokeRequest):
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            json.dumps(exc.errors(include_url=False, include_context=False), default=str)  # renderable as a 400
            continue
        for value in parsed.model_dump().values():
            if isinstance(value, str):
                assert _speakable(value)


@FAST
@given(ANY_TEXT, ANY_TEXT, st.floats(allow_nan=True, allow_infinity=True))
def test_accepted_text_is_speakable_and_refused_text_is_not(text: str, voice: str, speed: float) -> None:
    try:
        parsed = SpeechRequest.model_validate({"input": text, "voice": voice, "speed": speed})
    except ValidationError:
        assert not _speakable(text) or not _speakable(voice) or len(voice) > 200 or not 0.25 <= speed <= 4.0
        return
    assert parsed.input == text and _speakable(parsed.input) and 0.25 <= parsed.speed <= 4.0
    assert parsed.response_format == "mp3" and parsed.stream is None


@FAST
@given(ANY_TEXT)
def test_voice_map_text_parses_or_names_its_line(text: str) -> None:
    try:
        table = parse_voice_map(text, "map.txt")
    except ValueError as exc:
        assert str(exc).startswith("map.txt line ")
        return
    for name, voice in table.items():
        assert name and voice and "=" not in name and "," not in name + voice and "#" not in name + voice


@FAST
@given(st.lists(st.sampled_from(["a", "b", " ", ",", "ˈ"]), max_size=600), st.integers(2, 300))
def test_phoneme_budget_pieces(phonemes: list[str], budget: int) -> None:
    pieces = split_at_budget(phonemes, budget)
    assert [p for piece in pieces for p in piece] == phonemes
    assert all(0 < len(piece) <= budget for piece in pieces)
