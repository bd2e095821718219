"""imgbuild push and kube against a real registry (Debian's docker-registry with TLS and htpasswd auth) and
real engines: what the engines pull has the set's image ids; reruns send nothing; an interrupted push resumes;
bad credentials, an unknown CA and a damaged part fail clearly with nothing tagged. kube's manifests are
validated offline against Kubernetes' own schemas, and the app is run under the same constraints the
Deployment sets (read-only root filesystem, non-root user, writable /tmp).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import requests

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.engine.connect import Engine
from imgbuild.fleet.kube import KubeOptions, kube_manifests
from imgbuild.fleet.push import PushOptions, push_set
from imgbuild.fleet.registry import Registry, RegistryError, RegistryRef
from imgbuild.foundation.errors import ChecksumMismatch
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import parse_manifest
from tests.support.registry import PASSWORD, USER, LocalRegistry, auth_file, start_registry
from tests.support.restore_sets import web_image

pytestmark = [pytest.mark.engine, pytest.mark.network_local]
KUBERNETES = "1.37.0"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> LocalRegistry:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed (scripts/setup.sh installs it)")
    started = start_registry(tmp_path_factory.mktemp("registry"))
    yield started
    started.stop()


@pytest.fixture
def logged_in(registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> LocalRegistry:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    return registry


@pytest.fixture
def web_set(engine: Engine, bookworm_image: str, unique_tag, cleanup, tmp_path: Path) -> tuple[Path, str, str]:
    """(set folder, app tag, app id): an HTTP server image archived onto several volumes."""
    tag = cleanup.image(unique_tag("push-web"))
    image_id = web_image(engine, bookworm_image, tag)
    result = archive(engine, [tag], ArchiveOptions(out=tmp_path / "set", media=None, media_size=20_000_000,
                                                    catalog=tmp_path / "catalog"))
    assert len(result.volumes) >= 2
    return tmp_path / "set", tag, image_id


def _pull(engine: Engine, registry: LocalRegistry, reference: str) -> str:
    """Pull through the engine's own registry settings; returns the pulled image's id."""
    if engine.kind == "podman":
        certs = registry.folder / "certs.d" / registry.host
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(registry.ca, certs / "ca.crt")
        subprocess.run(["podman", "pull", "--cert-dir", str(certs), "--authfile", str(registry.auth_file),
                        reference], check=True, capture_output=True)
    else:  # Docker Engine reads /etc/docker/certs.d/HOST:PORT/ca.crt on each pull
        certs = Path("/etc/docker/certs.d") / registry.host
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(registry.ca, certs / "ca.crt")
        try:
            repository, tag = reference.rsplit(":", 1)
            engine.api.pull(repository, tag, auth_config={"username": USER, "password": PASSWORD})
        finally:
            shutil.rmtree(certs)
    return str(engine.api.inspect_image(reference)["Id"])


def _run_like_kubernetes(engine: Engine, reference: str, deployment: dict, tmp_path: Path) -> None:
    """Start the pulled image as the Deployment would (user, read-only root, /tmp, command, env) and wait
    for its readiness probe's URL to answer 200."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    security = container["securityContext"]
    port = container["ports"][0]["containerPort"]
    created = engine.client.containers.create(
        reference, command=container.get("command"), user=f"{security['runAsUser']}:{security['runAsGroup']}",
        read_only=security["readOnlyRootFilesystem"], tmpfs={"/tmp": ""}, cap_drop=["ALL"],
        environment={e["name"]: e["value"] for e in container["env"]},
        ports={f"{port}/tcp": ("127.0.0.1", None)}, detach=True)
    try:
        created.start()
        created.reload()
        host_port = int(created.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])
        url = f"http://127.0.0.1:{host_port}{container['readinessProbe']['httpGet']['path']}"
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, created.logs().decode()[-2000:]
            time.sleep(0.5)
    finally:
        created.remove(force=True)


