"""Hostile and unlucky sets on disc (synthetic, unit tier): decompression bombs, odd folders, bad manifests.

Property tests: no byte string makes the manifest parser raise anything but ManifestError or exceed its
time and memory bounds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgbuild.foundation.errors import ArchiveError, ManifestError, Remedy
from imgbuild.restore.verify import VerifyOptions, verify_set
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import dump_manifest, parse_manifest
from tests.support import synthetic_set

GIB = 1 << 30


def rle_bomb(size: int) -> bytes:
    """A zstd frame of RLE blocks that decompresses to ``size`` zero bytes: 4 bytes per 128 KiB."""
    block = 128 * 1024
    # magic, frame header: no content size, no checksum; window descriptor 2**17 (one block)
    out = bytearray(struct.pack("<I", 0xFD2FB528) + bytes([0x00, (17 - 10) << 3]))
    count = size // block
    header = (block << 3) | (1 << 1)  # RLE block of `block` bytes
    out += (struct.pack("<I", header)[:3] + b"\0") * (count - 1)
    out += struct.pack("<I", header | 1)[:3] + b"\0"  # the last block
    return bytes(out)


def set_with_part(out: Path, part: bytes, change: Any = None, layer: bytes | None = None) -> Path:
    """A one-volume synthetic set whose only layer part is ``part``, said to decompress to ``layer``
    (default: 1 MiB of unknown content); ``change`` edits the raw manifest."""
    raw = json.loads(dump_manifest(synthetic_set.make_set(out, [len(part)])))
    volume = raw["volumes"][0]
    (out / volume["folder"] / volume["files"][0]["path"]).write_bytes(part)
    sha = hashlib.sha256(part).hexdigest()
    volume["files"][0]["sha256"] = raw["layers"][0]["parts"][0]["sha256"] = sha
    raw["layers"][0]["compressed_sha256"] = sha
    raw["layers"][0]["size"] = 1 << 20 if layer is None else len(layer)
    if layer is not None:
        raw["layers"][0]["diff_id"] = raw["images"][0]["layers"][0] = "sha256:" + hashlib.sha256(layer).hexdigest()
    if change:
        change(raw)
    synthetic_set.write_metadata(out, parse_manifest(json.dumps(raw).encode(), "test"))
    return out


@pytest.mark.timeout(60)  # without the bound, verify inflates the whole 100 GiB (minutes)
def test_verify_deep_stops_a_decompression_bomb_at_the_layer_size(tmp_path: Path) -> None:
    bomb = rle_bomb(100 * GIB)
    assert len(bomb) < 4 * (1 << 20)
    folder = set_with_part(tmp_path / "set", bomb)
    assert verify_set([folder]).ok  # every file is what the manifest says
    tracemalloc.start()
    report = verify_set([folder], VerifyOptions(deep=True))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [p.kind for p in report.problems] == ["layer"]
    assert "more than the 1048576 bytes the manifest says (stopped there)" in report.problems[0].detail
    assert peak < 100 * (1 << 20)


@pytest.mark.parametrize("window_log", [28, 31])
def test_a_window_above_what_the_writer_uses_is_refused(tmp_path: Path, window_log: int) -> None:
    def wide(raw: dict[str, Any]) -> None:
        raw["compression"].update(long=True, window_log=window_log)

    raw = json.loads(dump_manifest(synthetic_set.make_set(tmp_path, [1000])))
    wide(raw)
    with pytest.raises(ManifestError) as err:
        parse_manifest(json.dumps(raw).encode(), "m.json")
    assert err.value.field == "compression.window_log" and "27" in err.value.reason


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_manifest_is_a_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError, match="too deeply"):
        parse_manifest(data, "m.json")


# -- properties -------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                                                    max_size=4), max_leaves=30)


def _parses_or_refuses(data: bytes) -> None:
    tracemalloc.start()
    try:
        try:
            parse_manifest(data, "m.json")
        except ManifestError as err:
            assert err.source == "m.json" and err.field and err.reason
        assert tracemalloc.get_traced_memory()[1] < 100 * (1 << 20)
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def valid_raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("raw")
    return json.loads(dump_manifest(synthetic_set.make_set(folder, [1000, 2000])))


@PROPERTY
@given(data=st.binary(max_size=300))
def test_property_any_bytes(data: bytes) -> None:
    _parses_or_refuses(data)


@PROPERTY
@given(path=st.lists(st.sampled_from(["volumes", "layers", "images", "compression", "media", 0, 1, "files",
                                      "parts", "size", "sha256", "path", "tags", "config", "number", "volume",
                                      "offset", "window_log", "set_id", "format_version"]), min_size=1, max_size=5),
       value=json_values)
def test_property_a_valid_manifest_with_one_value_replaced(valid_raw: dict[str, Any], path: list[Any],
                                                           value: Any) -> None:
    raw = json.loads(json.dumps(valid_raw))
    node = raw
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    try:
        node[path[-1]] = value
    except (IndexError, TypeError):
        pass
    _parses_or_refuses(json.dumps(raw).encode())


@PROPERTY
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.binary(max_size=20))
def test_property_a_damaged_manifest(valid_raw: dict[str, Any], cut: int, junk: bytes) -> None:
    data = json.dumps(valid_raw).encode()
    cut = cut % (len(data) + 1)
    _parses_or_refuses(data[:cut] + junk + data[cut + len(junk):])


def test_manifest_size_limit_is_named() -> None:
    with pytest.raises(ManifestError, match=f"more than {layout.MAX_MANIFEST_BYTES}"):
        parse_manifest(b" " * (layout.MAX_MANIFEST_BYTES + 1), "m.json")


# -- folders and manifests that need clearer words --------------------------------------------------

def two_volume_set(out: Path, set_id: str = synthetic_set.SET_ID) -> list[Path]:
    manifest = synthetic_set.make_set(out, [3000, 2000], set_id=set_id)
    synthetic_set.write_metadata(out, manifest)
    return [out / v.folder for v in manifest.volumes]


def test_a_symlinked_volume_folder_in_a_set_folder_is_named_as_a_symlink(tmp_path: Path) -> None:
    volumes = two_volume_set(tmp_path / "set")
    moved = tmp_path / "elsewhere"
    volumes[1].rename(moved)
    volumes[1].symlink_to(moved)
    report = verify_set([tmp_path / "set"])
    folder = [p for p in report.problems if p.kind == "folder"]
    assert [p.path for p in folder] == [str(volumes[1])]
    assert f"is a symlink to {moved}" in folder[0].detail and "not followed" in folder[0].detail
    assert verify_set([tmp_path / "set" / volumes[0].name, moved]).ok  # named itself, it is used


def test_a_folder_of_iso_images_says_so(tmp_path: Path) -> None:
    (tmp_path / "SETID-vol001.iso").write_bytes(b"\0" * 2048)
    with pytest.raises(ArchiveError) as err:
        verify_set([tmp_path])
    assert "1 .iso image(s)" in str(err.value) and f"{tmp_path}/*.iso" in (err.value.hint or "")


@pytest.mark.parametrize("content, words", [(b"", "empty file"), (None, f"larger than {layout.MAX_MANIFEST_BYTES}")])
def test_an_empty_or_oversized_manifest_says_why(tmp_path: Path, content: bytes | None, words: str) -> None:
    volumes = two_volume_set(tmp_path / "set")
    for volume in volumes:
        path = volume / layout.MANIFEST_NAME
        if content is None:
            with path.open("r+b") as fh:
                fh.truncate(layout.MAX_MANIFEST_BYTES + 1)
        else:
            path.write_bytes(content)
    with pytest.raises(ArchiveError) as err:
        verify_set([tmp_path / "set"])
    text = str(err.value)
    assert text.startswith("no readable set manifest: ") and text.count(words) == 2, text
    assert str(volumes[0] / layout.MANIFEST_NAME) in text


def test_several_sets_in_one_folder_need_set_and_are_listed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgbuild.cli import app

    first = two_volume_set(tmp_path / "set")
    second = two_volume_set(tmp_path / "set", set_id="fedcba9876543210")
    with pytest.raises(ArchiveError) as err:
        verify_set([tmp_path / "set"])
    assert "volumes of 2 sets here" in str(err.value) and err.value.remedy is Remedy.CHOOSE_SET
    assert "choose one with --set SETID" in CliRunner().invoke(app, ["verify", str(tmp_path / "set")]).output
    assert synthetic_set.SET_ID in str(err.value) and "fedcba9876543210" in str(err.value)
    for set_id, volumes in ((synthetic_set.SET_ID, first), ("fedcba9876543210", second)):
        report = verify_set([tmp_path / "set"], VerifyOptions(set_id=set_id))
        assert report.ok and report.set_id == set_id and report.volumes_checked == (1, 2), report.problems
    with pytest.raises(ArchiveError, match="no volume of set 1111111111111111 here"):
        verify_set([tmp_path / "set"], VerifyOptions(set_id="1111111111111111"))


def test_repair_also_refuses_to_choose_between_sets(tmp_path: Path) -> None:
    from imgbuild.restore.repair import RepairOptions, repair_set

    two_volume_set(tmp_path / "set")
    two_volume_set(tmp_path / "set", set_id="fedcba9876543210")
    with pytest.raises(ArchiveError, match="volumes of 2 sets here"):
        repair_set([tmp_path / "set"], RepairOptions(out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -- repair onto a read-only or full file system (real tmpfs mounts; needs root) ----------------------

@pytest.fixture
def small_mount(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs at tmp_path/mnt, unmounted afterwards; ``remount_ro()`` makes it read-only."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")

    class Mount:
        path = mount

        @staticmethod
        def remount_ro() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

    yield Mount
    subprocess.run(["umount", str(mount)], check=True)


def _damaged_parity_set(tmp_path: Path) -> tuple[Path, Any]:
    from imgbuild.parity.volumes import ParityOptions, add_parity_volumes

    root = tmp_path / "set"
    manifest = synthetic_set.make_set(root, [3 << 20, 3 << 20])
    manifest = add_parity_volumes(lambda k: root / layout.volume_folder(manifest.set_id, k), manifest,
                                  ParityOptions(1))
    synthetic_set.write_metadata(root, manifest)
    shutil.rmtree(root / manifest.volumes[0].folder)  # volume 1 lost: 3 MiB to rebuild
    return root, manifest


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_repair_onto_a_read_only_or_full_file_system_names_it(tmp_path: Path, small_mount: Any, kind: str) -> None:
    from imgbuild.foundation.errors import DiskFull, ImgbuildError
    from imgbuild.restore.repair import RepairOptions, repair_set

    root, manifest = _damaged_parity_set(tmp_path)
    out = small_mount.path / "out"
    if kind == "read-only":
        small_mount.remount_ro()
    with pytest.raises(ImgbuildError) as err:
        repair_set([root], RepairOptions(out=out))
    if kind == "read-only":
        assert str(out) in str(err.value) and "Read-only file system" in str(err.value)
    else:
        assert isinstance(err.value, DiskFull) and str(out) in str(err.value)
        assert not out.exists()  # nothing half-written under any name: the folder repair made is gone


# -- layer content: device nodes, setuid/setgid files, absolute and '..' paths ------------------------

def hostile_layer() -> bytes:
    """A layer tar (GNU format, as engines write) with one entry of each noteworthy kind and a long name."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, data: bytes = b"", **fields: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data))

        add("etc/ok.txt", b"x" * 1000)
        add("dev/mem", type=tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o666)
        add("usr/bin/su", b"y" * 600, mode=0o4755)
        add("usr/bin/wall", b"y", mode=0o2755)
        add("/etc/absolute", b"z")
        add("a/../../escape", b"z")
        add("x/" + "long" * 60, b"q", mode=0o4755)
        add("hard", type=tarfile.LNKTYPE, linkname="../../etc/shadow")
    return buffer.getvalue()


