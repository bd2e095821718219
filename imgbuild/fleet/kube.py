"""`imgbuild kube`: Kubernetes manifests (a Deployment and a Service) for the app of a set pushed to a registry.

The image is named by digest (what `imgbuild push` put in the registry, asked of the registry), so every
node runs exactly the set's image. The container runs as it would under load-and-run: the recipe's serve
command, port and environment; the health check becomes a startup probe (the recipe's timeout: a model may
take minutes to load), a readiness probe and a liveness probe. It runs as a non-root user with a read-only
root filesystem, no privilege escalation, no capabilities, and a writable emptyDir at /tmp (HOME and the
cache folders point there).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from imgbuild.discs.locate import LocatedSet, locate_set
from imgbuild.fleet.push import targets
from imgbuild.fleet.registry import Registry, RegistryRef
from imgbuild.foundation.errors import LoadError, OptionError, Remedy
from imgbuild.recipe.model import Serve
from imgbuild.restore.load import read_config
from imgbuild.restore.run import SERVE_LABEL, pick_image, recipe_serve
from imgbuild.setformat.manifest import Image

NON_ROOT = 65534  # "nobody" on Debian: owns nothing in the image, can read what is world-readable
WRITABLE = "/tmp"


@dataclass(frozen=True)
class KubeOptions:
    registry: str
    namespace: str | None = None
    replicas: int = 1
    name: str | None = None  # the Deployment's and Service's name; default from the image's repository
    image: str | None = None  # which image of the set (default the app image)
    tag: str | None = None  # the NAME:TAG it was pushed as, when `push --tag` renamed it
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "4Gi"
    ca_file: Path | None = None
    insecure: bool = False
    catalog: Path | None = None
    set_id: str | None = None


@dataclass(frozen=True)
class KubeResult:
    image: str  # REGISTRY/REPOSITORY@DIGEST
    documents: tuple[dict[str, Any], ...]

    def to_yaml(self) -> str:
        return yaml.safe_dump_all(list(self.documents), sort_keys=False)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "documents": list(self.documents)}


def kube_manifests(dirs: Sequence[Path], options: KubeOptions) -> KubeResult:
    if options.replicas < 0:
        raise OptionError("replicas", "must be 0 or more")
    located = locate_set(dirs, options.catalog, options.set_id)
    image = pick_image(located.manifest, options.image)
    ref = RegistryRef.parse(options.registry)
    repository, tag = targets([image], ref, [options.tag] if options.tag else [])[0][0]
    registry = Registry(ref, ca_file=options.ca_file, insecure=options.insecure)
    digest = registry.manifest_digest(repository, tag)
    if digest is None:
        raise LoadError(f"{ref.host}/{repository}:{tag} is not in the registry",
                        remedy=Remedy.PUSH_FIRST)
    serve = _serve_of(located, image)
    name = options.name or _dns_label(repository.rsplit("/", 1)[-1])
    reference = f"{ref.host}/{repository}@{digest}"
    return KubeResult(reference, (_deployment(name, reference, serve, image, located, options),
                                  _service(name, serve, options)))


def _serve_of(located: LocatedSet, image: Image) -> Serve:
    serve = recipe_serve(located.manifest, image)
    if serve is not None:
        return serve
    config = json.loads(read_config(located, image))
    raw = ((config.get("config") or {}).get("Labels") or {}).get(SERVE_LABEL)
    if not raw:
        raise LoadError(f"image {image.id} has no serve section (no recipe in the set, no {SERVE_LABEL} label)")
    try:
        return Serve.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise LoadError(f"image {image.id}: label {SERVE_LABEL} is not a serve section: {exc}") from exc


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "app"


def _metadata(name: str, options: KubeOptions) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": _labels(name)}
    if options.namespace:
        metadata["namespace"] = options.namespace
    return metadata


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "imgbuild"}


def _probe(serve: Serve) -> dict[str, Any]:
    health = serve.health
    if health.method == "GET":
        action: dict[str, Any] = {"httpGet": {"path": health.path, "port": "http"}}
    else:  # HEAD or POST: kubelet's httpGet only sends GET; the image's python3 asks as the recipe says
        script = ("import sys, urllib.request as u; "
                  f"r = u.urlopen(u.Request('http://127.0.0.1:{serve.port}{health.path}', method='{health.method}', "
                  f"data=b'' if '{health.method}' == 'POST' else None), timeout=5); "
                  f"sys.exit(r.status != {health.expect_status})")
        action = {"exec": {"command": ["python3", "-c", script]}}
    period = max(1, math.ceil(health.interval))
    return {**action, "periodSeconds": period, "timeoutSeconds": 5}


def _deployment(name: str, reference: str, serve: Serve, image: Image, located: LocatedSet,
                options: KubeOptions) -> dict[str, Any]:
    probe = _probe(serve)
    startup = {**probe, "failureThreshold": max(1, math.ceil(serve.health.timeout / probe["periodSeconds"]))}
    env = {**serve.env, "HOME": WRITABLE, "XDG_CACHE_HOME": f"{WRITABLE}/.cache"}
    container: dict[str, Any] = {
        "name": "app",
        "image": reference,
        "ports": [{"name": "http", "containerPort": serve.port, "protocol": "TCP"}],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "startupProbe": startup,
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {"requests": {"cpu": options.cpu_request, "memory": options.memory_request},
                      "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT, "runAsGroup": NON_ROOT,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": WRITABLE}],
    }
    if serve.command:
        container["command"] = list(serve.command)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, options),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": _labels(name),
                             "annotations": {"imgbuild.org/set-id": located.manifest.set_id,
                                             "imgbuild.org/image-id": image.id}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "fsGroup": NON_ROOT,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def _service(name: str, serve: Serve, options: KubeOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, options),
        "spec": {"selector": {"app.kubernetes.io/name": name},
                 "ports": [{"name": "http", "port": serve.port, "targetPort": "http", "protocol": "TCP"}]},
    }
