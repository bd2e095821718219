"""Layers read from the engine's own storage (imgbuild/archive/storage_source.py) on real engines.

Every layer of an image with the awkward cases (hard links, a sparse file, long names, xattrs, whiteouts
and an opaque folder, an empty layer, a layer shared by two images) is reassembled from tar-split and
files and must hash to its diff id; an archive through storage must hold exactly the layers an archive
through the save API holds; broken metadata falls back to the save API and says so.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from imgbuild.archive import archive as archive_module
from imgbuild.archive import storage_source as storage_module
from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.archive.storage_source import (
    LayerStore,
    LayerUnreadable,
    Prefetched,
    StorageUnavailable,
    StoredImage,
    StoredLayer,
    layer_chunks,
    open_store,
    sized_entries,
    tar_split_entries,
)
from imgbuild.engine.connect import Engine
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import parse_manifest

pytestmark = pytest.mark.engine

LONG = "n" * 120
AWKWARD = f"""
RUN set -e; mkdir -p /d/sub /d/gone/deep /d/{LONG}/{LONG}; echo a > /d/sub/f; echo b > /d/gone/deep/g; \\
    ln /d/sub/f /d/hard; echo long > /d/{LONG}/{LONG}/{"m" * 150}; \\
    python3 -c "import os; os.setxattr('/d/sub/f', 'user.imgbuild', b'value')"; \\
    python3 -c "f = open('/d/sparse', 'wb'); f.seek(6_000_000); f.write(b'end'); f.close()"; \\
    head -c 3000000 /dev/urandom > /d/random