@pytest.mark.parametrize("step", [1, 7, 512, 1 << 20])
def test_tar_scanner_finds_each_kind_in_any_chunking(step: int) -> None:
    from imgbuild.restore.layer_content import TarScanner, summarize

    data = hostile_layer()
    scanner = TarScanner(1)
    for i in range(0, len(data), step):
        scanner.feed(data[i:i + step])
    summary = summarize([scanner])
    assert dict(summary.counts) == {"device": 1, "setuid": 2, "setgid": 1, "path": 3}
    assert [(e.kind, e.name) for e in summary.entries] == [
        ("device", "dev/mem"), ("setuid", "usr/bin/su"), ("setgid", "usr/bin/wall"), ("path", "/etc/absolute"),
        ("path", "a/../../escape"), ("setuid", "x/" + "long" * 60), ("path", "hard")]
    assert "character device 1:1, mode 0666" in summary.entries[0].detail


def test_verify_deep_reports_layer_content_and_refuse_devices_fails_it(tmp_path: Path) -> None:
    import zstandard

    layer = hostile_layer()
    folder = set_with_part(tmp_path / "set", zstandard.ZstdCompressor().compress(layer), layer=layer)
    report = verify_set([folder], VerifyOptions(deep=True))
    assert report.ok and report.layers_checked == 1, report.problems
    assert report.content is not None and report.content.count("device") == 1
    assert "1 device node(s), 3 absolute or '..' path(s), 1 setgid file(s), 2 setuid file(s)" in \
        report.content.describe()
    listed = report.to_json()["content"]["entries"]
    assert {"layer": 1, "kind": "device", "name": "dev/mem", "detail": "character device 1:1, mode 0666"} in listed
    refused = verify_set([folder], VerifyOptions(deep=True, refuse_devices=True))
    assert [p.kind for p in refused.problems] == ["layer-content"] and "dev/mem" in refused.problems[0].detail


