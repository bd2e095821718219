"""The save stream of Docker Engine 25+ (an OCI image layout beside manifest.json), as its containerd image store
writes it: compressed layer blobs, images named by manifest digest. Engine runs of the same paths are the
`newer_engines` tests of test_load.py, test_run.py and test_archive.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
import zstandard

from imgbuild.archive.save_stream import SavedArchive, read_save_stream
from imgbuild.engine.image_ids import _seconds, config_fingerprint, inspect_fingerprint
from imgbuild.foundation.errors import ArchiveError


def _layer_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(members: dict[str, bytes], data: bytes) -> str:
    digest = _digest(data)
    members[f"blobs/sha256/{digest[7:]}"] = data
    return digest


def oci_save_stream(layers: list[bytes], compress: list[str], nested: bool = False) -> tuple[bytes, dict[str, str]]:
    """A save stream in the member order Docker 26 writes: blobs, then index.json, manifest.json, oci-layout."""
    members: dict[str, bytes] = {}
    packed = []
    for raw, how in zip(layers, compress):
        body = {"gzip": lambda b: gzip.compress(b, mtime=0), "zstd": zstandard.ZstdCompressor().compress,
                "none": lambda b: b}[how](raw)
        packed.append((_blob(members, body), len(body)))
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-11-27T06:59:10.123456789Z",
                         "config": {"Labels": {"a": "b"}, "Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(raw) for raw in layers]}}).encode()
    config_digest = _blob(members, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"digest": d, "size": s} for d, s in packed]}).encode()
    manifest_digest = _blob(members, manifest)
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
           "size": len(manifest)}
    index_digest = ""
    if nested:
        inner = json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()
        index_digest = _blob(members, inner)
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": len(inner)}
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()
    members["manifest.json"] = json.dumps([{"Config": f"blobs/sha256/{config_digest[7:]}", "RepoTags": ["x:1"],
                                            "Layers": [f"blobs/sha256/{d[7:]}" for d, _ in packed]}]).encode()
    members["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), {"config": config_digest, "manifest": manifest_digest, "index": index_digest}


def _read(stream: bytes) -> tuple[SavedArchive, list[tuple[str, int, str]]]:
    seen: list[tuple[str, int, str]] = []

    def on_layer(name: str, size: int, chunks: object) -> str:
        diff_id = _digest(b"".join(chunks))  # type: ignore[arg-type]
        seen.append((name, size, diff_id))
        return diff_id

    return read_save_stream((stream[i:i + 4096] for i in range(0, len(stream), 4096)), on_layer), seen


@pytest.mark.parametrize("nested", [False, True])
def test_compressed_layers_are_unpacked_and_manifest_digests_lead_to_the_config(nested: bool) -> None:
    layers = [_layer_tar("a.bin", bytes(range(256)) * 3000), _layer_tar("b.bin", b"b" * 50_000),
              _layer_tar("c.bin", b"plain")]
    stream, digests = oci_save_stream(layers, ["gzip", "zstd", "none"], nested=nested)
    saved, seen = _read(stream)
    # every layer reaches the consumer uncompressed: the diff ids of the config, in order
    assert [s[2] for s in seen] == [_digest(raw) for raw in layers]
    assert [s[1] for s in seen] == [-1, -1, len(layers[2])]  # compressed: size known only once unpacked
    entry = saved.docker_manifest()[0]
    declared = json.loads(saved.config_bytes(entry["Config"]))["rootfs"]["diff_ids"]
    assert [saved.layer_diff_id(name) for name in entry["Layers"]] == declared
    configs = {digests["config"]}
    engine_id = digests["index"] if nested else digests["manifest"]
    assert saved.config_digest(engine_id, configs) == digests["config"]
    assert saved.config_digest(digests["config"], configs) == digests["config"]  # classic store: id = config
    assert saved.config_digest("sha256:" + "0" * 64, configs) is None


def test_a_damaged_compressed_layer_is_named() -> None:
    stream, _ = oci_save_stream([_layer_tar("a.bin", b"x" * 100_000)], ["gzip"])
    start = stream.index(b"\x1f\x8b")
    damaged = stream[:start + 40] + bytes(b ^ 0xFF for b in stream[start + 40:start + 80]) + stream[start + 80:]
    with pytest.raises(ArchiveError, match="compressed layer blobs/sha256/"):
        _read(damaged)


def test_a_stream_without_oci_layout_maps_nothing() -> None:
    saved = SavedArchive(small_files={"manifest.json": b"[]"})
    assert saved.oci_config_digests() == {}
    assert saved.config_digest("sha256:" + "1" * 64, {"sha256:" + "2" * 64}) is None


def test_inspect_data_matches_its_config_to_the_second() -> None:
    config = {"created": "2026-11-27T06:59:10.123456789Z", "os": "linux", "architecture": "amd64",
              "rootfs": {"diff_ids": ["sha256:" + "a" * 64]},
              "config": {"Labels": {"org.imgbuild.role": "app"}, "Env": ["A=1"], "Cmd": ["python3"]}}
    inspect = {"Created": "2026-11-27T06:59:10.123456789Z", "Os": "linux", "Architecture": "amd64",
               "RootFS": {"Layers": ["sha256:" + "a" * 64]},
               "Config": {"Labels": {"org.imgbuild.role": "app"}, "Env": ["A=1"], "Cmd": ["python3"],
                          "Entrypoint": None, "WorkingDir": ""}}
    assert config_fingerprint(json.dumps(config).encode()) == inspect_fingerprint(inspect)
    inspect["RootFS"]["Layers"] = ["sha256:" + "b" * 64]
    assert config_fingerprint(json.dumps(config).encode()) != inspect_fingerprint(inspect)
    assert _seconds("2026-11-27T07:59:10.5+01:00") == _seconds("2026-11-27T06:59:10Z") == _seconds(1795762750)
    assert _seconds("yesterday") is None
