"""imgbuild verify on a real set (written by imgbuild's archive from real images): strict both ways.

The set is made once per module on one engine (verify does not talk to engines); each test damages its
own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from imgbuild.cli import app
from imgbuild.engine.connect import connect
from imgbuild.restore.verify import VerifyOptions, verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.volume_files import format_doc
from tests.conftest import in_ci
from tests.support.restore_sets import (
    HOST_VARS,
    bad_paths,
    copy_set,
    flip,
    manifest_of,
    parts_of,
    random_set,
    rewrite_manifest,
)

# The set is written by archive from real images, so every test here needs an engine (the same checks on a
# synthetic set, without one: tests/test_verify_synthetic.py).
pytestmark = pytest.mark.engine

@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A set folder of at least 3 volumes holding two real images (random bytes, shared base layer)."""
    kind = next((k for k in ("podman", "docker") if os.environ.get(HOST_VARS[k])), None)
    if kind is None:
        if in_ci():
            pytest.fail("CI=true but no engine is configured")
        pytest.skip("no engine configured (eval \"$(scripts/engines.sh start)\")")
    out = tmp_path_factory.mktemp("verify") / "set"
    with connect(kind, os.environ[HOST_VARS[kind]]) as engine:
        random_set(engine, "verify", out)
    return out


@pytest.fixture
def set_copy(small_set: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "set"
    return folder, copy_set(small_set, folder)


def test_intact_set_passes_with_evidence_and_sha256sum_agrees(set_copy: tuple[Path, list[Path]]) -> None:
    folder, volumes = set_copy
    report = verify_set([folder], VerifyOptions(deep=True))
    assert report.ok, report.problems
    manifest = manifest_of(volumes[0])
    listed = sum(len(v.files) + 1 for v in manifest.volumes)  # + each volume's manifest copy
    assert report.files_checked == listed
    on_disc = sum(p.stat().st_size for v in volumes for p in v.rglob("*") if p.is_file()
                  and p.name != layout.SUMS_NAME)
    assert report.bytes_checked == on_disc
    assert report.volumes_checked == tuple(range(1, len(volumes) + 1))
    assert report.layers_checked == len(manifest.layers)
    assert report.to_json()["bytes_per_second"] > 0
    for volume in volumes:
        subprocess.run(["sha256sum", "--quiet", "-c", layout.SUMS_NAME], cwd=volume, check=True)

    result = CliRunner().invoke(app, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"{report.files_checked} files, {report.bytes_checked} bytes" in result.output
    as_json = json.loads(CliRunner().invoke(app, ["verify", "--json", str(folder)]).stdout)
    assert as_json["ok"] is True and as_json["files_checked"] == report.files_checked
    # The manifest archive wrote (the current format version) matches `imgbuild schema --manifest`.
    written = json.loads((volumes[0] / layout.MANIFEST_NAME).read_bytes())
    assert written["format_version"] == layout.FORMAT_VERSION
    for volume in volumes:  # every disc describes its own format
        assert (volume / layout.FORMAT_DOC_NAME).read_bytes() == format_doc()
    jsonschema.validate(written, json.loads(CliRunner().invoke(app, ["schema", "--manifest"]).stdout))


def test_a_flipped_byte_in_any_part_is_named(set_copy: tuple[Path, list[Path]]) -> None:
    folder, volumes = set_copy
    parts = parts_of(volumes)
    assert len(parts) >= 3
    for part in parts:
        original = part.read_bytes()
        flip(part, len(original) // 2)
        report = verify_set([folder])
        assert bad_paths(report) == {str(part)}, report.problems
        assert report.problems[0].kind == "sha256"
        part.write_bytes(original)
    assert verify_set([folder]).ok


def test_missing_extra_and_truncated_files_are_each_named(set_copy: tuple[Path, list[Path]]) -> None:
    folder, volumes = set_copy
    missing = volumes[1] / layout.README_NAME
    missing.unlink()
    extra = volumes[0] / "blobs" / "notes.txt"
    extra.write_text("not part of the set")
    truncated = parts_of(volumes)[-1]
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size - 100)
    result = CliRunner().invoke(app, ["verify", str(folder)])
    assert result.exit_code == 1
    for path in (missing, extra, truncated):
        assert str(path) in result.output
    report = verify_set([folder])
    kinds = {p.path: p.kind for p in report.problems}
    assert kinds == {str(missing): "missing", str(extra): "unexpected", str(truncated): "size"}


def test_a_missing_volume_is_named_and_the_others_are_still_checked(set_copy: tuple[Path, list[Path]]) -> None:
    folder, volumes = set_copy
    shutil.rmtree(volumes[1])
    flip(parts_of([volumes[2]])[0], 10)
    report = verify_set([folder])
    assert report.volumes_missing == (2,)
    assert report.volumes_checked == tuple(n for n in range(1, len(volumes) + 1) if n != 2)
    assert {p.kind for p in report.problems} == {"volume-missing", "sha256"}
    result = CliRunner().invoke(app, ["verify", str(folder)])
    assert result.exit_code == 1 and volumes[1].name in result.output

    # Naming only some volume folders checks those: the others are listed as not given, not as failures.
    only = verify_set([volumes[0]])
    assert only.ok and only.volumes_checked == (1,) and 2 in only.volumes_not_given


def test_volumes_in_other_places_are_recognised_by_content(set_copy: tuple[Path, list[Path]],
                                                           tmp_path: Path) -> None:
    folder, volumes = set_copy
    mount = tmp_path / "media" / "DISC2"  # a disc mounted under its label, not under its folder name
    mount.parent.mkdir()
    volumes[1].rename(mount)
    report = verify_set([volumes[0], mount, *volumes[2:]])
    assert report.ok, report.problems
    assert report.volumes_checked == tuple(range(1, len(volumes) + 1))


def test_catalog_copy_is_the_root_of_trust(set_copy: tuple[Path, list[Path]], tmp_path: Path) -> None:
    folder, volumes = set_copy
    catalog = tmp_path / "catalog.json"
    catalog.write_bytes((volumes[0] / layout.MANIFEST_NAME).read_bytes())

    def retag(raw: dict[str, Any]) -> None:
        raw["images"][0]["tags"] = ["localhost/forged:1"]

    rewrite_manifest(volumes, retag)
    assert verify_set([folder]).ok  # consistent forgery: only the catalog can tell
    report = verify_set([folder], VerifyOptions(catalog=catalog))
    assert {p.kind for p in report.problems} == {"manifest-copy", "sums"}
    assert {str(v / layout.MANIFEST_NAME) for v in volumes} <= bad_paths(report)


def test_deep_check_finds_a_layer_the_manifest_lies_about(set_copy: tuple[Path, list[Path]]) -> None:
    folder, volumes = set_copy

    def lie(raw: dict[str, Any]) -> None:
        raw["layers"][0]["size"] += 1

    rewrite_manifest(volumes, lie)
    assert verify_set([folder]).ok  # every file matches what the manifest says...
    report = verify_set([folder], VerifyOptions(deep=True))  # ...but layer 1 does not decompress to it
    assert [p.kind for p in report.problems] == ["layer"]
    assert "layer0001" in report.problems[0].path and "decompresses to" in report.problems[0].detail
