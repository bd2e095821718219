"""load-and-run against real engines: a real HTTP server image, archived in >= 3 volumes, verified, removed,
loaded and started, health checked; Ctrl-C stops and removes it; the other engine runs the same set."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import LoadError, OptionError, UsageError
from imgbuild.recipe.model import HealthCheck, Serve
from imgbuild.restore.load import LoadOptions, load_set
from imgbuild.restore.run import (
    RUN_LABEL,
    RunOptions,
    load_and_run,
    parse_env,
    pick_image,
    serve_spec,
    start_service,
    stop_and_remove,
)
from imgbuild.restore.verify import verify_set
from imgbuild.setformat.manifest import RecipeInfo, SetManifest, TextFile
from tests.support.restore_sets import (
    SERVE,
    make_set,
    manifest_of,
    other_engine,
    remove_images,
    set_image_id,
    unique_prefix,
    web_image,
)

MEDIA_SIZE = 25_000_000  # the bookworm layer compresses to about 66 MB: at least 3 volumes


@pytest.fixture(scope="module")
def web_set(engine: Engine, bookworm_image: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, SetManifest]]:
    """A set holding one HTTP server image (bookworm + python3 + /srv/health), built on this engine."""
    tag = f"{unique_prefix('web')}:1"
    web_image(engine, bookworm_image, tag)
    out = tmp_path_factory.mktemp(f"run-{engine.kind}") / "set"
    try:
        result = make_set(engine, [tag], out, MEDIA_SIZE)
    finally:
        remove_images(engine, [tag])
    assert len(result.volumes) >= 3
    manifest = manifest_of(result.volumes[0])
    yield out, manifest
    remove_images(engine, [ref for ref in (set_image_id(engine, manifest.images[0]), manifest.images[0].id) if ref])


def _containers(engine: Engine, image_id: str) -> list[dict]:
    return engine.api.containers(all=True, filters={"label": f"{RUN_LABEL}={image_id}"})


@pytest.mark.newer_engines
def test_round_trip_verify_remove_load_and_run_healthy(engine: Engine, web_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = web_set
    assert verify_set([folder]).ok
    image = manifest.images[0]
    assert set_image_id(engine, image) is None
    result = load_and_run(engine, [folder], LoadOptions(),
                          RunOptions(port=0, detach=True, cpus=1.0, memory="256m", health_timeout=60,
                                     env=parse_env(["IMGBUILD_TEST_NOTE=a=b", "EMPTY="])))
    try:
        assert result.load is not None and [i.status for i in result.load.images] == ["loaded"]
        assert result.url.startswith("http://127.0.0.1:") and result.health_url.endswith("/health")
        assert requests.get(result.health_url, timeout=5).status_code == 200
        host_config = engine.api.inspect_container(result.container_id)["HostConfig"]
        assert host_config["NanoCpus"] == 1_000_000_000
        assert host_config["Memory"] == 256 * 1024 * 1024
        env = engine.api.inspect_container(result.container_id)["Config"]["Env"]
        assert "IMGBUILD_TEST_NOTE=a=b" in env and "EMPTY=" in env
        bindings = engine.api.inspect_container(result.container_id)["NetworkSettings"]["Ports"]["8080/tcp"]
        assert bindings[0]["HostIp"] in ("127.0.0.1", "")  # Podman reports the address it was given elsewhere
    finally:
        stop_and_remove(engine, result.container_id)
    assert not _containers(engine, image.id)


def test_env_values_are_name_equals_value() -> None:
    assert parse_env(["A=1", "B_2=x=y", "C="]) == (("A", "1"), ("B_2", "x=y"), ("C", ""))
    for bad in ("NOVALUE", "=1", "1A=2", "A-B=1"):
        with pytest.raises(OptionError, match=re.escape(repr(bad))) as caught:
            parse_env(["OK=1", bad])
        assert caught.value.option == "env"


def test_cli_names_the_env_flag_of_a_bad_value() -> None:
    done = subprocess.run([sys.executable, "-m", "imgbuild", "load-and-run", "/nonexistent", "--env", "oops"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--env 'oops' is not NAME=VALUE" in done.stderr


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_ctrl_c_stops_and_removes_the_container(engine: Engine, web_set: tuple[Path, SetManifest],
                                                json_mode: bool) -> None:
    """Text mode prints the URL on stdout when healthy; --json prints exactly one JSON document on stdout
    (the final result, URL included) and the ready line on stderr."""
    folder, manifest = web_set
    image = manifest.images[0]
    command = [sys.executable, "-m", "imgbuild", "load-and-run", str(folder), "--host", engine.host, "--port", "0"]
    process = subprocess.Popen(command + (["--json"] if json_mode else []), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    ready_stream = process.stderr if json_mode else process.stdout
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "healthy" not in line and time.monotonic() < deadline:
            line = ready_stream.readline() if ready_stream else ""
            if not line and process.poll() is not None:
                break
        assert "healthy" in line, process.stderr.read() if process.stderr and not json_mode else line
        url = line.rsplit(" ", 1)[-1].strip()
        assert requests.get(url + "health", timeout=5).status_code == 200
        assert len(_containers(engine, image.id)) == 1
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    if json_mode:
        document = json.loads(out)  # one document: json.loads refuses anything after it
        assert document["stopped"] is True and document["url"] == url
    else:
        assert "stopped and removed" in out
    assert not _containers(engine, image.id)


@pytest.mark.newer_engines
def test_the_other_engine_runs_the_same_set(engine: Engine, web_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = web_set
    image = manifest.images[0]
    with other_engine(engine.kind) as other:
        if other is None:
            pytest.skip("the other engine is not configured")
        remove_images(other, [image.id])
        try:
            result = load_and_run(other, [folder], LoadOptions(), RunOptions(port=0, detach=True))
            try:
                assert requests.get(result.health_url, timeout=5).status_code == 200
            finally:
                stop_and_remove(other, result.container_id)
        finally:
            remove_images(other, [ref for ref in (set_image_id(other, image), image.id) if ref])


def test_an_unhealthy_service_is_reported_with_its_log_and_removed(engine: Engine,
                                                                   web_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = web_set
    image = manifest.images[0]
    load_set(engine, [folder])
    wrong = Serve.model_validate(dict(SERVE, health=dict(SERVE["health"], path="/missing")))
    with pytest.raises(LoadError) as info:
        start_service(engine, image, wrong, RunOptions(port=0, health_timeout=3))
    assert "404" in str(info.value) and "last lines of the service log" in str(info.value)
    assert not _containers(engine, image.id)

    with socket.socket() as taken:  # a port already in use: the start fails and no container is left behind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LoadError, match="cannot start"):
            start_service(engine, image, Serve.model_validate(SERVE),
                          RunOptions(port=taken.getsockname()[1], health_timeout=30))
    assert not _containers(engine, image.id)

    exits = Serve.model_validate(dict(SERVE, command=["python3", "-c", "import sys; print('boom'); sys.exit(3)"]))
    with pytest.raises(LoadError, match="exited with code 3") as info:
        start_service(engine, image, exits, RunOptions(port=0, health_timeout=30))
    assert "boom" in str(info.value)
    assert not _containers(engine, image.id)


# ---------------------------------------------------------------- choosing the image and its serve section

def _with_recipe(manifest: SetManifest, text: str) -> SetManifest:
    recipe = TextFile(name="demo.yaml", sha256="0" * 64, text=text)
    return manifest.model_copy(update={"recipe": RecipeInfo(recipe=recipe)})


RECIPE = """
apiVersion: imgbuild/v1
kind: Recipe
metadata: {name: demo}
base: {tag: localhost/demo-base:1, bootstrap: {}}
app:
  tag: localhost/demo-app:1
  serve: {port: 9999, health: {path: /ready, timeout: 5}}
"""


def test_serve_section_comes_from_the_recipe_in_the_manifest(engine: Engine,
                                                             web_set: tuple[Path, SetManifest]) -> None:
    folder, manifest = web_set
    image = manifest.images[0]
    load_set(engine, [folder])
    from_recipe = serve_spec(engine, _with_recipe(manifest, RECIPE), image)
    assert from_recipe.port == 9999 and from_recipe.health == HealthCheck(path="/ready", timeout=5)
    assert pick_image(manifest, None) == image
    assert pick_image(manifest, image.tags[0].removeprefix("localhost/")) == image
    with pytest.raises(UsageError):
        pick_image(manifest, "no-such-image")
    # A recipe that needs this machine's environment (${VAR}) cannot be read here: the label is used.
    assert serve_spec(engine, _with_recipe(manifest, "metadata: ${NAME}"), image).port == SERVE["port"]
