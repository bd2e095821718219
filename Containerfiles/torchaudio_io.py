"""torchaudio's file I/O for code written before torchaudio 2.9, in images with torchaudio 2.9 or newer.

torchaudio 2.9 removed `list_audio_backends()` and made `load()` depend on the separate torchcodec package
(and FFmpeg). fish-speech 1.4's tools/api.py calls `torchaudio.list_audio_backends()` when it is imported
and `torchaudio.load()` to read reference voices. Installed with a .pth file, this module waits for
torchaudio to be imported and, only if torchaudio lacks `list_audio_backends`, adds it (answering
["soundfile"]) and serves `load()` through soundfile: float32 samples, (channels, frames) by default, as
torchaudio's own soundfile backend returned them. Nothing else of torchaudio is touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


def _load(uri, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True, channels_first: bool = True,
          format: str | None = None, buffer_size: int = 4096, backend: str | None = None):
    import soundfile
    import torch

    data, sample_rate = soundfile.read(uri, start=frame_offset, frames=num_frames, dtype="float32",
                                       always_2d=True)
    samples = torch.from_numpy(data)
    return (samples.T.contiguous() if channels_first else samples), sample_rate


def _list_audio_backends() -> list[str]:
    return ["soundfile"]


def _patch(torchaudio) -> None:
    if not hasattr(torchaudio, "list_audio_backends"):
        torchaudio.list_audio_backends = _list_audio_backends
        torchaudio.load = _load


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds torchaudio like the normal path finder does and patches the module once it has run."""

    def find_spec(self, name, path, target=None):
        if name != "torchaudio":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if "torchaudio" in sys.modules:
    _patch(sys.modules["torchaudio"])
elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport())
