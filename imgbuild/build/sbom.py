"""What is inside an image: its Debian packages, Python packages and model files, as a CycloneDX SBOM.

The facts come from the image itself: a short-lived container (no network) runs COLLECT with the image's
own python3 and reports dpkg's status (name, version, source, and the licences a machine-readable
debian/copyright states), every Python distribution importlib.metadata finds (name, version, licence from its
metadata) and the checkpoints lock the app layer carries, with any licence the model's card or README states.
cyclonedx-python-lib turns that into CycloneDX 1.6 JSON. The result is kept beside imgbuild's caches, named
by the image id (a digest of the image's config, so it can only describe that image); `imgbuild archive`
puts it on every volume.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import requests

from imgbuild.engine.connect import Engine
from imgbuild.foundation.atomicfile import write_atomic
from imgbuild.foundation.cachedir import default_cache_dir
from imgbuild.foundation.errors import SbomError

SPEC = "CycloneDX 1.6"
APP_DIR = "/opt/app"  # where the app layer puts its context, the checkpoints and the lock
COLLECT_TIMEOUT = 300

# Runs inside the image (python3 -I -c): prints one JSON object. Keep it to the standard library.
COLLECT = r'''
import json, os, re, sys
from importlib import metadata

def paragraphs(text):
    for block in re.split(r"\n\s*\n", text):
        fields, last = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            yield fields

def deb_licences(package):
    try:
        with open(f"/usr/share/doc/{package}/copyright", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return []
    if not text.startswith("Format:"):
        return []  # not machine-readable: the package does not state its licence in a form to quote
    found = []
    for fields in paragraphs(text):
        name = fields.get("License", "").split("\n", 1)[0].strip()
        if name and name not in found:
            found.append(name)
    return found

debs = []
try:
    status = open("/var/lib/dpkg/status", encoding="utf-8", errors="replace").read()
except OSError:
    status = ""
for p in paragraphs(status):
    if p.get("Status", "").endswith(" installed") and p.get("Package"):
        source = p.get("Source", p["Package"]).split(" ")[0]
        depends = [d.strip().split(" ")[0].split(":")[0] for field in ("Pre-Depends", "Depends")
                   for d in re.split(r"[,|]", p.get(field, "")) if d.strip()]
        debs.append({"name": p["Package"], "version": p.get("Version", ""), "source": source,
                     "arch": p.get("Architecture", ""), "licences": deb_licences(p["Package"]),
                     "depends": depends})

pythons, seen = [], set()
for dist in metadata.distributions():
    meta = dist.metadata
    name = meta.get("Name")
    if not name or name.lower() in seen:
        continue
    seen.add(name.lower())
    licence = (meta.get("License-Expression") or "").strip()
    if not licence:
        text = (meta.get("License") or "").strip()
        licence = text if text and "\n" not in text and len(text) <= 80 else ""
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    requires = [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    pythons.append({"name": name, "version": meta.get("Version", ""), "licence": licence,
                    "classifiers": classifiers, "requires": requires})

lock_path = os.path.join(sys.argv[1], "imgbuild.lock.json")
lock = open(lock_path, encoding="utf-8").read() if os.path.isfile(lock_path) else None
model_licences = {}
if lock:
    for entry in json.loads(lock).get("checkpoints", []):
        folder = os.path.join(sys.argv[1], entry.get("dest", ""))
        found = []
        cards = [f["path"] for f in entry.get("files", [])
                 if os.path.basename(f.get("path", "")) in ("README.md", "MODEL_CARD", "LICENSE", "LICENSE.md")]
        for name in sorted(cards, key=lambda p: (p.count("/"), p)):  # the repository's own card first
            try:
                text = open(os.path.join(folder, name), encoding="utf-8", errors="replace").read(1 << 16)
            except OSError:
                continue
            for m in re.finditer(r"(?im)^[\s*>-]*licen[cs]e\s*[:=]\s*\"?([A-Za-z0-9][\w.+ -]{0,60}?)\"?\s*$", text):
                if m.group(1) not in found:
                    found.append(m.group(1))
        model_licences[entry.get("dest", "")] = found
print(json.dumps({"debs": debs, "python": pythons, "lock": lock, "model_licences": model_licences}))
'''

# Licence words that limit how the contents may be used (non-commercial, no derivatives, research only).
_RESTRICTIVE = re.compile(r"(^|[-_ ])(NC|ND)($|[-_ ])|non-?commercial|research|proprietary|all rights reserved",
                          re.IGNORECASE)


def restricts_use(licence: str) -> bool:
    return bool(_RESTRICTIVE.search(licence))


def collect(engine: Engine, image: str) -> dict[str, Any]:
    """Run COLLECT in a container of `image` (no network, removed afterwards) and return its report."""
    api = engine.api
    try:
        container = api.create_container(image, entrypoint=["python3", "-I", "-c", COLLECT, APP_DIR], command=[],
                                         network_disabled=True, user="0",
                                         labels={"org.imgbuild.sbom": image})
    except docker.errors.APIError as exc:
        raise SbomError(image, str(exc.explanation or exc)) from None
    try:
        api.start(container)
        status = api.wait(container, timeout=COLLECT_TIMEOUT).get("StatusCode")
        out = api.logs(container, stdout=True, stderr=False)
        if status != 0:
            err = api.logs(container, stdout=False, stderr=True).decode(errors="replace").strip()
            raise SbomError(image, f"exit {status}: {err[-500:]}")
    except docker.errors.APIError as exc:  # e.g. no python3 in the image: the engine cannot start it
        raise SbomError(image, str(exc.explanation or exc)) from None
    except requests.exceptions.RequestException as exc:  # the wait timed out
        raise SbomError(image, f"no answer within {COLLECT_TIMEOUT} s: {exc}") from None
    finally:
        try:
            api.remove_container(container, force=True)
        except docker.errors.APIError:
            pass  # already gone
    try:
        return json.loads(out)
    except ValueError as exc:
        raise SbomError(image, f"the package list is not JSON: {exc}") from None


def cyclonedx_json(report: dict[str, Any], *, image_id: str, tags: list[str], role: str | None) -> str:
    """The collected report as CycloneDX JSON, made by cyclonedx-python-lib."""
    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # cyclonedx-python-lib before 11
        from cyclonedx.factory.license import LicenseFactory
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    licences = LicenseFactory()
    bom = Bom()
    name = tags[0] if tags else image_id
    bom.metadata.component = Component(
        type=ComponentType.CONTAINER, name=name, version=image_id, bom_ref=image_id,
        properties=[Property(name="imgbuild:role", value=role or ""),
                    *(Property(name="imgbuild:tag", value=t) for t in tags)])
    if report.get("not_listed"):
        bom.metadata.properties.add(Property(name="imgbuild:not-listed", value=report["not_listed"]))
    needed_debs = {d for deb in report.get("debs", []) for d in deb.get("depends", [])}
    needed_python = {_pep503(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0])
                     for dist in report.get("python", []) for r in dist.get("requires", [])}
    for deb in report.get("debs", []):
        top = [Property(name="imgbuild:top-level", value="true")] if deb["name"] not in needed_debs else []
        bom.components.add(Component(
            type=ComponentType.LIBRARY, name=deb["name"], version=deb["version"], group="debian",
            bom_ref=f"deb:{deb['name']}@{deb['version']}",
            purl=PackageURL("deb", "debian", deb["name"], deb["version"],
                            {"arch": deb["arch"]} if deb.get("arch") else None),
            licenses=[licences.make_with_name(n) for n in deb.get("licences", [])],
            properties=[Property(name="imgbuild:source", value=deb["source"]), *top]))
    for dist in report.get("python", []):
        stated = dist.get("licence") or "; ".join(dist.get("classifiers", []))
        top = [Property(name="imgbuild:top-level", value="true")] if _pep503(dist["name"]) not in needed_python else []
        bom.components.add(Component(
            type=ComponentType.LIBRARY, name=dist["name"], version=dist["version"], group="pypi",
            bom_ref=f"pypi:{dist['name']}@{dist['version']}",
            purl=PackageURL("pypi", None, dist["name"], dist["version"]),
            licenses=[licences.make_from_string(stated)] if stated else [], properties=top))
    lock_text = report.get("lock")
    if lock_text:
        bom.metadata.properties.add(Property(name="imgbuild:checkpoints-lock", value=lock_text))
        model_licences = report.get("model_licences", {})
        for entry in json.loads(lock_text).get("checkpoints", []):
            where = entry.get("repo") or entry.get("path") or ""
            for file in entry.get("files", []):
                hashes = [HashType(alg=HashAlgorithm.SHA_256, content=file["sha256"])] if file.get("sha256") else []
                bom.components.add(Component(
                    type=ComponentType.MACHINE_LEARNING_MODEL if file["path"].endswith(_WEIGHTS)
                    else ComponentType.FILE,
                    name=f"{entry['dest']}/{file['path']}", version=entry.get("commit") or "", hashes=hashes,
                    bom_ref=f"file:{entry['dest']}/{file['path']}",
                    licenses=[licences.make_with_name(n) for n in model_licences.get(entry["dest"], [])],
                    properties=[Property(name="imgbuild:source", value=where),
                                Property(name="imgbuild:size", value=str(file.get("size", "")))]))
    bom.register_dependency(bom.metadata.component, list(bom.components))  # the image holds all of them
    return JsonV1Dot6(bom).output_as_string(indent=2)


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wrapped(head: str, items: list[str], width: int = 100) -> str:
    lines, line = [], head
    for item in items:
        if len(line) + len(item) + 2 > width and line.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += item + ", "
    lines.append(line.rstrip(", ").rstrip())
    return "\n".join(lines)


_WEIGHTS = (".onnx", ".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".gguf")


def sbom_cache_dir() -> Path:
    if os.environ.get("IMGBUILD_SBOM_CACHE"):
        return Path(os.environ["IMGBUILD_SBOM_CACHE"])
    return default_cache_dir() / "sbom"


def sidecar_path(image_id: str, cache: Path | None = None) -> Path:
    return (cache or sbom_cache_dir()) / f"{image_id.removeprefix('sha256:')}.cdx.json"


def image_sbom(engine: Engine, image_id: str, tags: list[str], role: str | None,
               cache: Path | None = None) -> bytes:
    """The image's SBOM: the sidecar made earlier for this image id, else made now and kept as the sidecar."""
    path = sidecar_path(image_id, cache)
    if path.is_file():
        return path.read_bytes()
    report = collect(engine, tags[0] if tags else image_id)  # a tag: an engine may know the id by another digest
    data = cyclonedx_json(report, image_id=image_id, tags=tags, role=role).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return data


