"""ISO images of volumes: written by xorriso, read back by imgbuild's own reader and by xorriso's extractor."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.discs.iso import IsoVolume, is_iso, make_iso, volume_label
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ArchiveError
from imgbuild.restore.load import load_set
from imgbuild.restore.repair import RepairOptions, repair_set
from imgbuild.restore.verify import verify_set
from imgbuild.setformat import layout
from tests.support.synthetic_set import import_random_image

needs_xorriso = pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso is not installed")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_volume(root: Path) -> dict[str, str]:
    """A small volume folder shaped like a real one; returns relative path -> sha256."""
    (root / "blobs").mkdir(parents=True)
    (root / "images").mkdir()
    files = {
        "README.txt": b"volume 1 of 1\n",
        "restore.sh": b"#!/bin/sh\necho restore\n",
        "images/config01.json": b'{"architecture": "amd64"}',
        "blobs/layer0001.tar.zst.part001": os.urandom(5 * 1024 * 1024 + 123),
        "blobs/layer0002.tar.zst.part001": b"",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "restore.sh").chmod(0o755)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def test_volume_label_is_d_characters_and_names_the_volume_within_16() -> None:
    label = volume_label("0123456789abcdef", 7)
    assert label == "V007_0123456789ABCDEF"
    assert len(label) <= 32 and label[:16].startswith("V007_")
    assert volume_label("a-b.c" * 20, 1).replace("_", "").isalnum()
    assert len(volume_label("x" * 100, 999)) == 32
    with pytest.raises(ValueError):
        volume_label("abc", 0)


@needs_xorriso
def test_iso_files_pass_sha256_read_back_by_reader_and_by_xorriso(tmp_path: Path) -> None:
    expected = make_volume(tmp_path / "vol")
    image = make_iso(tmp_path / "vol", tmp_path / "vol.iso", volume_label("0123456789abcdef", 1))
    assert image.size == (tmp_path / "vol.iso").stat().st_size
    assert not (tmp_path / "vol.iso.partial").exists()
    assert is_iso(image.path)

    volume = IsoVolume(image.path)
    assert volume.label == "V001_0123456789ABCDEF"
    assert {name: e.size for name, e in volume.files.items()} == {
        rel: (tmp_path / "vol" / rel).stat().st_size for rel in expected
    }
    for rel, digest in expected.items():
        with volume.open(rel) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == digest, rel

    # A seek into the middle reads the same bytes as the folder.
    part = "blobs/layer0001.tar.zst.part001"
    with volume.open(part) as fh, open(tmp_path / "vol" / part, "rb") as ref:
        fh.seek(4 * 1024 * 1024 - 5)
        ref.seek(4 * 1024 * 1024 - 5)
        assert fh.read(1000) == ref.read(1000)
        assert fh.read() == ref.read()

    out = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image.path), "-extract", "/", str(out)],
                   check=True, capture_output=True)
    for rel, digest in expected.items():
        assert sha256_file(out / rel) == digest, rel
    assert os.access(out / "restore.sh", os.X_OK)


@needs_xorriso
def test_truncated_iso_is_refused(tmp_path: Path) -> None:
    make_volume(tmp_path / "vol")
    image = make_iso(tmp_path / "vol", tmp_path / "vol.iso", "V001_TEST")
    with open(image.path, "r+b") as fh:
        fh.truncate(image.size // 2)
    with pytest.raises(ArchiveError, match="truncated"):
        IsoVolume(image.path)


def test_not_an_iso_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.iso"
    bogus.write_bytes(os.urandom(100_000))
    with pytest.raises(ArchiveError, match="not a readable ISO"):
        IsoVolume(bogus)


def test_bad_label_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="d-characters"):
        make_iso(tmp_path, tmp_path / "x.iso", "lower case")


# ---------------------------------------------------------------- a real set as ISO images

MIB = 1024 * 1024


@needs_xorriso
def test_archive_iso_images_read_back_verify_load_and_repair(engine: Engine, unique_tag, cleanup,
                                                             tmp_path: Path) -> None:
    tag = cleanup.image(unique_tag("iso"))
    image_id = cleanup.image(import_random_image(engine, tag, 6 * MIB))
    out = tmp_path / "out"
    result = archive(engine, [tag], ArchiveOptions(out=out, media=None, media_size=MIB + 2 * MIB + 512 * 1024,
                                                   parity=1, iso=True, catalog=tmp_path / "catalog"))
    assert len(result.isos) == len(result.volumes) >= 3
    isos = []
    for number, (folder, iso) in enumerate(zip(result.volumes, result.isos), start=1):
        assert iso == folder.with_name(folder.name + ".iso")
        volume = IsoVolume(iso)
        assert volume.label == volume_label(result.set_id, number)
        # Every file in the image passes SHA256SUMS, read by imgbuild's reader ...
        sums = volume.open(layout.SUMS_NAME).read().decode()
        listed = {line[66:]: line[:64] for line in sums.splitlines()}
        assert set(listed) | {layout.SUMS_NAME} == set(volume.files)
        for name, digest in listed.items():
            with volume.open(name) as fh:
                assert hashlib.sha256(fh.read()).hexdigest() == digest, (iso, name)
        # ... and by xorriso's extractor, then coreutils.
        extracted = tmp_path / "x" / folder.name
        subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(extracted)],
                       check=True, capture_output=True)
        subprocess.run(["sha256sum", "-c", "--quiet", layout.SUMS_NAME], cwd=extracted, check=True)
        isos.append(iso)

    assert verify_set(isos).ok
    engine.api.remove_image(tag, force=True)
    loaded = load_set(engine, isos)
    assert [i.id for i in loaded.images] == [image_id]

    # A lost disc: rebuilt from the other images, as a folder and an image.
    lost = isos.pop(1)
    repaired = repair_set(isos, RepairOptions(out=tmp_path / "repaired", iso=True))
    assert [p.name for p in repaired.isos] == [lost.name]
    assert verify_set(isos + list(repaired.isos)).ok