RUN set -e; rm -rf /d/gone /d/random; rm /d/sub/f; mkdir /d/sub2; echo c > /d/sub2/x
RUN true
"""


def _build(engine: Engine, containerfile: str, tag: str) -> str:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = containerfile.encode()
        info = tarfile.TarInfo("Containerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    log = []
    for line in engine.api.build(fileobj=context, custom_context=True, dockerfile="Containerfile", tag=tag,
                                 rm=True, decode=True):
        log.append(str(line))
    try:
        return str(engine.api.inspect_image(tag)["Id"])
    except Exception as exc:  # the build failed: show why
        raise AssertionError("".join(log)[-3000:]) from exc


@pytest.fixture
def awkward(engine: Engine, bookworm_image: str, unique_tag, cleanup) -> tuple[str, str, str]:
    """(tag of the awkward image, tag of a second image sharing its layers, its id)."""
    tag = cleanup.image(unique_tag("storage-awkward"))
    image_id = _build(engine, f"FROM {bookworm_image}\n{AWKWARD}", tag)
    second = cleanup.image(unique_tag("storage-second"))
    _build(engine, f"FROM {tag}\nRUN echo second > /second\n", second)
    return tag, second, image_id


def _store(engine: Engine) -> LayerStore:
    try:
        return open_store(engine)
    except StorageUnavailable as exc:
        pytest.fail(f"the test engine's storage should be readable here: {exc.reason}")


def test_every_layer_reassembles_to_its_diff_id(engine: Engine, awkward) -> None:
    tag, _, image_id = awkward
    stored = _store(engine).image(image_id)
    assert stored.id == image_id and hashlib.sha256(stored.config).hexdigest() == image_id.split(":")[1]
    assert len(stored.layers) >= 3  # the bootstrap rootfs plus the RUN steps (Docker keeps no empty layer)
    names = []
    for layer in stored.layers:
        size, _ = sized_entries(layer, keep=0)
        data = b"".join(layer_chunks(layer, tar_split_entries(layer)))
        assert len(data) == size
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.diff_id
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names.append({m.name.removeprefix("./"): m for m in tar.getmembers()})
    first = next(members for members in names if "d/hard" in members)
    second = next(members for members in names if "d/sub2/x" in members)
    link, target = sorted((first["d/hard"], first["d/sub/f"]), key=lambda m: not m.islnk())
    assert link.islnk() and target.isfile() and link.linkname.removeprefix("./") == target.name.removeprefix("./")
    assert first["d/sparse"].size == 6_000_003
    assert f"d/{LONG}/{LONG}/{'m' * 150}" in first
    if engine.kind == "podman":  # Docker Engine's layer tars carry only security.capability xattrs
        assert first["d/sub/f"].pax_headers.get("SCHILY.xattr.user.imgbuild") == "value"
    assert any(name.endswith(".wh.gone") for name in second)  # whiteouts
    assert any(name.endswith(".wh.f") for name in second)
    if engine.kind == "podman":  # `RUN true` leaves an empty layer in Podman's storage
        assert any(not [m for m in members.values() if m.isfile()] for members in names)


@pytest.mark.parametrize("source", ["storage", "api"])
def test_archive_from_storage_matches_the_save_api(engine: Engine, awkward, source: str, tmp_path: Path) -> None:
    tag, second, image_id = awkward
    options = ArchiveOptions(out=tmp_path / "out", media=None, media_size=200_000_000,
                             catalog=tmp_path / "catalog", source=source)
    result = archive(engine, [tag, second], options)
    assert result.layer_source == source and not result.fallbacks
    manifest = parse_manifest((result.volumes[0] / layout.MANIFEST_NAME).read_bytes(), "test")
    assert manifest.images[0].id == image_id
    # The shared layers are stored once; every layer's config diff ids are what was stored.
    assert len(manifest.layers) == len({d for image in manifest.images for d in image.layers})
    stored = _store(engine).image(image_id)
    assert manifest.images[0].layers == [layer.diff_id for layer in stored.layers]


def test_broken_tar_split_falls_back_to_the_save_api(engine: Engine, awkward, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tag, _, image_id = awkward
    real = _store(engine)
    broken = tmp_path / "broken.tar-split.gz"

    class DamagedStore(LayerStore):
        """The real storage, except that one layer's tar-split has a flipped byte in a tar header."""

        def image(self, wanted: str) -> StoredImage:
            stored = real.image(wanted)
            victim = stored.layers[-3]
            lines = gzip.decompress(victim.tar_split.read_bytes()).splitlines()
            at = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == 2)
            entry = json.loads(lines[at])
            header = bytearray(base64.b64decode(entry["payload"]))
            header[100] ^= 1  # the mode field of the first tar header
            entry["payload"] = base64.b64encode(bytes(header)).decode()
            lines[at] = json.dumps(entry).encode()
            broken.write_bytes(gzip.compress(b"\n".join(lines)))
            layers = [dataclasses.replace(layer, tar_split=broken) if layer is victim else layer
                      for layer in stored.layers]
            return dataclasses.replace(stored, layers=layers)

    monkeypatch.setattr(archive_module, "open_store", lambda _engine: DamagedStore(real.kind, real.root, real.driver))
    messages = []
    options = ArchiveOptions(out=tmp_path / "out", media=None, media_size=200_000_000,
                             catalog=tmp_path / "catalog", source="auto")
    result = archive(engine, [tag], options, progress=lambda event: event.message and messages.append(event.message))
    assert result.layer_source == "storage+api"
    assert tag in result.fallbacks
    assert any("save API" in message for message in messages)
    manifest = parse_manifest((result.volumes[0] / layout.MANIFEST_NAME).read_bytes(), "test")
    assert manifest.images[0].id == image_id
    assert manifest.images[0].layers == [layer.diff_id for layer in real.image(image_id).layers]


def test_missing_metadata_is_named(engine: Engine, awkward, tmp_path: Path) -> None:
    _, _, image_id = awkward
    real = _store(engine)
    layer = real.image(image_id).layers[0]
    with pytest.raises(LayerUnreadable, match="tar-split"):
        sized_entries(dataclasses.replace(layer, tar_split=tmp_path / "absent.gz"))
    entry = dataclasses.replace(next(tar_split_entries(layer)), segment=None, name="../../no/such/file", size=10)
    with pytest.raises(LayerUnreadable, match=f"cannot read {layer.files}/no/such/file"):
        list(layer_chunks(layer, [entry]))


