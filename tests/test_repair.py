"""Parity repair: a lost volume and damaged blocks are located, rebuilt and verified; load gives the same image.

The engine tests archive a small real image (12 MB of random bytes, so zstd cannot shrink it and the set
spreads over four data volumes); the unit tests use a synthetic set (tests/support/synthetic_set.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ArchiveError
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.restore.load import load_set
from imgbuild.restore.repair import RepairOptions, repair_set
from imgbuild.restore.verify import verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.blockhash import BLOCK_SIZE
from imgbuild.setformat.manifest import SetManifest, parse_manifest
from imgbuild.setformat.volume_files import format_doc
from tests.support.synthetic_set import import_random_image, make_set, write_metadata

MIB = 1024 * 1024
PAYLOAD = 12 * MIB
# 1 MiB of each volume is kept for metadata; 4 data volumes hold the 12 MiB layer.
MEDIA_SIZE = MIB + PAYLOAD // 4 + 256 * 1024


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgbuild", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def random_image(engine: Engine, unique_tag, cleanup) -> tuple[str, str]:
    """(tag, id) of a one-layer image imported from a tar of random bytes."""
    tag = cleanup.image(unique_tag("parity"))
    image_id = import_random_image(engine, tag, PAYLOAD)
    cleanup.image(image_id)
    return tag, image_id


def _archive(engine: Engine, tag: str, out: Path, parity: int, iso: bool = False) -> SetManifest:
    result = archive(engine, [tag], ArchiveOptions(out=out, media=None, media_size=MEDIA_SIZE, parity=parity,
                                                   iso=iso, catalog=out.parent / "catalog"))
    return parse_manifest((result.volumes[0] / layout.MANIFEST_NAME).read_bytes(), "test")


def test_any_one_lost_volume_of_4_plus_1_is_rebuilt_and_loads(engine: Engine, random_image, tmp_path: Path) -> None:
    tag, image_id = random_image
    manifest = _archive(engine, tag, tmp_path / "set", parity=1)
    assert manifest.parity is not None and (manifest.parity.data_volumes, manifest.parity.parity_volumes) == (4, 1)
    for volume in manifest.volumes:
        subprocess.run(["sha256sum", "-c", "--quiet", layout.SUMS_NAME], cwd=tmp_path / "set" / volume.folder,
                       check=True)
    # Every disc says that parity volumes exist and how to repair, in English and Chinese.
    data_readme = (tmp_path / "set" / manifest.volumes[0].folder / layout.README_NAME).read_text()
    parity_readme = (tmp_path / "set" / manifest.volumes[4].folder / layout.README_NAME).read_text()
    assert "Parity volumes" in data_readme and "imgbuild repair" in data_readme and "校验卷" in data_readme
    assert "PARITY volume 1 of 1" in parity_readme and "imgbuild repair" in parity_readme

    for lost in manifest.volumes:
        work = tmp_path / f"without-{lost.number}"
        shutil.copytree(tmp_path / "set", work)
        shutil.rmtree(work / lost.folder)
        before = verify_set([work])
        assert not before.ok and before.recovery is not None and before.recovery.recoverable
        assert before.recovery.missing_volumes == (lost.number,)

        result = repair_set([work], RepairOptions(out=tmp_path / f"repaired-{lost.number}"))
        assert [p.name for p in result.rebuilt] == [lost.folder]
        assert result.check is not None and result.check.ok
        rebuilt = tmp_path / f"repaired-{lost.number}" / lost.folder
        for name in (layout.SUMS_NAME, layout.MANIFEST_NAME, *(f.path for f in lost.files)):
            assert (rebuilt / name).read_bytes() == (tmp_path / "set" / lost.folder / name).read_bytes(), name
        together = [work / v.folder for v in manifest.volumes if v != lost] + [rebuilt]
        assert verify_set(together).ok
        if lost.number == 2:
            kept = together
        else:
            shutil.rmtree(work)

    engine.api.remove_image(tag, force=True)
    loaded = load_set(engine, kept)
    assert [image.id for image in loaded.images] == [image_id]
    assert engine.api.inspect_image(tag)["Id"] == image_id


def test_4_plus_2_with_a_block_damaged_on_two_volumes_is_located_and_repaired(
        engine: Engine, random_image, tmp_path: Path) -> None:
    tag, image_id = random_image
    manifest = _archive(engine, tag, tmp_path / "set", parity=2)
    assert [v.role for v in manifest.volumes] == ["data"] * 4 + ["parity"] * 2
    # The same stretch of the payload on a data volume and a parity volume: only M=2 can rebuild that.
    part = manifest.volumes[1].files[0]
    flip_byte(tmp_path / "set" / manifest.volumes[1].folder / part.path, part.size - 7)
    flip_byte(tmp_path / "set" / manifest.volumes[5].folder / layout.parity_part_path(1), 100)

    check = run_cli("verify", str(tmp_path / "set"), "--json")
    assert check.returncode == 1
    report = json.loads(check.stdout)
    damaged = {(d["volume"], d["path"]): d["bad_blocks"] for d in report["recovery"]["damaged_files"]}
    assert damaged == {(2, part.path): [0], (6, layout.parity_part_path(1)): [0]}
    assert report["recovery"]["recoverable"] is True
    assert report["recovery"]["volumes_to_rebuild"] == [2, 6]

    out = tmp_path / "repaired"
    done = run_cli("repair", str(tmp_path / "set"), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(Path(p).name for p in result["rebuilt"]) == [manifest.volumes[1].folder, manifest.volumes[5].folder]
    # Only the damaged block of each file was decoded (two 4 MiB stretches at most), the rest was copied.
    assert 0 < result["bytes_decoded"] <= 2 * BLOCK_SIZE
    together = [tmp_path / "set" / v.folder for v in manifest.volumes if v.number not in (2, 6)]
    assert verify_set(together + [out / manifest.volumes[1].folder, out / manifest.volumes[5].folder]).ok


# ---------------------------------------------------------------- synthetic sets (no engine)

def _synthetic(tmp_path: Path, parity: int) -> tuple[Path, SetManifest]:
    root = tmp_path / "set"
    manifest = make_set(root, [3 * MIB + 5, 5 * MIB, 2 * MIB, 4 * MIB + 77])
    manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                  ParityOptions(parity))
    write_metadata(root, manifest)
    return root, manifest


def test_too_much_damage_is_refused_and_named(tmp_path: Path) -> None:
    root, manifest = _synthetic(tmp_path, parity=1)
    shutil.rmtree(root / manifest.volumes[0].folder)
    flip_byte(root / manifest.volumes[1].folder / manifest.volumes[1].files[0].path, 10)
    report = verify_set([root])
    assert report.recovery is not None and not report.recovery.recoverable
    assert "volumes 1, 2" in report.recovery.unrecoverable[0]
    with pytest.raises(ArchiveError, match="cannot be repaired"):
        repair_set([root], RepairOptions(out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_damage_in_different_places_needs_only_one_parity_volume(tmp_path: Path) -> None:
    root, manifest = _synthetic(tmp_path, parity=1)
    # Block 1 of volume 2's part and block 0 of volume 4's part do not overlap in the payload streams.
    flip_byte(root / manifest.volumes[1].folder / manifest.volumes[1].files[0].path, BLOCK_SIZE + 3)
    flip_byte(root / manifest.volumes[3].folder / manifest.volumes[3].files[0].path, 5)
    # A differing manifest copy and a missing SHA256SUMS are damage too (the metadata is written again).
    with open(root / manifest.volumes[2].folder / layout.MANIFEST_NAME, "ab") as fh:
        fh.write(b" ")
    (root / manifest.volumes[4].folder / layout.SUMS_NAME).unlink()
    report = verify_set([root])
    assert report.recovery is not None and report.recovery.recoverable
    assert report.recovery.targets == (2, 3, 4, 5)
    result = repair_set([root], RepairOptions(out=tmp_path / "out"))
    assert result.check is not None and result.check.ok
    assert verify_set([root / manifest.volumes[0].folder, *result.rebuilt]).ok


def test_an_intact_set_needs_no_repair(tmp_path: Path) -> None:
    root, _ = _synthetic(tmp_path, parity=2)
    result = repair_set([root], RepairOptions(out=tmp_path / "out"))
    assert result.rebuilt == () and result.recovery.targets == ()
    assert not (tmp_path / "out").exists()


def test_format_doc_on_every_volume_is_rebuilt_on_data_and_parity_volumes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    spec = format_doc()
    manifest = make_set(root, [3 * MIB + 5, 2 * MIB, MIB], format_doc=spec)
    manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                  ParityOptions(2))
    write_metadata(root, manifest)
    assert manifest.format_version == layout.FORMAT_VERSION
    for volume in manifest.volumes:  # data and parity volumes alike carry the same FORMAT.md
        assert (root / volume.folder / layout.FORMAT_DOC_NAME).read_bytes() == spec
        assert layout.FORMAT_DOC_NAME in [f.path for f in volume.files]
    shutil.rmtree(root / manifest.volumes[1].folder)
    parity_doc = root / manifest.volumes[4].folder / layout.FORMAT_DOC_NAME
    flip_byte(parity_doc, 100)
    result = repair_set([root], RepairOptions(out=tmp_path / "out"))
    assert result.recovery.targets == (2, 5)
    assert result.check is not None and result.check.ok
    for folder in result.rebuilt:
        assert (folder / layout.FORMAT_DOC_NAME).read_bytes() == spec
