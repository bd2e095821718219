"""Request bodies: OpenAI's speech request (as Kokoro-FastAPI and others serve it) and fish-speech 1.2's.

Unknown fields are ignored rather than refused: OpenAI's SDK and fish-speech's post_api send fields this
server has no use for (`ref_json`...), and those clients must keep working. Text fields refuse NUL
characters and lone surrogates (a JSON "\\ud800" escape): no engine can speak them, and they are a 400.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _speakable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not text") from None
    return value


Text = Annotated[str, AfterValidator(_speakable)]
Name = Annotated[str, Field(max_length=200), AfterValidator(_speakable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SpeechRequest(_Body):
    model: Name | None = Field(
        None, description="Model id from /v1/models; tts-1, tts-1-hd and gpt-4o-mini-tts are accepted too."
    )
    input: Text = Field(description="Text to speak.")
    voice: Name = Field(
        "default", description="A name from /v1/audio/voices (speaker/emotion, speaker, default) or an alias."
    )
    instructions: Text | None = Field(None, max_length=4096, description="Accepted; engines without it ignore it.")
    response_format: Name = Field("mp3", description="mp3, opus, aac, flac, wav or pcm (16-bit mono LE).")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="2.0 speaks twice as fast, 0.5 half as fast.")
    stream: bool | None = Field(
        None,
        description="Send audio sentence by sentence as it is made. Default: yes for mp3, opus, aac and pcm; "
        "wav and flac come whole, with their length in the header.",
    )


class InvokeRequest(_Body):
    """fish-speech 1.2's /v1/invoke body (tools/api.py InvokeRequest; tools/post_api.py sends it)."""

    text: Text
    reference_text: Text | None = None
    reference_audio: str | None = Field(None, description="Base64 of an audio file, as post_api sends it.")
    max_new_tokens: int = Field(1024, ge=0)
    chunk_length: Annotated[int, Field(ge=0, le=500)] = 100
    top_p: Annotated[float, Field(ge=0.1, le=1.0)] = 0.7
    repetition_penalty: Annotated[float, Field(ge=0.9, le=2.0)] = 1.2
    temperature: Annotated[float, Field(ge=0.1, le=1.0)] = 0.7
    speaker: Name | None = None
    emotion: Name | None = None
    format: Name = "wav"
    streaming: bool = False
    # ref_json / ref_base named server-side paths in fish-speech; this server uses its own ref_data only.
    ref_json: str | None = None
    ref_base: str | None = None

    def sampling(self) -> dict[str, float]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "chunk_length": self.chunk_length,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "temperature": self.temperature,
        }
