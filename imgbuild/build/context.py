"""Build contexts and build args: how a recipe's mirrors and files reach a build.

Mirror settings reach a build ONLY as build args and files in the context (CA certificates, local wheel
folders), never as engine configuration, so the Containerfiles also work by hand:

    mkdir -p ctx/imgbuild/ca ctx/imgbuild/wheels && cp my-proxy-ca.crt ctx/imgbuild/ca/
    podman build -f Containerfiles/python-base.Containerfile --build-arg BASE_IMAGE=IMAGE \
        --build-arg APT_MIRROR=URL --build-arg PIP_INDEX_URL=URL ctx

Context layout (the same for both layers):
    Containerfile              the layer's Containerfile
    imgbuild/ca/NN-NAME.crt    CA certificates (recipe's mirrors.ca_certificates, else this host's bundle)
    imgbuild/wheels/           files of local find_links folders (pip's find-links inside the build; the
                               python-base Containerfile copies them into a build stage only, never into
                               a layer of the final image)
    app/DEST                   app layer only: context items and checkpoints
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgbuild.foundation import hostconfig, shipped
from imgbuild.recipe.loader import LoadedRecipe

CA_DIR = "imgbuild/ca"
WHEELS_DIR = "imgbuild/wheels"
PIP_DIR = "imgbuild/pip"  # constraints.txt of `imgbuild build --constraints` (imgbuild.build.constraints)
APP_DIR = "app"
WHEELS_IN_IMAGE = "/opt/imgbuild/wheels"  # where a build (stage) sees imgbuild/wheels/; PIP_FIND_LINKS names it


@dataclass(frozen=True)
class EffectiveMirrors:
    """The mirrors a build uses: the recipe's, with unset ones filled from this host's configuration."""

    apt: str | None
    pip_index_url: str | None
    pip_extra_index_urls: tuple[str, ...]
    pip_trusted_hosts: tuple[str, ...]
    find_links_urls: tuple[str, ...]
    find_links_dirs: tuple[Path, ...]
    ca_files: tuple[Path, ...]
    registry: str | None

    def to_json(self) -> dict[str, object]:
        return {"apt": self.apt, "pip_index_url": self.pip_index_url,
                "pip_extra_index_urls": list(self.pip_extra_index_urls),
                "pip_trusted_hosts": list(self.pip_trusted_hosts),
                "find_links": list(self.find_links_urls) + [str(p) for p in self.find_links_dirs],
                "ca_certificates": [str(p) for p in self.ca_files], "registry": self.registry}


def _web(urls: list[str]) -> list[str]:
    """Only URLs a container can reach: a host's file:// index means nothing inside a build."""
    return [u for u in urls if u.startswith(("http://", "https://"))]


def resolve_mirrors(loaded: LoadedRecipe, host_defaults: bool = True) -> EffectiveMirrors:
    m = loaded.recipe.mirrors
    host = hostconfig.pip_config() if host_defaults else hostconfig.PipHostConfig()
    ca = [loaded.resolve(p) for p in m.ca_certificates if p]
    if not ca and host_defaults and hostconfig.ca_bundle():
        ca = [Path(hostconfig.ca_bundle() or "")]
    links = [f for f in m.pip.find_links if f]
    return EffectiveMirrors(
        apt=m.apt or (hostconfig.apt_archive_url() if host_defaults else None),
        pip_index_url=m.pip.index_url or (_web([host.index_url or ""]) or [None])[0],
        pip_extra_index_urls=tuple(m.pip.extra_index_urls or _web(host.extra_index_urls)),
        pip_trusted_hosts=tuple(m.pip.trusted_hosts or host.trusted_hosts),
        find_links_urls=tuple(f for f in links if "://" in f),
        find_links_dirs=tuple(loaded.resolve(f) for f in links if "://" not in f),
        ca_files=tuple(ca),
        registry=m.registry or None,
    )


def with_registry(ref: str, registry: str | None) -> str:
    """Put the registry mirror in front of a reference that names no registry of its own."""
    first = ref.split("/", 1)[0]
    has_registry = "/" in ref and ("." in first or ":" in first or first == "localhost")
    return ref if not registry or has_registry else f"{registry.rstrip('/')}/{ref}"


def pip_args(mirrors: EffectiveMirrors) -> dict[str, str]:
    links = list(mirrors.find_links_urls) + ([WHEELS_IN_IMAGE] if mirrors.find_links_dirs else [])
    return {
        "PIP_INDEX_URL": mirrors.pip_index_url or "",
        "PIP_EXTRA_INDEX_URLS": " ".join(mirrors.pip_extra_index_urls),
        "PIP_TRUSTED_HOSTS": " ".join(mirrors.pip_trusted_hosts),
        "PIP_FIND_LINKS": " ".join(links),
    }


