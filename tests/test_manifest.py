"""The set manifest parser: a valid manifest round-trips byte for byte; hostile ones are refused by field."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from imgbuild.foundation.errors import ArchiveError, ManifestError
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import dump_manifest, parse_manifest

SET_ID = "0123456789abcdef"


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _file(path: str, size: int) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": _h(path)}


def valid_manifest() -> dict[str, Any]:
    """Two volumes, one image with two layers; layer 1 spans both volumes."""
    config_sha = _h("config")
    common = [_file(layout.README_NAME, 100), _file(layout.RESTORE_NAME, 200),
              _file(layout.DOCKER_MANIFEST_PATH, 50),
              {"path": layout.config_path(1), "size": 10, "sha256": config_sha}]
    p1, p2, p3 = (_file(layout.part_path(1, 1), 1000), _file(layout.part_path(1, 2), 400),
                  _file(layout.part_path(2, 1), 30))
    return {
        "format": "imgbuild-set", "format_version": 1, "set_id": SET_ID, "name": "demo",
        "created": "2026-11-22T04:30:00Z", "tool": {"name": "imgbuild", "version": "0.1.0"},
        "engine": {"kind": "podman", "version": "4.3.1"},
        "media": {"profile": "custom", "capacity": 4096},
        "compression": {"algorithm": "zstd", "level": 3, "long": False, "window_log": None},
        "volume_count": 2,
        "volumes": [
            {"number": 1, "folder": layout.volume_folder(SET_ID, 1), "role": "data",
             "files": copy.deepcopy(common) + [p1]},
            {"number": 2, "folder": layout.volume_folder(SET_ID, 2), "role": "data",
             "files": copy.deepcopy(common) + [p2, p3]},
        ],
        "images": [{"number": 1, "id": "sha256:" + config_sha, "tags": ["localhost/demo:1"], "role": "app",
                    "config": {"path": layout.config_path(1), "size": 10, "sha256": config_sha},
                    "layers": ["sha256:" + _h("l1"), "sha256:" + _h("l2")]}],
        "layers": [
            {"number": 1, "diff_id": "sha256:" + _h("l1"), "size": 5000, "compressed_size": 1400,
             "compressed_sha256": _h("c1"),
             "parts": [dict(p1, volume=1, offset=0), dict(p2, volume=2, offset=1000)]},
            {"number": 2, "diff_id": "sha256:" + _h("l2"), "size": 2048, "compressed_size": 30,
             "compressed_sha256": _h("c2"), "parts": [dict(p3, volume=2, offset=0)]},
        ],
        "recipe": {"recipe": {"name": "demo.yaml", "sha256": _h("r"), "text": "apiVersion: imgbuild/v1\n"},
                   "checkpoints_lock": None},
    }


def _bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def test_round_trip_is_byte_identical() -> None:
    manifest = parse_manifest(_bytes(valid_manifest()), "m.json")
    dumped = dump_manifest(manifest)
    again = parse_manifest(dumped, "m.json")
    assert again == manifest
    assert dump_manifest(again) == dumped
    assert manifest.layer("sha256:" + _h("l1")).parts[1].volume == 2
    assert manifest.app_image() is not None and manifest.app_image().tags == ["localhost/demo:1"]


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


HOSTILE = [
    # (field path to change, value, field the error must name)
    ("volumes.0.files.4.path", "blobs/../../etc/passwd", "volumes[0].files[4].path"),
    ("volumes.0.files.0.path", "/etc/passwd", "volumes[0].files[0].path"),
    ("volumes.0.files.0.path", "README.txt/x", "volumes[0].files[0].path"),
    ("volumes.0.files.0.path", "blobs\\layer0001.tar.zst.part001", "volumes[0].files[0].path"),
    ("volumes.0.folder", "../0123456789abcdef-vol001", "volumes[0].folder"),
    ("volumes.0.folder", "/tmp/x", "volumes[0].folder"),
    ("layers.0.parts.0.path", "blobs/layer0001.tar.zst.part001/../../x", "layers[0].parts[0].path"),
    ("images.0.config.path", "../config01.json", "images[0].config.path"),
    ("recipe.recipe.name", "../demo.yaml", "recipe.recipe.name"),
    ("recipe.recipe.name", ".bashrc", "recipe.recipe.name"),
    ("layers.0.size", -1, "layers[0].size"),
    ("layers.0.parts.0.size", -5, "layers[0].parts[0].size"),
    ("layers.0.compressed_size", 99999, "layers[0].compressed_size"),
    ("layers.0.parts.1.offset", 7, "layers[0].parts[1].offset"),
    ("layers.0.parts.1.size", 401, "layers[0].parts[1].size"),
    ("layers.0.parts.1.volume", 3, "layers[0].parts[1].volume"),
    ("volumes.0.files.4.size", 10**6, "volumes[0].files"),
    ("layers.1.diff_id", "sha256:" + _h("l1"), "layers[1].diff_id"),
    ("format_version", 4, "format_version"),
    ("format_version", "1", "format_version"),
    ("format", "something-else", "format"),
    ("volume_count", 3, "volume_count"),
    ("set_id", "../../etc", "set_id"),
    ("images.0.tags", ["localhost/demo:1", "localhost/demo:1"], "images[0].tags"),
    ("images.0.tags", ["bad tag with spaces"], "images[0].tags[0]"),
    ("images.0.id", "sha256:" + _h("other"), "images[0].config.sha256"),
    ("images.0.layers", ["sha256:" + _h("missing")], "images[0].layers[0]"),
    ("layers.0.size", "5000", "layers[0].size"),
    ("layers.0.unexpected", 1, "layers[0].unexpected"),
]


@pytest.mark.parametrize(("path", "value", "field"), HOSTILE)
def test_hostile_manifest_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    data = valid_manifest()
    _set(data, path, value)
    with pytest.raises(ManifestError) as info:
        parse_manifest(_bytes(data), "vol/imgbuild-set.json")
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith("vol/imgbuild-set.json: ")
    assert isinstance(info.value, ArchiveError)


def test_duplicate_file_differing_only_in_case_is_refused() -> None:
    data = valid_manifest()
    data["volumes"][0]["files"].append(_file("README.TXT", 1))
    with pytest.raises(ManifestError) as info:
        parse_manifest(_bytes(data), "m.json")
    assert info.value.field.startswith("volumes[0].files")


def test_unlisted_part_and_duplicate_json_keys_are_refused() -> None:
    data = valid_manifest()
    data["volumes"][1]["files"].append(_file(layout.part_path(3, 1), 5))
    with pytest.raises(ManifestError, match="belongs to no layer"):
        parse_manifest(_bytes(data), "m.json")
    text = _bytes(valid_manifest()).replace(b'"name": "demo"', b'"name": "demo", "name": "evil"')
    with pytest.raises(ManifestError, match="twice"):
        parse_manifest(text, "m.json")


@pytest.mark.parametrize("data", [b"\xff\xfe", b"[]", b"{", b'{"format": "imgbuild-set", "format_version": NaN}'])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data, "m.json")


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(ManifestError, match="more than"):
        parse_manifest(b" " * (layout.MAX_MANIFEST_BYTES + 1), "m.json")


def test_format_doc_is_one_text_on_every_volume_and_needs_format_3() -> None:
    data = valid_manifest()
    assert data["format_version"] == 1
    for volume in data["volumes"]:
        volume["files"].append(_file(layout.FORMAT_DOC_NAME, 300))
    with pytest.raises(ManifestError, match="FORMAT.md needs format version 3"):
        parse_manifest(_bytes(data), "m.json")
    data["format_version"], data["block_size"] = 3, 4096
    for volume in data["volumes"]:
        for entry in volume["files"]:
            entry["blocks"] = ["0" * 64] * -(-entry["size"] // 4096)
    parse_manifest(_bytes(data), "m.json")
    data["volumes"][1]["files"][-1]["sha256"] = _h("another text")
    with pytest.raises(ManifestError, match="differs from volume 1's") as caught:
        parse_manifest(_bytes(data), "m.json")
    assert caught.value.field == "volumes[1].files"