def test_push_pull_kube(engine: Engine, logged_in: LocalRegistry, web_set, cleanup, tmp_path: Path) -> None:
    folder, tag, image_id = web_set
    prefix = f"site{secrets.token_hex(3)}"
    layer_format = "zstd" if engine.kind == "podman" else "gzip"  # Docker Engine before 23 cannot pull zstd
    options = PushOptions(registry=f"{logged_in.host}/{prefix}", layer_format=layer_format, ca_file=logged_in.ca)
    result = push_set([folder], options)
    manifest = parse_manifest((next(folder.iterdir()) / layout.MANIFEST_NAME).read_bytes(), "test")
    assert result.blobs_sent == len(manifest.layers) and result.blobs_present == 0
    if layer_format == "zstd":  # one read of the discs, no recompression: exactly the parts' bytes
        assert result.bytes_read == result.bytes_sent == sum(layer.compressed_size for layer in manifest.layers)
    reference = result.images[0].references[0]

    engine.api.remove_image(tag, force=True)
    cleanup.image(reference)
    assert _pull(engine, logged_in, reference) == image_id

    again = push_set([folder], options)
    assert again.blobs_sent == 0 and again.bytes_read == 0 and again.blobs_present == len(manifest.layers)
    assert again.images[0].digest == result.images[0].digest

    kube = kube_manifests([folder], KubeOptions(registry=f"{logged_in.host}/{prefix}", ca_file=logged_in.ca,
                                                replicas=2, namespace="tts"))
    assert kube.image == reference.rsplit(":", 1)[0] + "@" + result.images[0].digest
    kinds = [document["kind"] for document in kube.documents]
    assert kinds == ["Deployment", "Service"]
    for document in kube.documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    deployment = kube.documents[0]
    assert deployment["spec"]["replicas"] == 2 and deployment["metadata"]["namespace"] == "tts"
    _run_like_kubernetes(engine, reference, deployment, tmp_path)


def test_interrupted_push_sends_only_what_is_missing(engine: Engine, logged_in: LocalRegistry, web_set) -> None:
    folder, _, _ = web_set
    manifest = parse_manifest((next(folder.iterdir()) / layout.MANIFEST_NAME).read_bytes(), "test")
    first = manifest.layers[0]
    options = PushOptions(registry=f"{logged_in.host}/resume{secrets.token_hex(3)}", ca_file=logged_in.ca)

    def interrupt(event) -> None:
        if event.done > first.compressed_size:  # the first layer is in, the second one under way
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push_set([folder], options, progress=interrupt)
    resumed = push_set([folder], options)
    assert resumed.blobs_present >= 1
    assert resumed.blobs_sent == len(manifest.layers) - resumed.blobs_present
    assert resumed.bytes_read < sum(layer.compressed_size for layer in manifest.layers)


def test_push_errors_are_named_and_tag_nothing(engine: Engine, registry: LocalRegistry, web_set, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _, _ = web_set
    target = f"{registry.host}/bad{secrets.token_hex(3)}"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file(tmp_path / "wrong.json", registry.host, USER, "nope")))
    with pytest.raises(RegistryError, match="refused the stored credentials") as wrong:
        push_set([folder], PushOptions(registry=target, ca_file=registry.ca))
    assert wrong.value.status == 401

    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    with pytest.raises(RegistryError, match="TLS verification failed"):
        push_set([folder], PushOptions(registry=target))  # the test CA is not the system's

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    manifest = parse_manifest((next(damaged.iterdir()) / layout.MANIFEST_NAME).read_bytes(), "test")
    part = manifest.layers[-1].parts[-1]
    path = damaged / manifest.volumes[part.volume - 1].folder / part.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=part.path.rsplit("/", 1)[-1]):
        push_set([damaged], PushOptions(registry=target, ca_file=registry.ca))
    client = Registry(RegistryRef.parse(target), ca_file=registry.ca)
    repository, tag = manifest.images[0].tags[0].split("/", 1)[1].rsplit(":", 1)
    assert client.manifest_digest(f"{RegistryRef.parse(target).prefix}/{repository}", tag) is None
