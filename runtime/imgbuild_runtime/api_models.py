"""Request bodies: OpenAI's speech request (as Kokoro-FastAPI and others serve it) and fish-speech 1.2's.

Unknown fields are ignored rather than refused: OpenAI's SDK and fish-speech's post_api send fields this
server has no use for (`instructions`, `ref_json`...), and those clients must keep working.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SpeechRequest(_Body):
    model: str | None = Field(None, description="Model id from /v1/models; tts-1 and tts-1-hd are accepted too.")
    input: str = Field(description="Text to speak.")
    voice: str = Field("default", description="A name from /v1/audio/voices: speaker/emotion, speaker or default.")
    response_format: str = Field("wav", description="wav, pcm (16-bit mono little-endian) or flac.")
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream: bool = Field(False, description="Send audio sentence by sentence as it is made (wav or pcm).")


class InvokeRequest(_Body):
    """fish-speech 1.2's /v1/invoke body (tools/api.py InvokeRequest; tools/post_api.py sends it)."""

    text: str
    reference_text: str | None = None
    reference_audio: str | None = Field(None, description="Base64 of an audio file, as post_api sends it.")
    max_new_tokens: int = Field(1024, ge=0)
    chunk_length: Annotated[int, Field(ge=0, le=500)] = 100
    top_p: Annotated[float, Field(ge=0.1, le=1.0)] = 0.7
    repetition_penalty: Annotated[float, Field(ge=0.9, le=2.0)] = 1.2
    temperature: Annotated[float, Field(ge=0.1, le=1.0)] = 0.7
    speaker: str | None = None
    emotion: str | None = None
    format: str = "wav"
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
