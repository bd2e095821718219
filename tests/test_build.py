"""Building recipes: build contexts (unit) and real builds of the demo on Podman and Docker Engine."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from imgbuild.build.bootstrap import ROOTFS_KEY_LABEL, import_rootfs
from imgbuild.build.build import BuildOptions, build_recipe
from imgbuild.build.context import (
    APP_DIR,
    CA_DIR,
    assemble,
    base_build_args,
    extract,
    hash_tree,
    resolve_mirrors,
    safe_member,
    with_registry,
)
from imgbuild.engine.images import find_image, image_labels
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.errors import BuildFailed
from imgbuild.recipe.loader import load_recipe

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "tests" / "recipes" / "http-app.yaml"  # the first demo: a tiny HTTP server as the app


def demo_copy(tmp_path: Path, unique_tag, name: str = "demo") -> Path:
    """The demo recipe with unique tags, its files referenced by absolute path."""
    text = DEMO.read_text()
    text = text.replace("localhost/imgbuild-demo-base:1", unique_tag(f"{name}-base"))
    text = text.replace("localhost/imgbuild-demo-app:1", unique_tag(f"{name}-app"))
    text = text.replace("src: http-app/", f"src: {REPO}/tests/recipes/http-app/")
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


# --- unit: build context -------------------------------------------------------------------------------


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_strips_leading_components(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "src.zip", {"proj-1.2/a.py": b"a", "proj-1.2/pkg/b.py": b"b", "proj-1.2/": b""})
    assert extract(archive, tmp_path / "out", strip=1) == 2
    assert (tmp_path / "out" / "a.py").read_bytes() == b"a"
    assert (tmp_path / "out" / "pkg" / "b.py").read_bytes() == b"b"


def test_extract_tar_and_refuse_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "v.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("voices/x.wav")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"wav"))
    assert extract(archive, tmp_path / "o", strip=0) == 1 and (tmp_path / "o/voices/x.wav").exists()
    with pytest.raises(ValueError, match="unsafe"):
        safe_member("../../etc/passwd", 0)
    with pytest.raises(ValueError, match="unsafe"):
        safe_member("/etc/passwd", 0)
    bad = make_zip(tmp_path / "bad.zip", {"../evil": b"x"})
    with pytest.raises(ValueError):
        extract(bad, tmp_path / "o2", strip=0)
    assert not (tmp_path / "evil").exists()


def test_with_registry_only_prefixes_bare_references() -> None:
    assert with_registry("debian:bookworm", "127.0.0.1:5000/mirror") == "127.0.0.1:5000/mirror/debian:bookworm"
    assert with_registry("localhost/x:1", "127.0.0.1:5000") == "localhost/x:1"
    assert with_registry("127.0.0.1:5000/x", "r.example") == "127.0.0.1:5000/x"
    assert with_registry("debian", None) == "debian"


def test_context_layout_args_and_hash(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "w-1-py3-none-any.whl").write_bytes(b"wheel")
    make_zip(tmp_path / "src.zip", {"top/main.py": b"print(1)"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {name: t}
mirrors:
  apt: http://127.0.0.1:9/debian
  pip: {index_url: "http://127.0.0.1:8/simple", find_links: [wheels, "http://127.0.0.1:7/links"]}
  ca_certificates: [ca.pem]
base: {tag: "localhost/t:1", bootstrap: {}, packages: [curl, git], pip: ["numpy<3"]}
app:
  tag: localhost/t-app:1
  context: [{src: src.zip, dest: code, extract: true, strip_components: 1}]
""")
    loaded = load_recipe(recipe, env={})
    mirrors = resolve_mirrors(loaded, host_defaults=False)
    args = base_build_args(loaded, mirrors, "localhost/rootfs:1")
    assert args["APT_MIRROR"] == "http://127.0.0.1:9/debian" and args["APT_PACKAGES"] == "curl git"
    assert args["PIP_FIND_LINKS"] == "http://127.0.0.1:7/links /opt/imgbuild/wheels"
    assert args["PIP_PACKAGES"] == "numpy<3" and args["BASE_IMAGE"] == "localhost/rootfs:1"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    assemble(loaded, "app", mirrors, ctx)
    assert (ctx / "Containerfile").read_text().startswith("# App layer")
    assert [p.name for p in (ctx / CA_DIR).iterdir()] == ["00-ca.crt"]
    assert (ctx / "imgbuild/wheels/w-1-py3-none-any.whl").read_bytes() == b"wheel"
    assert (ctx / APP_DIR / "code" / "main.py").read_bytes() == b"print(1)"
    before = hash_tree(ctx)
    (ctx / APP_DIR / "code" / "main.py").write_bytes(b"print(2)")
    assert hash_tree(ctx) != before


# --- integration: real engines --------------------------------------------------------------------------


