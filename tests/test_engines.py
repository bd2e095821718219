"""Engine selection: unit tests of the pure parts, and connect() against the real engines."""

from __future__ import annotations

import os
import shutil
import types

import pytest

from imgbuild.engine.connect import (Engine, Identity, _closing, connect, engine_kind, identity_from_ping,
                                     socket_candidates, untested_version_warning)
from imgbuild.engine.images import find_image, image_labels, split_tag
from imgbuild.foundation.errors import EngineError, UsageError


def test_engine_kind_from_version_components() -> None:
    assert engine_kind({"Components": [{"Name": "Podman Engine"}, {"Name": "Conmon"}]}) == "podman"
    assert engine_kind({"Components": [{"Name": "Engine"}, {"Name": "containerd"}]}) == "docker"
    assert engine_kind({}) == "docker"


def test_identity_from_the_ping_headers() -> None:
    podman = {"Api-Version": "1.41", "Libpod-Api-Version": "4.3.1", "Server": "Libpod/4.3.1 (linux)"}
    assert identity_from_ping(podman) == Identity("podman", "4.3.1", "1.41")
    docker = {"Api-Version": "1.52", "Server": "Docker/29.0.1 (linux)", "Ostype": "linux"}
    assert identity_from_ping(docker) == Identity("docker", "29.0.1", "1.52")
    # Too little said (a proxy in between, another server): GET /version decides.
    assert identity_from_ping({"Api-Version": "1.41"}) is None
    assert identity_from_ping({"Api-Version": "1.41", "Server": "nginx/1.22"}) is None
    assert identity_from_ping({"Server": "Docker/20.10.24+dfsg1 (linux)"}) is None


@pytest.mark.newer_engines
def test_the_ping_names_the_engine_as_its_version_does(engine) -> None:
    info = engine.api.version()
    assert (engine.kind, engine.version) == (engine_kind(info), info["Version"])
    assert engine.api.api_version == info["ApiVersion"]


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


def _fake_engine(kind: str, version: str) -> Engine:
    client = types.SimpleNamespace(close=lambda: None)  # only its version matters here
    return Engine(client=client, api=None, kind=kind, host="unix:///nowhere.sock", version=version)  # type: ignore[arg-type]


def test_untested_versions_are_warned_about_once_per_process() -> None:
    for kind, version in [("docker", "20.10.24+dfsg1"), ("docker", "26.1.5+dfsg1"), ("podman", "4.3.1"),
                          ("podman", "5.4.2")]:
        assert untested_version_warning(_fake_engine(kind, version)) is None
    newer = _fake_engine("docker", "29.0.1")
    warning = untested_version_warning(newer)
    assert warning is not None and "Docker Engine 29.0.1" in warning and "20.10, 26.1" in warning
    assert untested_version_warning(_fake_engine("podman", "5.6.0-dev")) is not None
    seen: list = []
    for _ in range(2):
        with _closing(newer, seen.append):
            pass
    assert [e.message for e in seen] == [warning] and seen[0].warning


def test_the_cli_shows_warnings_even_without_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from imgbuild.cli import common
    from imgbuild.foundation.progress import ProgressEvent

    out = io.StringIO()
    monkeypatch.setattr(common, "stderr", Console(file=out, force_terminal=False))
    with common.progress_for(json_mode=True, verbose=False) as progress:
        progress(ProgressEvent(task="build", message="a build log line"))
        progress(ProgressEvent(task="engine", message="warning: untested", warning=True))
    assert out.getvalue() == "warning: untested\n"


@pytest.mark.newer_engines
def test_the_engines_tested_with_are_not_warned_about(engine) -> None:
    assert untested_version_warning(engine) is None, engine.version


@pytest.mark.newer_engines
def test_the_image_store_is_recognised(engine) -> None:
    from imgbuild.engine.image_ids import describe, image_store

    expected = "podman" if engine.kind == "podman" else "classic"
    if engine.host == os.environ.get("IMGBUILD_TEST_DOCKER26C_HOST"):
        expected = "containerd"
    assert image_store(engine) == expected
    assert engine.version in describe(engine) and ("containerd" in describe(engine)) == (expected == "containerd")


def test_connect_reports_kind_and_version(engine) -> None:
    assert engine.kind in ("podman", "docker")
    assert engine.version
    assert engine.api.ping()
    with connect(engine.kind, engine.host) as again:
        assert again.kind == engine.kind
    other = "docker" if engine.kind == "podman" else "podman"
    with pytest.raises(EngineError, match=f"but {other} was asked for"):
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