@dataclass(frozen=True)
class Contents:
    """A summary of one SBOM, for README.txt and `imgbuild inspect`."""

    image: str
    tags: tuple[str, ...]
    role: str
    debs: tuple[tuple[str, str, tuple[str, ...]], ...]  # (name, version, licences)
    python: tuple[tuple[str, str, tuple[str, ...]], ...]
    models: tuple[tuple[str, str, int, tuple[str, ...]], ...]  # (file, source, size, licences)
    top_level: frozenset[str] = frozenset()  # packages no other package of the image depends on
    not_listed: str = ""  # why the packages could not be listed, when they could not

    def restricted(self) -> list[tuple[str, str]]:
        """(component, licence) for every licence that limits use."""
        found = []
        for name, _, names in self.debs + self.python:
            found += [(name, n) for n in names if restricts_use(n)]
        for name, _, _, names in self.models:
            found += [(name, n) for n in names if restricts_use(n)]
        return found

    def summary_lines(self, limit: int = 40) -> str:
        """A plain-text summary for README.txt: top-level packages, model files, licences that limit use."""
        name = ", ".join(self.tags) or self.image
        lines = [f"  {name} ({self.role or 'image'}): {len(self.debs)} Debian packages, "
                 f"{len(self.python)} Python packages, {len(self.models)} model files"]
        if self.not_listed:
            lines.append(f"    contents not listed: {self.not_listed}")
        top = [f"{n} {v}" for n, v, _ in self.python if n in self.top_level]
        if top:
            lines.append(_wrapped("    Python (top level): ", top[:limit] + (["..."] if len(top) > limit else [])))
        top = [f"{n} {v}" for n, v, _ in self.debs if n in self.top_level]
        if top:
            lines.append(_wrapped("    Debian (top level): ", top[:limit] + (["..."] if len(top) > limit else [])))
        for file, source, size, licences in self.models:
            lines.append(f"    model file {file} ({size:,} bytes, from {source}; "
                         f"licence: {', '.join(licences) or 'not stated'})")
        for component, licence in self.restricted():
            lines.append(f"    LICENCE LIMITS USE: {component}: {licence}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "tags": list(self.tags), "role": self.role,
                "debian_packages": [{"name": n, "version": v, "licences": list(ls), "top_level": n in self.top_level}
                                    for n, v, ls in self.debs],
                "python_packages": [{"name": n, "version": v, "licences": list(ls), "top_level": n in self.top_level}
                                    for n, v, ls in self.python],
                "not_listed": self.not_listed or None,
                "model_files": [{"file": f, "source": s, "size": z, "licences": list(ls)}
                                for f, s, z, ls in self.models],
                "restricted_licences": [{"component": c, "licence": n} for c, n in self.restricted()]}