def get_json(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def leftover_stages(engine, image: str) -> list[str]:
    """Build-stage images (org.imgbuild.stage) that start with all of this image's layers but its last
    one (the copied venv), i.e. that came from the build of this image."""
    system_layers = find_image(engine, image)["RootFS"]["Layers"][:-1]
    found = []
    for listed in engine.api.images(all=True, filters={"label": "org.imgbuild.stage"}):
        info = find_image(engine, listed["Id"])  # None if another client removed it meanwhile
        if info and info["RootFS"]["Layers"][:len(system_layers)] == system_layers:
            found.append(listed["Id"])
    return found


@pytest.mark.slow
def test_demo_builds_labels_runs_and_caches(engine, cleanup, unique_tag, tmp_path: Path) -> None:
    loaded = load_recipe(demo_copy(tmp_path, unique_tag))
    messages: list[str] = []
    first = build_recipe(loaded, engine, BuildOptions(), lambda e: messages.append(e.message or ""))
    for image in first.images:
        cleanup.image(image.tag)
    assert [i.role for i in first.images] == ["rootfs", "base", "app"]
    assert not first.image("base").cached and not first.image("app").cached
    # Podman prefixes a multi-stage build's steps with the stage ("[1/3] STEP 1/13: ...").
    assert any(re.match(r"(\[\d+/\d+\] )?step ", m.lower()) for m in messages), "build log lines were not streamed"
    # python-base's venv stage (it holds the find-links wheels) was removed after the build.
    assert leftover_stages(engine, first.image("base").tag) == []

    base, app = first.image("base"), first.image("app")
    for image in (base, app):
        labels = image_labels(find_image(engine, image.tag))
        assert labels["org.imgbuild.recipe"] == "demo"
        assert labels["org.imgbuild.role"] == image.role
        assert labels["org.imgbuild.input-hash"] == image.input_hash
        assert labels["org.imgbuild.version"] and labels["org.imgbuild.built"].startswith("20")
    serve = json.loads(image_labels(find_image(engine, app.tag))["org.imgbuild.serve"])
    assert serve["port"] == 8080 and serve["health"]["path"] == "/health"

    container = cleanup.container(engine.api.create_container(
        app.tag, ports=[8080], host_config=engine.api.create_host_config(port_bindings={8080: ("127.0.0.1", None)}),
    )["Id"])
    engine.api.start(container)
    port = engine.api.port(container, 8080)[0]["HostPort"]
    health = get_json(f"http://127.0.0.1:{port}/health", time.monotonic() + 30)
    assert health["status"] == "ok" and health["python"].startswith("3.11")

    second = build_recipe(loaded, engine, BuildOptions())
    assert all(i.cached for i in second.images)
    assert [i.id for i in second.images] == [i.id for i in first.images]

    # A changed app file rebuilds the app layer only; the base is reused.
    changed = tmp_path / "server.py"
    server = REPO / "tests/recipes/http-app/server.py"
    changed.write_text(server.read_text() + "\n# changed\n")
    recipe_text = (tmp_path / "demo.yaml").read_text().replace(str(server), str(changed))
    (tmp_path / "demo.yaml").write_text(recipe_text)
    third = build_recipe(load_recipe(tmp_path / "demo.yaml"), engine, BuildOptions())
    assert third.image("base").cached and third.image("base").id == base.id
    assert not third.image("app").cached and third.image("app").id != app.id


@pytest.mark.newer_engines
def test_failing_run_step_reports_step_and_log_tail(engine, cleanup, unique_tag, bookworm_image,
                                                     tmp_path: Path) -> None:
    (tmp_path / "fail.Containerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo preparing-imgbuild-test\n"
        "RUN echo imgbuild-test-marker && exit 7\n")
    (tmp_path / "r.yaml").write_text(f"""\
apiVersion: imgbuild/v1
kind: Recipe
metadata: {{name: failing}}
base: {{tag: "{unique_tag('failing')}", from: "{bookworm_image}", containerfile: fail.Containerfile}}
""")
    cleanup.image(unique_tag("failing"))
    with pytest.raises(BuildFailed) as err:
        build_recipe(load_recipe(tmp_path / "r.yaml"), engine, BuildOptions(host_defaults=False))
    failure = err.value
    assert failure.step is not None and "exit 7" in failure.step
    assert any("imgbuild-test-marker" in line for line in failure.log_tail)
    assert "7" in failure.reason
    assert find_image(engine, unique_tag("failing")) is None


# --- unit: this host's defaults ---------------------------------------------------------------------------


def test_deb822_sources_skip_security_and_disabled(tmp_path: Path) -> None:
    from imgbuild.foundation.hostconfig import apt_archive_url, parse_deb822

    text = """\
Types: deb
URIs: http://127.0.0.1:9/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://127.0.0.1:9/src
Suites: bookworm

Types: deb
Enabled: no
URIs: http://127.0.0.1:9/off
Suites: bookworm

Types: deb
# a comment
URIs: http://127.0.0.1:9/debian
Suites: bookworm bookworm-updates
"""
    assert parse_deb822(text) == ["http://127.0.0.1:9/debian", "http://127.0.0.1:9/debian-security"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.sources").write_text(text)
    assert apt_archive_url(tmp_path / "d", tmp_path / "absent.list") == "http://127.0.0.1:9/debian"


def test_one_line_sources_list() -> None:
    from imgbuild.foundation.hostconfig import parse_sources_list

    text = ("# deb http://127.0.0.1:1/commented bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://127.0.0.1:2/debian bookworm main\n"
            "deb-src http://127.0.0.1:3/debian bookworm main\n"
            "deb http://127.0.0.1:4/debian-security bookworm-security main\n")
    assert parse_sources_list(text) == ["http://127.0.0.1:2/debian", "http://127.0.0.1:4/debian-security"]


def test_pip_config_list_parsing_env_first() -> None:
    from imgbuild.foundation.hostconfig import parse_pip_config_list

    text = (":env:.find-links='/opt/w'\n"
            "global.cert='/etc/ca.pem'\n"
            "global.extra-index-url='file:///opt/pypi/simple http://127.0.0.1:5/simple'\n"
            "global.find-links='/ignored'\n"
            "install.trusted-host='127.0.0.1'\n"
            "global.index-url='http://127.0.0.1:6/simple'\n")
    cfg = parse_pip_config_list(text)
    assert cfg.find_links == ["/opt/w"] and cfg.cert == "/etc/ca.pem"
    assert cfg.extra_index_urls == ["file:///opt/pypi/simple", "http://127.0.0.1:5/simple"]
    assert cfg.trusted_hosts == ["127.0.0.1"] and cfg.index_url == "http://127.0.0.1:6/simple"


def test_host_defaults_fill_only_unset_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgbuild.foundation import hostconfig

    monkeypatch.setattr(hostconfig, "apt_archive_url", lambda: "http://127.0.0.1:9/debian")
    monkeypatch.setattr(hostconfig, "pip_config", lambda: hostconfig.PipHostConfig(
        index_url="http://127.0.0.1:8/simple", extra_index_urls=["file:///opt/local", "http://127.0.0.1:7/x"],
        find_links=["/opt/wheels"]))
    monkeypatch.setattr(hostconfig, "ca_bundle", lambda: str(tmp_path / "host-ca.pem"))
    (tmp_path / "r.yaml").write_text("apiVersion: imgbuild/v1\nkind: Recipe\nmetadata: {name: t}\n"
                                     "mirrors: {apt: 'http://127.0.0.1:1/mine'}\n"
                                     "base: {tag: 'localhost/t:1', bootstrap: {}}\n")
    mirrors = resolve_mirrors(load_recipe(tmp_path / "r.yaml", env={}))
    assert mirrors.apt == "http://127.0.0.1:1/mine"
    assert mirrors.pip_index_url == "http://127.0.0.1:8/simple"
    assert mirrors.pip_extra_index_urls == ("http://127.0.0.1:7/x",)  # a host's file:// index is useless inside
    assert mirrors.find_links_dirs == ()  # host wheels are not copied into every build unasked
    assert mirrors.ca_files == (tmp_path / "host-ca.pem",)
    assert resolve_mirrors(load_recipe(tmp_path / "r.yaml", env={}), host_defaults=False).ca_files == ()


@pytest.mark.newer_engines
def test_bootstrap_import_runs_and_leaves_no_copy_behind(engine, bookworm_image: str, unique_tag,  # type: ignore[no-untyped-def]
                                                        cleanup) -> None:
    """The rootfs becomes a one-layer image with the labels and command asked for, that runs; each import is
    an image of its own, and nothing is left in the engine's temporary folder (Podman 4.3's import endpoint
    leaves a copy of every upload there; on Podman the rootfs goes in as a docker-archive)."""
    key = image_labels(find_image(engine, bookworm_image))[ROOTFS_KEY_LABEL]
    rootfs = default_cache_dir() / "rootfs" / f"{key}.tar"
    temporary = Path("/var/tmp")
    before = set(temporary.iterdir()) if temporary.is_dir() else set()
    tags = [cleanup.image(unique_tag("import-a")), cleanup.image(unique_tag("import-b"))]
    ids = [import_rootfs(engine, rootfs, tag, {"org.imgbuild.test": "import"}) for tag in tags]
    left = {p for p in (set(temporary.iterdir()) if temporary.is_dir() else set()) - before
            if p.name.startswith("api_load.tar")}
    assert not left, f"{engine.kind} left {sorted(map(str, left))}"
    details = engine.api.inspect_image(tags[0])
    assert details["Id"] == ids[0] or details["Id"] == ids[0].removeprefix("sha256:")
    assert details["Config"]["Labels"]["org.imgbuild.test"] == "import"
    assert details["Config"]["Cmd"] == ["/bin/sh"]
    assert details["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(rootfs.read_bytes()).hexdigest()]
    assert ids[0] != ids[1]  # each import an image of its own, as the import endpoint makes them
    container = engine.client.containers.create(tags[1], ["python3", "-c", "print(6 * 7)"])
    cleanup.container(container.id)
    container.start()
    assert container.wait(timeout=120)["StatusCode"] == 0
    assert container.logs().strip() == b"42"
