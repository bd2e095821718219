"""Voices from the story's reference layout: ref_data/<speaker>/<emotion>/<name>.wav + <name>.lab.

A recording is paired with the transcript of the same name, never with a random one (fish-speech 1.2 chose
the .wav and the .lab of a folder independently at random). A voice is named `speaker/emotion`; `speaker`
alone means its emotion folder called `default` if there is one, else its first emotion in sorted order. All
pairs of a folder are the voice's references, in name order. The model's built-in speakers are voices too,
and `default` is always the model's default speaker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownVoice

DEFAULT_VOICE = "default"
AUDIO_SUFFIXES = (".wav", ".flac")
TEXT_SUFFIX = ".lab"


@dataclass(frozen=True)
class ReferencePair:
    audio: Path
    text: Path

    def to_json(self) -> dict[str, str]:
        return {"audio": str(self.audio), "text": str(self.text)}


@dataclass(frozen=True)
class Voice:
    name: str
    speaker: str | None  # built-in speaker of the model to use, None = the model's default
    emotion: str | None
    references: tuple[ReferencePair, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "speaker": self.speaker,
            "emotion": self.emotion,
            "references": [r.to_json() for r in self.references],
        }


@dataclass(frozen=True)
class VoiceCatalog:
    voices: dict[str, Voice]
    problems: tuple[str, ...]  # files that were skipped, and why

    def names(self) -> list[str]:
        return sorted(self.voices)

    def resolve(self, name: str | None) -> Voice:
        key = (name or DEFAULT_VOICE).strip().strip("/")
        voice = self.voices.get(key)
        if voice is None:
            raise UnknownVoice(name or "", self.names())
        return voice

    def to_json(self) -> dict[str, object]:
        return {
            "voices": self.names(),
            "default": DEFAULT_VOICE,
            "details": [self.voices[n].to_json() for n in self.names()],
            "problems": list(self.problems),
        }


def _pairs(folder: Path, problems: list[str]) -> tuple[ReferencePair, ...]:
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    pairs = []
    for name, path in sorted(files.items()):
        if path.suffix.lower() in AUDIO_SUFFIXES:
            label = files.get(path.stem + TEXT_SUFFIX)
            if label is None:
                problems.append(f"{path}: no {path.stem}{TEXT_SUFFIX} beside it; skipped")
            else:
                pairs.append(ReferencePair(audio=path, text=label))
        elif path.suffix == TEXT_SUFFIX and not any(path.stem + s in files for s in AUDIO_SUFFIXES):
            problems.append(f"{path}: no audio file of the same name; skipped")
    return tuple(pairs)


def scan_ref_data(root: Path | None, builtin_speakers: Iterable[str] = ()) -> VoiceCatalog:
    """Catalog of the model's speakers plus every complete speaker/emotion folder under root."""
    builtin = set(builtin_speakers)
    voices: dict[str, Voice] = {DEFAULT_VOICE: Voice(DEFAULT_VOICE, None, None, ())}
    for speaker in sorted(builtin):
        voices[speaker] = Voice(speaker, speaker, None, ())
    problems: list[str] = []
    if root is None or not root.is_dir():
        return VoiceCatalog(voices, tuple(problems))
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        speaker = speaker_dir.name
        emotions: dict[str, Voice] = {}
        for emotion_dir in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
            pairs = _pairs(emotion_dir, problems)
            if pairs:
                name = f"{speaker}/{emotion_dir.name}"
                builtin_speaker = speaker if speaker in builtin else None
                emotions[emotion_dir.name] = Voice(name, builtin_speaker, emotion_dir.name, pairs)
            else:
                problems.append(f"{emotion_dir}: no .wav/.lab pair; not a voice")
        stray = [p.name for p in speaker_dir.iterdir() if p.is_file()]
        if stray:
            problems.append(f"{speaker_dir}: files directly under a speaker are ignored: {', '.join(sorted(stray))}")
        if not emotions:
            continue
        for voice in emotions.values():
            voices[voice.name] = voice
        chosen = emotions.get("default") or emotions[sorted(emotions)[0]]
        voices[speaker] = Voice(speaker, chosen.speaker, chosen.emotion, chosen.references)
    return VoiceCatalog(voices, tuple(problems))
