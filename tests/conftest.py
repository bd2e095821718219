"""Shared fixtures: real engines, unique tags, cleanup, and a small real image per engine.

`engine` is parametrized over ("podman", "docker") and connects to IMGBUILD_TEST_PODMAN_HOST /
IMGBUILD_TEST_DOCKER_HOST (`eval "$(scripts/engines.sh start)"` sets them). Tests marked `newer_engines` also
run on "podman5", "docker26" and "docker26c" (Docker 26 with the containerd image store), whose hosts
`eval "$(scripts/engines-trixie.sh start)"` sets. A missing variable skips the
test, except under CI=true, where it fails: CI must never pass by skipping the engine tests. Tests that
use `engine` are marked `engine` automatically.

Engines are shared with other test runs at the same time: everything a test creates carries a unique tag
(`unique_tag`) and is removed through `cleanup`; nothing is ever pruned.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors
import pytest

from imgbuild.build.bootstrap import BootstrapOptions, bootstrap_image
from imgbuild.engine.connect import Engine, connect
from imgbuild.engine.image_ids import image_store
from imgbuild.foundation import hostconfig
from imgbuild.recipe.model import Bootstrap

ENGINE_HOST_VARS = {"podman": "IMGBUILD_TEST_PODMAN_HOST", "docker": "IMGBUILD_TEST_DOCKER_HOST",
                    "podman5": "IMGBUILD_TEST_PODMAN5_HOST", "docker26": "IMGBUILD_TEST_DOCKER26_HOST",
                    "docker26c": "IMGBUILD_TEST_DOCKER26C_HOST"}
ENGINE_KINDS = {"podman": "podman", "docker": "docker", "podman5": "podman", "docker26": "docker",
                "docker26c": "docker"}
NEWER_ENGINES = ("podman5", "docker26", "docker26c")
REPO_ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every engine test runs on Debian 12's engines; those marked `newer_engines` on today's engines too."""
    if "engine" in metafunc.fixturenames:
        names = ["podman", "docker"]
        if metafunc.definition.get_closest_marker("newer_engines"):
            names += NEWER_ENGINES
        metafunc.parametrize("engine", names, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.engine)


_skipped_engine_tests: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "engine" in report.keywords:
        _skipped_engine_tests.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With IMGBUILD_REQUIRE_ENGINES=1 (scripts/test.sh, CI) a skipped engine test fails the run."""
    if _skipped_engine_tests and os.environ.get("IMGBUILD_REQUIRE_ENGINES") == "1":
        print(f"\n{len(_skipped_engine_tests)} engine test(s) were skipped, but IMGBUILD_REQUIRE_ENGINES=1:")
        for nodeid in _skipped_engine_tests:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A real engine of each kind; skipped when not configured, failed under CI."""
    name = request.param
    kind = ENGINE_KINDS[name]
    var = ENGINE_HOST_VARS[name]
    host = os.environ.get(var)
    if not host:
        script = "engines-trixie.sh" if name in NEWER_ENGINES else "engines.sh"
        message = f"{var} is not set (eval \"$(scripts/{script} start)\")"
        if in_ci():
            pytest.fail(f"CI=true but {message}: engine tests must run in CI")
        pytest.skip(message)
    with connect(kind, host) as found:
        started = time.time()
        yield found
        _remove_dangling_leftovers(found, started)


def _remove_dangling_leftovers(engine: Engine, since: float) -> None:
    """Remove untagged imgbuild images this session left behind, and say so.

    A layer rebuilt under the same tag, or a rootfs imported again, leaves its predecessor untagged; tests
    remove the tags they made, so these would pile up on the engine. Only images that carry imgbuild's
    labels, have no tag and were created during this session are touched. In Docker's containerd image store
    the classic builder's step images outlive the image built from them, so there untagged intermediate
    images are removed too (newest first: a step's image before the one it was built on).
    """
    leftovers = []
    listed = engine.api.images(filters={"dangling": True, "label": "org.imgbuild.role"})
    if image_store(engine) == "containerd":
        listed = [i for i in engine.api.images(all=True, filters={"label": "org.imgbuild.role"})
                  if not [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"]]
    for image in sorted(listed, key=lambda i: -i.get("Created", 0)):
        if image.get("Created", 0) >= since - 1:
            leftovers.append(image["Id"])
    for image_id in leftovers:
        try:
            engine.api.remove_image(image_id)
        except docker.errors.APIError:
            pass  # still used by another image or a container of a concurrent run
    if leftovers:
        print(f"\n{engine.kind}: removed {len(leftovers)} untagged imgbuild image(s) left by this session")


@pytest.fixture
def unique_tag() -> "UniqueTag":
    return UniqueTag()


@dataclass
class UniqueTag:
    """Tags no other test run uses: localhost/imgbuild-test-NAME-RANDOM:VERSION."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(4))

    def __call__(self, name: str, version: str = "1") -> str:
        return f"localhost/imgbuild-test-{name}-{self.suffix}:{version}"


@dataclass
class Cleanup:
    """Removes, at teardown, the containers and images a test registered (containers first)."""

    engine: Engine
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def image(self, ref: str) -> str:
        self.images.append(ref)
        return ref

    def container(self, ref: str) -> str:
        self.containers.append(ref)
        return ref

    def run(self) -> None:
        for ref in reversed(self.containers):
            try:
                self.engine.api.remove_container(ref, force=True, v=True)
            except docker.errors.NotFound:
                pass
        for ref in reversed(self.images):
            remove_image(self.engine, ref)


def remove_image(engine: Engine, ref: str) -> None:
    """Remove one tag or id (never other tags of the same image: noprune keeps parents)."""
    try:
        engine.api.remove_image(ref, force=False, noprune=False)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 404:
            # Still used by another of this test's images or tags; force the removal of this reference.
            try:
                engine.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture
def cleanup(engine: Engine) -> Iterator[Cleanup]:
    tracker = Cleanup(engine)
    yield tracker
    tracker.run()


@pytest.fixture(scope="session")
def bookworm_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tag of a small real image (Debian bookworm + python3) made by imgbuild's bootstrap.

    The rootfs tar is cached in imgbuild's cache (IMGBUILD_CACHE), so the second engine and later runs
    only import it (a few seconds). The tag is unique to this session and removed at its end.
    """
    mirror = hostconfig.apt_archive_url()
    if not mirror:
        pytest.fail("this host has no apt sources to take a Debian mirror from")
    tag = f"localhost/imgbuild-test-bookworm-{secrets.token_hex(4)}:1"
    result = bootstrap_image(engine, Bootstrap(suite="bookworm", include=["python3"]),
                             BootstrapOptions(mirror=mirror, tag=tag))
    yield result.tag
    remove_image(engine, result.tag)