def base_build_args(loaded: LoadedRecipe, mirrors: EffectiveMirrors, from_ref: str) -> dict[str, str]:
    base = loaded.recipe.base
    args = {"BASE_IMAGE": from_ref, "APT_MIRROR": mirrors.apt or "", "APT_PACKAGES": " ".join(base.packages),
            "PIP_PACKAGES": " ".join(base.pip), **pip_args(mirrors)}
    return {k: v for k, v in args.items() if v} | dict(base.args)


def app_build_args(loaded: LoadedRecipe, mirrors: EffectiveMirrors, from_ref: str) -> dict[str, str]:
    app = loaded.recipe.app
    assert app is not None
    args = {"BASE_IMAGE": from_ref, "APP_PORT": str(app.serve.port),
            "SERVE_COMMAND": shlex.join(app.serve.command), **pip_args(mirrors)}
    return {k: v for k, v in args.items() if v} | dict(app.args)


def containerfile_for(loaded: LoadedRecipe, role: str) -> Path:
    layer = loaded.recipe.base if role == "base" else loaded.recipe.app
    assert layer is not None
    if layer.containerfile:
        return loaded.resolve(layer.containerfile)
    return shipped.default_containerfile(role)


def place(src: Path, dest: Path) -> None:
    """Put a file or folder into the context: hard links where possible (big wheels, checkpoints), else copies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        _link_or_copy(str(src), str(dest))


def _link_or_copy(src: str, dest: str) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def safe_member(name: str, strip: int) -> PurePosixPath | None:
    """The path an archive member extracts to after stripping, or None; refuses absolute paths and `..`."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"unsafe path in archive: {name}")
    parts = parts[strip:]
    return PurePosixPath(*parts) if parts else None


def extract(archive: Path, dest: Path, strip: int) -> int:
    """Extract a .zip or .tar* into dest, dropping `strip` leading components. Returns files written."""
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = safe_member(info.filename, strip)
                if rel is None or info.is_dir():
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    target.chmod(mode)
                count += 1
        return count
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            rel = safe_member(member.name, strip)
            if rel is None or not member.isfile():
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod(member.mode & 0o777)
            count += 1
    return count


def _app_dest(loaded: LoadedRecipe, dest: str, key: tuple) -> PurePosixPath:
    path = PurePosixPath(dest)
    if path.is_absolute() or ".." in path.parts:
        raise loaded.error(f"dest must be a relative path inside the app folder, not {dest!r}", key)
    return path


def assemble(loaded: LoadedRecipe, role: str, mirrors: EffectiveMirrors, folder: Path,
             extra: tuple[tuple[Path, str], ...] = (), constraints: str | None = None) -> None:
    """Fill `folder` with the build context of one layer."""
    shutil.copyfile(containerfile_for(loaded, role), folder / "Containerfile")
    # imgbuild/pip/ is always there (Containerfiles COPY it); empty, it leaves the context hash unchanged.
    (folder / PIP_DIR).mkdir(parents=True)
    if constraints is not None:
        (folder / PIP_DIR / "constraints.txt").write_text(constraints, encoding="utf-8")
    (folder / CA_DIR).mkdir(parents=True)
    for i, ca in enumerate(mirrors.ca_files):
        # update-ca-certificates only picks up files ending in .crt.
        shutil.copyfile(ca, folder / CA_DIR / f"{i:02d}-{ca.stem}.crt")
    (folder / WHEELS_DIR).mkdir(parents=True)
    for links in mirrors.find_links_dirs:
        for item in sorted(links.iterdir()) if links.is_dir() else [links]:
            if item.is_file():
                place(item, folder / WHEELS_DIR / item.name)
    if role != "app" or loaded.recipe.app is None:
        return
    app_root = folder / APP_DIR
    app_root.mkdir()
    for i, item in enumerate(loaded.recipe.app.context):
        dest = app_root / _app_dest(loaded, item.dest, ("app", "context", i, "dest"))
        src = loaded.resolve(item.src)
        if item.extract:
            try:
                extract(src, dest, item.strip_components)
            except (ValueError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
                raise loaded.error(f"cannot extract {item.src}: {exc}", ("app", "context", i, "src")) from None
        else:
            place(src, dest)
    for src, dest in extra:
        place(src, app_root / _app_dest(loaded, dest, ("app", "checkpoints")))


def hash_tree(folder: Path) -> str:
    """Content hash of a context folder: relative paths, executable bits and file contents."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            digest.update(f"{rel}\0{os.access(path, os.X_OK)}\0".encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()

