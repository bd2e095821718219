"""Voices from fish-speech's reference layout: ref_data/<speaker>/<emotion>/<name>.wav + <name>.lab.

A recording is paired with the transcript of the same name, never with a random one (fish-speech 1.2 chose
the .wav and the .lab of a folder independently at random). A voice is named `speaker/emotion`; `speaker`
alone means its emotion folder called `default` if there is one, else its first emotion in sorted order. All
pairs of a folder are the voice's references, in name order. The model's built-in speakers are voices too,
and `default` is always the model's default speaker.

OpenAI's voice names (alloy, echo, ...) are aliases: a table maps each to one of these voices (see
parse_voice_map), and a name the table leaves out means `default`, so a client that cannot choose a voice
name still gets speech. Responses show paths relative to the ref_data folder, never the server's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UnknownVoice

DEFAULT_VOICE = "default"
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
AUDIO_SUFFIXES = (".wav", ".flac")
TEXT_SUFFIX = ".lab"


@dataclass(frozen=True)
class ReferencePair:
    audio: Path
    text: Path

    def to_json(self, root: Path | None = None) -> dict[str, str]:
        return {"audio": shown_path(self.audio, root), "text": shown_path(self.text, root)}


@dataclass(frozen=True)
class Voice:
    name: str
    speaker: str | None  # built-in speaker of the model to use, None = the model's default
    emotion: str | None
    references: tuple[ReferencePair, ...]

    def to_json(self, root: Path | None = None) -> dict[str, object]:
        return {
            "name": self.name,
            "speaker": self.speaker,
            "emotion": self.emotion,
            "references": [r.to_json(root) for r in self.references],
        }


@dataclass(frozen=True)
class VoiceCatalog:
    voices: dict[str, Voice]
    problems: tuple[str, ...]  # files that were skipped, and why
    root: Path | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # e.g. OpenAI's "alloy" -> "2r/happy"

    def names(self) -> list[str]:
        return sorted(self.voices)

    def resolve(self, name: str | None) -> Voice:
        key = (name or DEFAULT_VOICE).strip().strip("/")
        voice = self.voices.get(key) or self.voices.get(self.aliases.get(key, ""))
        if voice is None:
            raise UnknownVoice(name or "", self.names() + sorted(set(self.aliases) - set(self.voices)))
        return voice

    def with_aliases(self, table: dict[str, str]) -> "VoiceCatalog":
        """OpenAI's names (unmapped ones -> default) plus the table's own names; targets must exist."""
        for alias, target in table.items():
            if target not in self.voices:
                raise ValueError(f"voice map: {alias}={target}: no voice {target!r}; voices: {', '.join(self.names())}")
        aliases = {name: DEFAULT_VOICE for name in OPENAI_VOICES} | table
        return replace(self, aliases=aliases)

    def to_json(self) -> dict[str, object]:
        return {
            "voices": self.names(),
            "default": DEFAULT_VOICE,
            "aliases": dict(sorted(self.aliases.items())),
            "details": [self.voices[n].to_json(self.root) for n in self.names()],
            "problems": list(self.problems),
        }


def parse_voice_map(text: str, source: str) -> dict[str, str]:
    """`NAME=VOICE` entries separated by commas or lines; `#` starts a comment. Errors name source and line."""
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for entry in line.split("#", 1)[0].split(","):
            if not entry.strip():
                continue
            name, sep, voice = (part.strip() for part in entry.partition("="))
            if not sep or not name or not voice:
                raise ValueError(f"{source} line {number}: expected NAME=VOICE, got {entry.strip()!r}")
            table[name] = voice
    return table


def shown_path(path: Path, root: Path | None) -> str:
    """A path as responses show it: relative to ref_data, never the server's absolute layout."""
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return path.name


def _pairs(folder: Path, problems: list[str], root: Path) -> tuple[ReferencePair, ...]:
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    pairs = []
    for name, path in sorted(files.items()):
        if path.suffix.lower() in AUDIO_SUFFIXES:
            label = files.get(path.stem + TEXT_SUFFIX)
            if label is None:
                problems.append(f"{shown_path(path, root)}: no {path.stem}{TEXT_SUFFIX} beside it; skipped")
            else:
                pairs.append(ReferencePair(audio=path, text=label))
        elif path.suffix == TEXT_SUFFIX and not any(path.stem + s in files for s in AUDIO_SUFFIXES):
            problems.append(f"{shown_path(path, root)}: no audio file of the same name; skipped")
    return tuple(pairs)


def scan_ref_data(root: Path | None, builtin_speakers: Iterable[str] = ()) -> VoiceCatalog:
    """Catalog of the model's speakers plus every complete speaker/emotion folder under root."""
    builtin = set(builtin_speakers)
    voices: dict[str, Voice] = {DEFAULT_VOICE: Voice(DEFAULT_VOICE, None, None, ())}
    for speaker in sorted(builtin):
        voices[speaker] = Voice(speaker, speaker, None, ())
    problems: list[str] = []
    if root is None or not root.is_dir():
        return VoiceCatalog(voices, tuple(problems), root)
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        speaker = speaker_dir.name
        emotions: dict[str, Voice] = {}
        for emotion_dir in sorted(p for p in speaker_dir.iterdir() if p.is_dir()):
            pairs = _pairs(emotion_dir, problems, root)
            if pairs:
                name = f"{speaker}/{emotion_dir.name}"
                builtin_speaker = speaker if speaker in builtin else None
                emotions[emotion_dir.name] = Voice(name, builtin_speaker, emotion_dir.name, pairs)
            else:
                problems.append(f"{shown_path(emotion_dir, root)}: no .wav/.lab pair; not a voice")
        stray = [p.name for p in speaker_dir.iterdir() if p.is_file()]
        if stray:
            problems.append(f"{shown_path(speaker_dir, root)}: files directly under a speaker are ignored: {', '.join(sorted(stray))}")
        if not emotions:
            continue
        for voice in emotions.values():
            voices[voice.name] = voice
        chosen = emotions.get("default") or emotions[sorted(emotions)[0]]
        voices[speaker] = Voice(speaker, chosen.speaker, chosen.emotion, chosen.references)
    return VoiceCatalog(voices, tuple(problems), root)
