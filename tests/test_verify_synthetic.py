"""Strict verify on a synthetic set (unit tier: no engine). Every file is checked against the manifest and
SHA256SUMS; each damage is named with its path and kind. tests/test_verify.py runs the same checks on a set
that archive wrote from real images."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imgbuild.cli import app
from imgbuild.foundation.errors import ManifestError
from imgbuild.restore.verify import verify_set
from imgbuild.setformat import layout
from tests.support import synthetic_set
from tests.support.restore_sets import bad_paths, flip, rewrite_manifest

SIZES = [3000, 2000, 1000]


def written_set(tmp_path: Path) -> tuple[Path, list[Path]]:
    out = tmp_path / "set"
    manifest = synthetic_set.make_set(out, SIZES)
    synthetic_set.write_metadata(out, manifest)
    return out, [out / v.folder for v in manifest.volumes]


def part_of(volume: Path) -> Path:
    return next((volume / layout.BLOBS_DIR).iterdir())


def test_an_intact_synthetic_set_passes(tmp_path: Path) -> None:
    out, volumes = written_set(tmp_path)
    report = verify_set([out])
    assert report.ok, report.problems
    assert report.volumes_checked == (1, 2, 3)
    assert report.bytes_checked == sum(p.stat().st_size for v in volumes for p in v.rglob("*")
                                       if p.is_file() and p.name != layout.SUMS_NAME)


def test_flipped_missing_extra_and_truncated_files_are_each_named(tmp_path: Path) -> None:
    out, volumes = written_set(tmp_path)
    flipped = part_of(volumes[0])
    flip(flipped, 10)
    missing = volumes[1] / layout.README_NAME
    missing.unlink()
    extra = volumes[1] / layout.BLOBS_DIR / "notes.txt"
    extra.write_text("not part of the set")
    truncated = part_of(volumes[2])
    with open(truncated, "r+b") as handle:
        handle.truncate(100)
    report = verify_set([out])
    assert not report.ok
    assert {p.path: p.kind for p in report.problems} == {
        str(flipped): "sha256", str(missing): "missing", str(extra): "unexpected", str(truncated): "size"}


def test_a_missing_volume_is_named_and_the_others_are_checked(tmp_path: Path) -> None:
    out, volumes = written_set(tmp_path)
    shutil.rmtree(volumes[1])
    report = verify_set([out])
    assert report.volumes_missing == (2,)
    assert report.volumes_checked == (1, 3)
    assert {p.kind for p in report.problems} == {"volume-missing"}


def test_sums_that_disagree_with_the_manifest_are_named(tmp_path: Path) -> None:
    out, volumes = written_set(tmp_path)
    sums = volumes[0] / layout.SUMS_NAME
    lines = sums.read_text().splitlines()
    lines[0] = "0" * 64 + lines[0][64:]
    sums.write_text("\n".join(lines[:-1] + ["f" * 64 + "  forged.bin", lines[-1]]) + "\n")
    report = verify_set([out])
    details = [p.detail for p in report.problems if p.kind == "sums"]
    assert any("the manifest says" in d for d in details) and any("forged.bin" in d for d in details)
    assert bad_paths(report) == {str(sums)}


@pytest.mark.parametrize("path", ["../outside.bin", "/etc/passwd", "blobs/../../x", "blobs\\layer0001.tar.zst.part001"])
def test_hostile_paths_are_refused_before_reading(tmp_path: Path, path: str) -> None:
    out, volumes = written_set(tmp_path)

    def hostile(raw: dict[str, Any]) -> None:
        raw["volumes"][0]["files"][0]["path"] = path

    rewrite_manifest(volumes, hostile, check=False)
    with pytest.raises(ManifestError) as info:
        verify_set([out])
    assert info.value.field == "volumes[0].files[0].path"
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "volumes[0].files[0].path" in result.output


def test_symlinked_part_is_reported_not_followed(tmp_path: Path) -> None:
    out, volumes = written_set(tmp_path)
    part = part_of(volumes[0])
    elsewhere = tmp_path / "elsewhere.bin"
    shutil.copyfile(part, elsewhere)  # same bytes: only the link itself is wrong
    part.unlink()
    part.symlink_to(elsewhere)
    report = verify_set([out])
    assert [(p.kind, p.path) for p in report.problems] == [("symlink", str(part))]
