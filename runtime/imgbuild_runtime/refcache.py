"""Encoded reference voices, cached in memory and on disk by content hash.

Encoding a reference is the slow step of every cloning request in fish-speech (34 s to load and encode
2.9 s of audio on an old laptop CPU). The key is sha256(encoder id, sha256 of the audio bytes,
sha256 of the transcript), so an edited .wav or .lab, or a new codec, never reuses stale tokens, and a
renamed file still hits. Disk entries are .npz files written atomically (NAME.partial, fsync, rename);
their total size is capped, and the least recently used entries (by modification time, touched on every
disk hit) are removed first. Uploaded recordings are decoded only up to a length limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import TooLong, read_audio
from .engine import EncodedReference
from .errors import BadReferenceAudio, TTSError, VoiceDataError
from .voices import ReferencePair, shown_path

log = logging.getLogger(__name__)

Encoder = Callable[[np.ndarray, int, str], EncodedReference]


@dataclass(frozen=True)
class CacheStats:
    memory_hits: int
    disk_hits: int
    encoded: int

    def to_json(self) -> dict[str, int]:
        return {"memory_hits": self.memory_hits, "disk_hits": self.disk_hits, "encoded": self.encoded}


class ReferenceCache:
    def __init__(
        self,
        encoder_id: str,
        encode: Encoder,
        cache_dir: Path | None,
        max_items: int = 256,
        max_disk_bytes: int = 256 * 1024 * 1024,
        max_seconds: float | None = None,
        root: Path | None = None,
    ) -> None:
        self.encoder_id = encoder_id
        self._max_disk_bytes = max_disk_bytes
        self._max_seconds = max_seconds
        self._root = root
        self._encode = encode
        self.cache_dir = cache_dir
        self._max_items = max_items
        self._memory: OrderedDict[str, EncodedReference] = OrderedDict()
        self._file_digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self._memory_hits = self._disk_hits = self._encoded = 0

    def stats(self) -> CacheStats:
        return CacheStats(self._memory_hits, self._disk_hits, self._encoded)

    def key(self, audio_digest: str, text: str) -> str:
        text_digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return hashlib.sha256(f"{self.encoder_id}\0{audio_digest}\0{text_digest}".encode()).hexdigest()

    def get_pair(self, pair: ReferencePair) -> EncodedReference:
        """The encoded form of a ref_data pair; the audio is read only when it must be encoded."""
        try:
            text = pair.text.read_text(encoding="utf-8").strip()
            digest = self._file_digest(pair.audio)
        except (OSError, UnicodeDecodeError) as exc:
            raise VoiceDataError(f"cannot read reference {shown_path(pair.audio, self._root)}: {exc}") from exc
        what = shown_path(pair.audio, self._root)
        return self._get(self.key(digest, text), pair.audio.read_bytes, text, what, VoiceDataError)

    def get_bytes(self, audio: bytes, text: str) -> EncodedReference:
        """The encoded form of an uploaded reference (fish-speech's base64 `reference_audio`)."""
        key = self.key(hashlib.sha256(audio).hexdigest(), text)
        return self._get(key, lambda: audio, text, "reference_audio", BadReferenceAudio)

    def _file_digest(self, path: Path) -> str:
        st = path.stat()
        memo_key = (str(path), st.st_mtime_ns, st.st_size)
        digest = self._file_digests.get(memo_key)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digest = self._file_digests[memo_key] = h.hexdigest()
        return digest

    def _get(
        self, key: str, load_audio: Callable[[], bytes], text: str, what: str, error: type[TTSError]
    ) -> EncodedReference:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self._memory_hits += 1
                return hit
            encoded = self._read_disk(key)
            if encoded is not None:
                self._disk_hits += 1
            else:
                try:
                    samples, rate = read_audio(load_audio(), self._max_seconds)
                except TooLong as exc:
                    raise error(f"{what} is {exc}") from exc
                except Exception as exc:  # libsndfile raises its own error types for bad files
                    raise error(f"cannot decode {what}: {exc}") from exc
                encoded = self._encode(samples, rate, text)
                self._encoded += 1
                self._write_disk(key, encoded)
            self._memory[key] = encoded
            while len(self._memory) > self._max_items:
                self._memory.popitem(last=False)
            return encoded

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.npz" if self.cache_dir else None

    def _read_disk(self, key: str) -> EncodedReference | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                encoded = EncodedReference.from_npz_dict({k: data[k] for k in data.files})
            os.utime(path)  # recently used: pruned last
            return encoded
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("reference cache entry %s is unreadable (%s); encoding again", path, exc)
            return None

    def _write_disk(self, key: str, encoded: EncodedReference) -> None:
        path = self._path(key)
        if path is None:
            return
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                np.savez(f, **encoded.to_npz_dict())
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
            self._prune(keep=path)
        except OSError as exc:
            # A read-only image or a full disk must not fail the request: the memory cache still works.
            log.warning("cannot write reference cache entry %s: %s", path, exc)
            partial.unlink(missing_ok=True)

    def _prune(self, keep: Path) -> None:
        """Remove the least recently used entries until the cache fits its size cap."""
        assert self.cache_dir is not None
        entries = []
        for entry in self.cache_dir.glob("*/*.npz"):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self._max_disk_bytes:
                break
            if entry != keep:
                entry.unlink(missing_ok=True)
                total -= size

