"""Engine selection: unit tests of the pure parts, and connect() against the real engines."""

from __future__ import annotations

import os
import shutil

import pytest

from imgbuild.bootstrap import find_image, image_labels, split_tag
from imgbuild.engines import connect, engine_kind, socket_candidates
from imgbuild.errors import EngineError, UsageError


def test_engine_kind_from_version_components() -> None:
    assert engine_kind({"Components": [{"Name": "Podman Engine"}, {"Name": "Conmon"}]}) == "podman"
    assert engine_kind({"Components": [{"Name": "Engine"}, {"Name": "containerd"}]}) == "docker"
    assert engine_kind({}) == "docker"


def test_socket_candidates_follow_engine_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert {k for k, _ in socket_candidates("docker")} == {"docker"}
    podman = [url for _, url in socket_candidates("podman")]
    assert podman == ["unix:///run/podman/podman.sock", "unix:///run/user/1000/podman/podman.sock"]
    assert [u for _, u in socket_candidates("auto")][0] == "unix:///var/run/docker.sock"


def test_split_tag_keeps_registry_port() -> None:
    assert split_tag("localhost/a/b:1") == ("localhost/a/b", "1")
    assert split_tag("localhost:5000/a") == ("localhost:5000/a", "latest")
    assert split_tag("a") == ("a", "latest")


def test_unknown_engine_choice_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        with connect("containerd"):
            pass


def test_missing_socket_names_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/imgbuild-test.sock")
    with pytest.raises(EngineError) as err:
        with connect("docker"):
            pass
    assert "unix:///nonexistent/imgbuild-test.sock" in str(err.value)
    assert "/var/run/docker.sock" in str(err.value)


def test_connect_reports_kind_and_version(engine) -> None:
    assert engine.kind in ("podman", "docker")
    assert engine.version
    assert engine.api.ping()
    with connect(engine.kind, engine.host) as again:
        assert again.kind == engine.kind
    other = "docker" if engine.kind == "podman" else "podman"
    with pytest.raises(EngineError, match=f"--engine {other}"):
        with connect(other, engine.host):
            pass


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_private_podman_service_is_started_and_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent-imgbuild-test")
    messages = []
    with connect("podman", progress=messages.append) as found:
        assert found.kind == "podman"
        sock = found.host[len("unix://"):]
        if "imgbuild-podman-" not in sock:
            pytest.skip(f"a podman service is already running at {sock}")
        assert found.api.ping()
    assert any("private podman service" in (m.message or "") for m in messages)
    assert not os.path.exists(sock)


def test_bookworm_image_is_a_labelled_import(engine, bookworm_image) -> None:
    info = find_image(engine, bookworm_image)
    assert info is not None
    labels = image_labels(info)
    assert labels["org.imgbuild.role"] == "rootfs"
    assert len(labels["org.imgbuild.rootfs-key"]) == 64
