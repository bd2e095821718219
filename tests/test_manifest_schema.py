"""`imgbuild schema --manifest`: the set manifest's JSON Schema, generated from the models, accepts the
manifests imgbuild writes (format 1, and format 2 with parity volumes; format 3 from a real archive in
tests/test_verify.py) and refuses what the parser refuses by field alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from imgbuild.cli import app
from imgbuild.parity.volumes import ParityOptions, add_parity_volumes
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import dump_manifest
from tests.support.synthetic_set import make_set


def cli_schema() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["schema", "--manifest"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def written(tmp_path: Path, parity: int) -> dict[str, Any]:
    manifest = make_set(tmp_path, [3000, 2000])
    if parity:
        manifest = add_parity_volumes(lambda k: tmp_path / layout.volume_folder(manifest.set_id, k), manifest,
                                      ParityOptions(parity_volumes=parity))
    return json.loads(dump_manifest(manifest))


@pytest.mark.parametrize("parity", [0, 1], ids=["format1", "format2-parity"])
def test_written_manifests_match_the_schema(tmp_path: Path, parity: int) -> None:
    raw = written(tmp_path, parity)
    assert raw["format_version"] == (2 if parity else 1)
    jsonschema.validate(raw, cli_schema())


@pytest.mark.parametrize("change", [
    lambda raw: raw.update(format_version=4),
    lambda raw: raw.update(surprise=1),
    lambda raw: raw["compression"].update(window_log=28),
    lambda raw: raw["volumes"][0]["files"][0].update(sha256="A" * 64),
    lambda raw: raw["images"][0].update(tags=["bad tag"]),
], ids=["version", "extra-key", "window-log", "hex-case", "tag"])
def test_the_schema_refuses_what_the_parser_refuses_by_field(tmp_path: Path, change: Any) -> None:
    raw = written(tmp_path, 0)
    change(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, cli_schema())


def _limits_table() -> dict[str, str]:
    """FORMAT.md's table of limits: first column (without backquotes) -> second column."""
    text = (Path(__file__).resolve().parent.parent / "FORMAT.md").read_text()
    section = text.split("### Limits", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    return {what.strip().replace("`", ""): limit.strip() for what, limit in rows}


def test_format_md_states_the_limits_the_parser_enforces() -> None:
    table, schema = _limits_table(), cli_schema()
    defs, props = schema["$defs"], schema["properties"]
    level = defs["Compression"]["properties"]["level"]
    window = defs["Compression"]["properties"]["window_log"]["anyOf"][0]
    assert table["images"].startswith(f"1..{props['images']['maxItems']} ")
    assert table["images"].startswith(f"1..{layout.MAX_IMAGES} ")
    assert table["layers"].startswith(f"0..{layout.MAX_LAYERS:,} ")
    assert table["volumes"].startswith(f"1..{props['volume_count']['maximum']} ")
    assert table["parts of one layer"].startswith(f"1..{layout.MAX_PARTS_PER_LAYER} ")
    assert table["one part, one parity part"].startswith(f"1..{layout.MAX_PART_SIZE:,} bytes")
    assert f"({defs['ConfigFile']['properties']['size']['maximum']:,} bytes)" in table["image config"]
    assert f"({layout.MAX_SBOM_BYTES:,} bytes)" in table["image SBOM"]
    assert f"({layout.MAX_MANIFEST_BYTES:,} bytes)" in table["the manifest file"]
    assert table["compression.level"] == f"integer {level['minimum']}..{level['maximum']}"
    assert table["compression.window_log"] == f"null or integer {window['minimum']}..{window['maximum']}"
    assert defs["TextFile"]["properties"]["text"]["maxLength"] == 4_194_304
    assert table["images[].tags[]"].startswith(f"at most {defs['Image']['properties']['tags']['items']['maxLength']} ")
    assert f"`{props['name']['pattern']}`" in table["name"]
