"""Reference voices for the TTS recipes, spoken by espeak-ng (Debian package espeak-ng).

`make_ref_data(folder)` writes the layout fish-speech's tools/gen_ref.py and tools/api.py read (seed 000):
`ref_data/<speaker>/<emotion>/<name>.wav` (16-bit mono PCM at espeak-ng's 22050 Hz) beside `<name>.lab`
(the words spoken), with an English speaker and the Chinese speaker `测试说话`.

    python -m tests.support.refvoices OUT
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.standins import partial_path, write_text


@dataclass(frozen=True)
class RefVoice:
    speaker: str
    emotion: str
    name: str
    voice: str  # espeak-ng voice
    text: str


VOICES = (
    RefVoice("speaker-en", "neutral", "hello", "en-us", "Hello, this is a reference voice for speech tests."),
    RefVoice("测试说话", "平静", "参考", "cmn", "你好，这是语音测试的参考声音。"),
)


def espeak() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; scripts/setup.sh installs it)")
    return found


def make_ref_data(folder: Path, voices: tuple[RefVoice, ...] = VOICES) -> Path:
    """Write each voice's .wav and .lab under folder/<speaker>/<emotion>/; returns `folder`."""
    program = espeak()
    for voice in voices:
        base = Path(folder) / voice.speaker / voice.emotion / voice.name
        base.parent.mkdir(parents=True, exist_ok=True)
        wav = base.with_suffix(".wav")
        with partial_path(wav) as partial:
            done = subprocess.run([program, "-v", voice.voice, "-w", str(partial), voice.text],
                                  capture_output=True, text=True)
            if done.returncode != 0 or not partial.exists() or partial.stat().st_size <= 44:
                raise RuntimeError(f"espeak-ng made no audio for {wav}: {done.stderr.strip()}")
        write_text(base.with_suffix(".lab"), voice.text)
    return Path(folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.refvoices OUT")
    print(make_ref_data(Path(sys.argv[1])))