def test_remote_engines_use_the_save_api(engine: Engine) -> None:
    remote = dataclasses.replace(engine, host="tcp://192.0.2.1:2375")
    with pytest.raises(StorageUnavailable, match="not on this machine"):
        open_store(remote)


def _headers_only_layer(folder: Path, name: str, blocks: int) -> StoredLayer:
    """A layer whose tar-split holds raw tar bytes only (no files to read)."""
    with gzip.open(folder / f"{name}.tar-split.gz", "wt") as out:
        for _ in range(blocks):
            out.write(json.dumps({"type": 2, "payload": base64.b64encode(b"h" * 512).decode()}) + "\n")
    return StoredLayer("sha256:" + hashlib.sha256(name.encode()).hexdigest(), folder / f"{name}.tar-split.gz", folder)


def test_the_next_layers_size_pass_waits_for_the_previous_one(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Tar-split parsing is Python work: read ahead, a layer's size pass starts only once the layer before it
    has its size, so the first layer is not slowed by the next ones."""
    events: list[tuple[str, str]] = []
    real = storage_module.sized_entries

    def recorded(layer: StoredLayer, keep: int = storage_module.KEPT_ENTRIES):
        events.append(("start", layer.diff_id))
        time.sleep(0.2)
        found = real(layer, keep)
        events.append(("end", layer.diff_id))
        return found

    monkeypatch.setattr(storage_module, "sized_entries", recorded)
    layers = [_headers_only_layer(tmp_path, f"l{n}", 100 * (n + 1)) for n in range(3)]
    first = Prefetched(layers[0])
    second = Prefetched(layers[1], after=first)
    third = Prefetched(layers[2], after=second)
    try:
        assert [third.size(), second.size(), first.size()] == [300 * 512, 200 * 512, 100 * 512]
        assert b"".join(bytes(chunk) for chunk in first) == b"h" * 512 * 100
    finally:
        for prefetched in (first, second, third):
            prefetched.close()
    assert events == [(kind, layer.diff_id) for layer in layers for kind in ("start", "end")]

    stopped = Prefetched(layers[0])
    waiting = Prefetched(layers[1], after=stopped)
    waiting.close()  # closed while it waits: it reads nothing
    stopped.close()
    with pytest.raises(LayerUnreadable, match="stopped"):
        waiting.size()


def test_a_layer_of_many_files_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """The tar-split is read entry by entry, twice (size, then contents), never held whole: 50,000 files
    (a large Python environment) cost no more memory than a few."""
    files = 50_000
    with gzip.open(tmp_path / "layer.tar-split.gz", "wt") as out:
        for number in range(files):
            header = base64.b64encode(b"h" * 512).decode()
            out.write(json.dumps({"type": 2, "payload": header}) + "\n")
            out.write(json.dumps({"type": 1, "name": f"lib/site-packages/m{number}.py", "size": 7}) + "\n")
    layer = StoredLayer("sha256:" + "0" * 64, tmp_path / "layer.tar-split.gz", tmp_path)
    tracemalloc.start()
    try:
        size, _ = sized_entries(layer, keep=0)
        count = sum(1 for _ in tar_split_entries(layer))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (size, count) == (files * (512 + 7), 2 * files)
    assert peak < 4 * 1024 * 1024, f"{peak} bytes at peak"

    # The size pass keeps the entries up to a bound, past which it drops them and memory stays bounded.
    tracemalloc.start()
    try:
        size, kept = sized_entries(layer, keep=2 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (size, kept) == (files * (512 + 7), None)
    assert peak < 6 * 1024 * 1024, f"{peak} bytes at peak"
    size, kept = sized_entries(layer, keep=64 * 1024 * 1024)
    assert size == files * (512 + 7)
    assert kept == list(tar_split_entries(layer))
