"""Parity volumes (format 2): written by archive after the data volumes, described in the set manifest.

archive calls ``add_parity_volumes(out_dir, manifest, ParityOptions(m))`` once every data volume's files are
in place and before the manifest and SHA256SUMS are written to the volumes; it returns the manifest with the
M parity volumes and the ``parity`` section added. The math is in imgbuild.parity.erasure; FORMAT.md ("Parity
volumes") is the spec a stranger can implement from.

The payload stream of a data volume is every file its manifest entry lists, back to back, in the listed
order (README.txt and restore.sh included: they differ per volume, and rebuilding them from parity means
repair needs no generator to give back the exact bytes). The payload stream of a parity volume is its
parity parts. imgbuild-set.json and SHA256SUMS are outside the code: the manifest is the same on every
volume (and in the catalog), and SHA256SUMS is made from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgbuild.foundation.atomicfile import write_file_atomic
from imgbuild.foundation.errors import ArchiveError, DiskFull
from imgbuild.foundation.progress import ProgressCallback, ProgressEvent, no_progress
from imgbuild.parity import erasure
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE, BlockHasher
from imgbuild.setformat.manifest import FileEntry, Parity, SetManifest, Volume, revalidate


def payload_files(volume: Volume) -> list[FileEntry]:
    """The files whose bytes, back to back, form the volume's payload stream (see module doc)."""
    if volume.role == "parity":
        return [f for f in volume.files if layout.PARITY_PART_RE.match(f.path)]
    return list(volume.files)


def segments(volume: Volume) -> list[erasure.Segment]:
    return [erasure.Segment(f.path, f.size) for f in payload_files(volume)]


def folder_opener(volume_dir: Path) -> erasure.Opener:
    def open_file(name: str) -> BinaryIO:
        return open(volume_dir / name, "rb")

    return open_file


@dataclass(frozen=True)
class ParityOptions:
    parity_volumes: int
    chunk_size: int = erasure.CHUNK