def summarize(data: bytes) -> Contents:
    """Read back the parts of a CycloneDX document that imgbuild wrote (plain JSON, any reader can)."""
    doc = json.loads(data)
    meta = doc.get("metadata", {}).get("component", {})
    props = {p["name"]: p["value"] for p in meta.get("properties", []) if p.get("name") != "imgbuild:tag"}
    tags = tuple(p["value"] for p in meta.get("properties", []) if p.get("name") == "imgbuild:tag")
    bom_props = {p["name"]: p["value"] for p in doc.get("metadata", {}).get("properties", [])}
    debs, python, models, top = [], [], [], set()
    for c in doc.get("components", []):
        names = tuple(_licence_name(entry) for entry in c.get("licenses", []))
        extra = {p["name"]: p["value"] for p in c.get("properties", [])}
        if extra.get("imgbuild:top-level") == "true":
            top.add(c["name"])
        if c.get("group") == "debian":
            debs.append((c["name"], c.get("version", ""), names))
        elif c.get("group") == "pypi":
            python.append((c["name"], c.get("version", ""), names))
        elif c.get("bom-ref", "").startswith("file:"):
            models.append((c["name"], extra.get("imgbuild:source", ""), int(extra.get("imgbuild:size") or 0), names))
    return Contents(meta.get("version", ""), tags, props.get("imgbuild:role", ""), tuple(debs), tuple(python),
                    tuple(models), frozenset(top), bom_props.get("imgbuild:not-listed", ""))


def _licence_name(entry: dict[str, Any]) -> str:
    if "expression" in entry:
        return entry["expression"]
    licence = entry.get("license", {})
    return licence.get("id") or licence.get("name") or ""