def test_verify_cli_prints_the_content_summary_and_json_lists_entries(tmp_path: Path) -> None:
    import zstandard
    from typer.testing import CliRunner

    from imgbuild.cli import app

    layer = hostile_layer()
    folder = set_with_part(tmp_path / "set", zstandard.ZstdCompressor().compress(layer), layer=layer)
    runner = CliRunner()
    text = runner.invoke(app, ["verify", "--deep", "--catalog", str(tmp_path / "catalog"), str(folder)])
    assert text.exit_code == 0, text.output
    assert "layer content: 1 device node(s)" in text.output and "--json lists them" in text.output
    data = runner.invoke(app, ["verify", "--deep", "--json", "--catalog", str(tmp_path / "catalog"), str(folder)])
    assert json.loads(data.stdout)["content"]["counts"] == {"device": 1, "path": 3, "setgid": 1, "setuid": 2}
    refused = runner.invoke(app, ["verify", "--deep", "--refuse-devices", "--catalog", str(tmp_path / "catalog"),
                                  str(folder)])
    assert refused.exit_code == 1 and "dev/mem" in refused.output


@PROPERTY
@given(at=st.integers(min_value=0, max_value=20_000), junk=st.binary(min_size=1, max_size=64),
       step=st.integers(min_value=1, max_value=4096))
