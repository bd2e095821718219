"""What is inside an image (imgbuild/build/sbom.py): the collector run on a real Python, the CycloneDX document made
by cyclonedx-python-lib, its summary, the manifest's format 3 references, and on real engines: an archived
set holds each image's SBOM on every volume, README.txt summarizes it, `imgbuild inspect` reads it back."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.build.sbom import COLLECT, cyclonedx_json, restricts_use, summarize
from imgbuild.foundation.errors import ManifestError
from imgbuild.restore.inspect import InspectOptions, inspect_target
from imgbuild.restore.verify import verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import dump_manifest, parse_manifest
from tests.test_manifest import _bytes, _h, valid_manifest

IMAGE_ID = "sha256:" + "ab" * 32
LOCK = {"checkpoints": [{"source": "hub", "repo": "fishaudio/fish-speech-1.2-sft", "dest": "checkpoints/fs",
                         "commit": "c0ffee", "files": [{"path": "model.pth", "size": 1000, "sha256": "cd" * 32},
                                                       {"path": "config.json", "size": 10, "git_sha1": "ef" * 20},
                                                       {"path": "README.md", "size": 44, "git_sha1": "ab" * 20}]}]}


def report() -> dict:
    return {"debs": [{"name": "python3", "version": "3.11.2-1+b1", "source": "python3-defaults", "arch": "amd64",
                      "licences": ["PSF-2.0"], "depends": ["python3.11"]},
                     {"name": "python3.11", "version": "3.11.2-6", "source": "python3.11", "arch": "amd64",
                      "licences": [], "depends": []}],
            "python": [{"name": "fastapi", "version": "0.115.0", "licence": "MIT", "classifiers": [],
                        "requires": ["starlette>=0.40"]},
                       {"name": "Starlette", "version": "0.41.0", "licence": "", "classifiers": ["BSD License"],
                        "requires": []}],
            "lock": json.dumps(LOCK), "model_licences": {"checkpoints/fs": ["cc-by-nc-sa-4.0"]}}


def test_cyclonedx_document_is_valid_and_summarizes() -> None:
    text = cyclonedx_json(report(), image_id=IMAGE_ID, tags=["localhost/fs-app:1"], role="app")
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    purls = {c.get("purl") for c in doc["components"]}
    assert "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64" in purls and "pkg:pypi/fastapi@0.115.0" in purls
    lock_prop = [p["value"] for p in doc["metadata"]["properties"] if p["name"] == "imgbuild:checkpoints-lock"]
    assert json.loads(lock_prop[0]) == LOCK
    contents = summarize(text.encode())
    assert contents.image == IMAGE_ID and contents.tags == ("localhost/fs-app:1",) and contents.role == "app"
    assert ("python3", "3.11.2-1+b1", ("PSF-2.0",)) in contents.debs
    assert ("Starlette", "0.41.0", ("BSD License",)) in contents.python
    assert contents.top_level == {"python3", "fastapi"}  # starlette is required by fastapi; pep 503 names
    assert sorted(contents.restricted()) == [("checkpoints/fs/README.md", "cc-by-nc-sa-4.0"),
                                             ("checkpoints/fs/config.json", "cc-by-nc-sa-4.0"),
                                             ("checkpoints/fs/model.pth", "cc-by-nc-sa-4.0")]
    summary = contents.summary_lines()
    assert "fastapi 0.115.0" in summary and "Starlette" not in summary.split("Python (top level):")[1].split("\n")[0]
    assert "LICENCE LIMITS USE: checkpoints/fs/model.pth: cc-by-nc-sa-4.0" in summary


@pytest.mark.parametrize(("licence", "limits"), [
    ("CC-BY-NC-SA-4.0", True), ("cc-by-nc-4.0", True), ("CC BY-ND 4.0", True), ("non-commercial research", True),
    ("MIT", False), ("Apache-2.0", False), ("GPL-2+", False), ("CC0", False), ("BSD License", False)])
def test_restrictive_licences(licence: str, limits: bool) -> None:
    assert restricts_use(licence) is limits


def test_collector_reads_a_real_python_and_app_folder(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "fs").mkdir(parents=True)
    (tmp_path / "checkpoints" / "fs" / "README.md").write_text("---\nlicense: cc-by-nc-sa-4.0\n---\n# model\n")
    (tmp_path / "imgbuild.lock.json").write_text(json.dumps(LOCK))
    out = subprocess.run([sys.executable, "-I", "-c", COLLECT, str(tmp_path)], capture_output=True, check=True,
                         timeout=120).stdout
    found = json.loads(out)
    names = {d["name"].lower(): d for d in found["python"]}
    assert names["pydantic"]["version"] and "MIT" in (names["pydantic"]["licence"] + str(names["pydantic"]["classifiers"]))
    assert "pydantic-core" in {r.lower() for r in names["pydantic"]["requires"]}
    assert found["model_licences"] == {"checkpoints/fs": ["cc-by-nc-sa-4.0"]}
    assert json.loads(found["lock"]) == LOCK


def format3_manifest() -> dict:
    data = valid_manifest()
    data.update(format_version=3, block_size=4 * 1024 * 1024)
    for volume in data["volumes"]:
        for entry in volume["files"]:
            entry["blocks"] = [_h(entry["path"] + "b")] if entry["size"] else []
        volume["files"].append({"path": layout.sbom_path(1), "size": 20, "sha256": _h("sbom"),
                                "blocks": [_h("sbomb")]})
    data["images"][0]["sbom"] = {"path": layout.sbom_path(1), "size": 20, "sha256": _h("sbom")}
    data["media"]["capacity"] = 8192
    return data


def test_format3_manifest_references_each_sbom() -> None:
    manifest = parse_manifest(_bytes(format3_manifest()), "m.json")
    assert manifest.images[0].sbom is not None and manifest.images[0].sbom.path == "sbom/image01.cdx.json"
    assert parse_manifest(dump_manifest(manifest), "m.json") == manifest


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["images"][0]["sbom"].update(path="sbom/image02.cdx.json"), "images[0].sbom.path"),
    (lambda d: d["volumes"][1]["files"].pop(), "images[0].sbom"),
    (lambda d: d["images"][0]["sbom"].update(sha256=_h("other")), "images[0].sbom"),
    (lambda d: d["images"][0].pop("sbom"), "volumes[0].files"),
    (lambda d: d.update(format_version=2), "format_version"),
])
def test_bad_sbom_references_are_refused(change, field: str) -> None:
    data = format3_manifest()
    change(data)
    with pytest.raises(ManifestError) as info:
        parse_manifest(_bytes(data), "vol/imgbuild-set.json")
    assert info.value.field == field, str(info.value)


def test_version_2_dump_has_no_sbom_key() -> None:
    data = copy.deepcopy(format3_manifest())
    data["format_version"] = 2
    data["images"][0].pop("sbom")
    for volume in data["volumes"]:
        volume["files"].pop()
    assert '"sbom"' not in dump_manifest(parse_manifest(_bytes(data), "m.json")).decode()


@pytest.mark.engine
def test_archived_set_carries_and_inspect_reads_the_sbom(engine, bookworm_image: str, tmp_path: Path,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("IMGBUILD_SBOM_CACHE", str(tmp_path / "sboms"))  # made now, not taken from a cache
    out = tmp_path / "set"
    result = archive(engine, [bookworm_image], ArchiveOptions(out=out, media_size=30_000_000,
                                                              catalog=tmp_path / "catalog"))
    assert len(result.volumes) >= 2
    manifest = parse_manifest((result.volumes[0] / layout.MANIFEST_NAME).read_bytes(), "m")
    assert manifest.format_version == 3
    reference = manifest.images[0].sbom
    assert reference is not None
    for volume in result.volumes:  # every volume holds it, as the manifest says, and SHA256SUMS covers it
        data = (volume / reference.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == reference.sha256
        assert f"  {reference.path}\n" in (volume / layout.SUMS_NAME).read_text()
        readme = (volume / layout.README_NAME).read_text()
        assert "What is inside" in readme and "Debian (top level): " in readme
    assert verify_set([out]).ok

    inspected = inspect_target([str(out)])
    contents = inspected.images[0]
    debs = {name: (version, licences) for name, version, licences in contents.debs}
    assert debs["python3"][0].startswith("3.11") and debs["dpkg"][1], debs["dpkg"]
    assert contents.tags == (bookworm_image,) and inspected.set_id == result.set_id
    assert "dpkg" in contents.top_level or "python3" in contents.top_level

    # A damaged copy on volume 1 is skipped for an intact one on another volume.
    (result.volumes[0] / reference.path).write_bytes(b"{}")
    assert inspect_target([str(out)]).images[0].debs == contents.debs

    image = inspect_target([bookworm_image], InspectOptions(engine=engine.kind, host=engine.host))
    assert image.images[0].debs == contents.debs  # the sidecar made by archive