class _PartWriter:
    """The sink of one parity stream: parts of at most MAX_PART_SIZE, hashed as written, renamed when whole."""

    def __init__(self, volume_dir: Path, max_part: int = layout.MAX_PART_SIZE) -> None:
        self.volume_dir = volume_dir
        self.max_part = max_part
        self.entries: list[FileEntry] = []
        self._fh: BinaryIO | None = None
        self._hasher = BlockHasher()
        (volume_dir / layout.PARITY_DIR).mkdir(parents=True, exist_ok=True)

    def __call__(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self._fh is None:
                self._open()
            take = min(len(view), self.max_part - self._hasher.size)
            self._write(view[:take])
            view = view[take:]
            if self._hasher.size == self.max_part:
                self._finish()

    def close(self) -> list[FileEntry]:
        if self._fh is not None:
            self._finish()
        return self.entries

    def _path(self) -> Path:
        return self.volume_dir / layout.parity_part_path(len(self.entries) + 1)

    def _open(self) -> None:
        self._fh = open(layout.partial(self._path()), "wb")
        self._hasher = BlockHasher()

    def _write(self, view: memoryview) -> None:
        assert self._fh is not None
        try:
            self._fh.write(view)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise DiskFull(str(self.volume_dir), len(view)) from exc
            raise
        self._hasher.update(view)

    def _finish(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        path = self._path()
        os.replace(layout.partial(path), path)
        rel = layout.parity_part_path(len(self.entries) + 1)
        self.entries.append(FileEntry(path=rel, size=self._hasher.size, sha256=self._hasher.hexdigest(),
                                      blocks=self._hasher.block_hexdigests()))


def add_parity_volumes(
    volume_dir: Callable[[int], Path],
    manifest: SetManifest,
    options: ParityOptions,
    progress: ProgressCallback = no_progress,
    readme: Callable[[SetManifest, int], bytes] | None = None,
) -> SetManifest:
    """Write M parity volumes after the N data volumes of ``manifest``; return the manifest that lists them.

    ``volume_dir(k)`` is the folder volume k is being written in (archive's ``.partial`` folders); the
    parity volumes' folders are created there. Reading the data volumes for the code also hashes them:
    a data file whose sha256 is no longer the one in the manifest stops the archive (the disk changed it),
    and files without block hashes get them. The result is a format 2 manifest, or format 3 when the data volumes' was. ``readme(manifest, k)``
    renders a parity volume's README.txt (default: parity_readme). A rerun rewrites the parity volumes.
    """
    data = list(manifest.volumes)
    n_data, n_parity = len(data), options.parity_volumes
    erasure.check_shape(n_data, n_parity)
    if any(v.role != "data" for v in data):
        raise ArchiveError("this manifest already has parity volumes")
    # Files that have block hashes (archive's writer makes them) only need their sha256 checked: half the work.
    streams = [erasure.PayloadStream(segments(v), folder_opener(volume_dir(v.number)),
                                     hashlib.sha256 if all(f.blocks is not None for f in v.files) else BlockHasher)
               for v in data]
    length = max(s.length for s in streams)
    folders = [volume_dir(n_data + j + 1) for j in range(n_parity)]
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    writers = [_PartWriter(folder) for folder in folders]
    task = f"parity volumes ({n_data} data + {n_parity} parity)"

    def on_chunk(done: int) -> None:
        progress(ProgressEvent(task=task, done=done, total=length))

    try:
        erasure.encode_streams(streams, n_parity, writers, on_chunk, options.chunk_size)
    finally:
        for stream in streams:
            stream.close()
    progress(ProgressEvent(task=task, done=length, total=length, finished=True))
    volumes = [_with_blocks(v, s, volume_dir(v.number)) for v, s in zip(data, streams)]
    parity = Parity(scheme=erasure.SCHEME, data_volumes=n_data, parity_volumes=n_parity, length=length,
                    coefficients=erasure.coefficients(n_data, n_parity))
    draft = manifest.model_copy(update={"parity": parity, "volume_count": n_data + n_parity, "block_size": BLOCK_SIZE,
                                        "format_version": max(manifest.format_version, layout.FORMAT_VERSION_BLOCKS)})
    spec = _format_doc_of(data[0], volume_dir(data[0].number))
    for j, (folder, writer) in enumerate(zip(folders, writers)):
        number = n_data + j + 1
        parts = writer.close()
        text = (readme or parity_readme)(draft, number)
        write_file_atomic(folder / layout.README_NAME, text)
        docs = [entry_for_bytes(layout.README_NAME, text)]
        if spec is not None:  # the same FORMAT.md as the data volumes, so every disc describes the format
            write_file_atomic(folder / layout.FORMAT_DOC_NAME, spec)
            docs.append(entry_for_bytes(layout.FORMAT_DOC_NAME, spec))
        volumes.append(Volume(number=number, folder=layout.volume_folder(manifest.set_id, number), role="parity",
                              files=[*docs, *parts]))
    return revalidate(draft.model_copy(update={"volumes": volumes}))


def _format_doc_of(volume: Volume, folder: Path) -> bytes | None:
    """The FORMAT.md a data volume lists (checked against its sha256), or None when it has none."""
    entry = next((f for f in volume.files if f.path == layout.FORMAT_DOC_NAME), None)
    if entry is None:
        return None
    data = (folder / layout.FORMAT_DOC_NAME).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ArchiveError(f"{folder / layout.FORMAT_DOC_NAME} changed after it was written")
    return data


def _with_blocks(volume: Volume, stream: erasure.PayloadStream, folder: Path) -> Volume:
    """The volume's entry with block hashes, after checking each file still has the listed sha256."""
    assert stream.hashers is not None
    files = []
    for entry, hasher, size in zip(volume.files, stream.hashers, stream.hashed):
        if size != entry.size or hasher.hexdigest() != entry.sha256:
            raise ArchiveError(f"{folder / entry.path} changed after it was written (sha256 {hasher.hexdigest()}, "
                               f"manifest {entry.sha256}); the disk may be failing")
        if entry.blocks is None:
            entry = entry.model_copy(update={"blocks": hasher.block_hexdigests()})
        files.append(entry)
    return volume.model_copy(update={"files": files})


def entry_for_bytes(path: str, data: bytes) -> FileEntry:
    hasher = BlockHasher()
    hasher.update(data)
    return FileEntry(path=path, size=len(data), sha256=hasher.hexdigest(), blocks=hasher.block_hexdigests())


def check_parity(manifest: SetManifest) -> None:
    """Refuse a parity section whose code is not the one this imgbuild computes (a hostile or foreign set)."""
    parity = manifest.parity
    if parity is None:
        return
    if parity.coefficients != erasure.coefficients(parity.data_volumes, parity.parity_volumes):
        raise ArchiveError("the manifest's parity coefficients are not zfec's for this N and M",
                           hint="FORMAT.md, 'Parity volumes', describes the code this imgbuild reads")


def parity_readme(manifest: SetManifest, number: int) -> bytes:
    """README.txt of a parity volume, English and Chinese."""
    assert manifest.parity is not None
    n, m = manifest.parity.data_volumes, manifest.parity.parity_volumes
    k = number - n
    return f"""imgbuild archive set {manifest.set_id} ({manifest.name}), volume {number} of {n + m}
This is PARITY volume {k} of {m}. It holds no image data you can load by itself.

The set has {n} data volumes (1-{n}) and {m} parity volume(s) ({n + 1}-{n + m}). If up to {m} of
the {n + m} discs are lost or unreadable, imgbuild rebuilds them from the others:

    imgbuild verify  DISC_OR_ISO...                 # names damaged files and 4 MiB blocks
    imgbuild repair  DISC_OR_ISO... --out REPAIRED  # rebuilds what is damaged or missing, then verifies it

Check this disc without imgbuild: sha256sum -c SHA256SUMS
The math (Reed-Solomon over GF(2^8), zfec) is in FORMAT.md of imgbuild and in {layout.MANIFEST_NAME}.

imgbuild 归档集 {manifest.set_id}（{manifest.name}），第 {number} 卷，共 {n + m} 卷
这是第 {k} 个校验卷（共 {m} 个），本身不含可直接加载的镜像数据。

本归档集有 {n} 个数据卷（1-{n}）和 {m} 个校验卷（{n + 1}-{n + m}）。若 {n + m} 张光盘中最多
{m} 张丢失或无法读取，可用 imgbuild 由其余光盘重建：

    imgbuild verify  光盘或ISO...                    # 指出损坏的文件和 4 MiB 数据块
    imgbuild repair  光盘或ISO... --out 修复目录     # 只重建损坏或缺失的部分，然后校验结果

不用 imgbuild 检查本光盘：sha256sum -c SHA256SUMS
""".encode("utf-8")


def readme_parity_section(set_id: str, data_volumes: int, parity_volumes: int) -> str:
    """The paragraph every data volume's README.txt gets when the set has parity volumes."""
    n, m = data_volumes, parity_volumes
    first, last = layout.volume_folder(set_id, n + 1), layout.volume_folder(set_id, n + m)
    return f"""
4. Parity volumes: repair a damaged or lost disc
------------------------------------------------
This set has {m} PARITY volume(s) besides its {n} data volumes: {first}{' .. ' + last if m > 1 else ''}.
They hold no images themselves, but if up to {m} of all {n + m} discs are lost or unreadable, imgbuild
rebuilds them from the others (Reed-Solomon code, described in FORMAT.md and in {layout.MANIFEST_NAME}):

    imgbuild verify DISC_OR_ISO...                   names damaged files and 4 MiB blocks, says if repairable
    imgbuild repair DISC_OR_ISO... --out REPAIRED    rebuilds only what is damaged or missing, then verifies it
    imgbuild repair DISC_OR_ISO... --out REPAIRED --iso    also writes ISO images of the rebuilt discs to burn

Keep the parity discs in another place than the data discs.

4. 校验卷：修复损坏或丢失的光盘
------------------------------
本归档集除 {n} 个数据卷外还有 {m} 个校验卷：{first}{' .. ' + last if m > 1 else ''}。
校验卷本身不含镜像；但只要全部 {n + m} 张光盘中丢失或无法读取的不超过 {m} 张，imgbuild 就能由其余光盘重建它们
（Reed-Solomon 编码，见 FORMAT.md 和 {layout.MANIFEST_NAME}）：

    imgbuild verify 光盘或ISO...                     指出损坏的文件和 4 MiB 数据块，并说明能否修复
    imgbuild repair 光盘或ISO... --out 修复目录      只重建损坏或缺失的部分，然后校验结果
    imgbuild repair 光盘或ISO... --out 修复目录 --iso    同时为重建的光盘生成可刻录的 ISO 镜像

请把校验光盘与数据光盘分开存放。
"""