def test_property_tar_scanner_never_crashes(at: int, junk: bytes, step: int) -> None:
    from imgbuild.restore.layer_content import TarScanner, summarize

    data = bytearray(hostile_layer())
    at %= len(data)
    data[at:at + len(junk)] = junk
    scanner = TarScanner(1)
    for i in range(0, len(data), step):
        scanner.feed(bytes(data[i:i + step]))
    summary = summarize([scanner])
    assert all(n >= 1 for _, n in summary.counts) and len(summary.entries) <= sum(n for _, n in summary.counts)


def test_inspect_also_takes_set(tmp_path: Path) -> None:
    from imgbuild.restore.inspect import InspectOptions, inspect_target

    two_volume_set(tmp_path / "set")
    two_volume_set(tmp_path / "set", set_id="fedcba9876543210")
    with pytest.raises(ArchiveError, match="volumes of 2 sets here"):
        inspect_target([str(tmp_path / "set")])
    result = inspect_target([str(tmp_path / "set")], InspectOptions(set_id="fedcba9876543210"))
    assert result.set_id == "fedcba9876543210"


def test_verify_refuse_devices_without_deep_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgbuild.cli import app

    folder = tmp_path / "set"
    two_volume_set(folder)
    result = CliRunner().invoke(app, ["verify", "--refuse-devices", str(folder)])
    assert result.exit_code == 2 and "--refuse-devices needs --deep" in result.output
