"""A small client of the OCI distribution API (what `docker push` and `podman push` speak to a registry).

Only what pushing a set needs: blob existence (HEAD), chunked blob uploads (POST, PATCH..., PUT ?digest=),
manifests (PUT, HEAD), over HTTPS with the system's or a given CA, and the two ways registries ask for
credentials: HTTP basic auth, and bearer tokens from the realm a 401 names (the distribution spec's token
flow). Credentials come from the files the engines' own CLIs write (``docker login``, ``podman login``):
``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.docker/config.json``; never from
the command line.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from imgbuild.foundation.errors import ImgbuildError, Remedy

UPLOAD_CHUNK = 16 * 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = ", ".join([OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"])
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(ImgbuildError):
    """A registry refused a request: names what was asked (``what``) and the HTTP status."""

    def __init__(self, message: str, *, what: str, status: int | None = None, hint: str | None = None,
                 remedy: Remedy | None = None) -> None:
        super().__init__(message, hint=hint, remedy=remedy)
        self.what = what
        self.status = status


@dataclass(frozen=True)
class RegistryRef:
    """``HOST[:PORT][/PREFIX]`` as given by the user."""

    host: str
    prefix: str

    @classmethod
    def parse(cls, value: str) -> RegistryRef:
        value = value.strip().removeprefix("https://").removeprefix("http://").strip("/")
        host, _, prefix = value.partition("/")
        if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9a-fA-F:]+\](:[0-9]{1,5})?", host):
            raise ImgbuildError(f"registry {value!r}: expected HOST[:PORT][/PREFIX]")
        if prefix and not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*", prefix):
            raise ImgbuildError(f"registry prefix {prefix!r}: lower-case path components only")
        return cls(host, prefix)

    def repository(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def auth_files() -> list[Path]:
    """Where the engines' CLIs keep registry credentials, in the order podman and skopeo read them."""
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_config = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_config) / "config.json" if docker_config else Path.home() / ".docker" / "config.json")
    return files


def credentials_for(host: str) -> tuple[str, str] | None:
    """(user, password) stored for ``host`` by `docker login` / `podman login`, or None."""
    for path in auth_files():
        try:
            auths = json.loads(path.read_text()).get("auths") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key in (host, f"https://{host}", f"http://{host}"):
            encoded = (auths.get(key) or {}).get("auth")
            if encoded:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
                return user, password
    return None


class Registry:
    """One registry host; a requests session with its TLS settings and credentials."""

    def __init__(self, ref: RegistryRef, *, ca_file: Path | None = None, insecure: bool = False,
                 timeout: float = 60) -> None:
        self.ref = ref
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{ref.host}"
        self.session = requests.Session()
        self.session.trust_env = False  # a site registry is reached directly, never through a proxy
        self.session.verify = str(ca_file) if ca_file else True
        self.timeout = timeout
        self.credentials = credentials_for(ref.host)
        self._token: str | None = None
        self._basic = False

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """One request; a 401 is answered once (basic credentials or a bearer token) and the request sent again."""
        url = urljoin(self.base + "/", url)
        headers = dict(kwargs.pop("headers", None) or {})
        for attempt in range(2):
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            elif self._basic and self.credentials:
                headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            try:
                response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(f"{self.ref.host}: TLS verification failed: {exc}", what=what,
                                    remedy=Remedy.GIVE_CA_FILE) from exc
            except requests.RequestException as exc:
                raise RegistryError(f"{self.ref.host}: {what}: {exc}", what=what) from exc
            if response.status_code != 401 or attempt:
                return response
            self._authenticate(response, what)
        return response

    def _authenticate(self, response: requests.Response, what: str) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer"):
            if self.credentials is None:
                raise RegistryError(f"{self.ref.host} wants credentials for {what} (HTTP 401) and none are "
                                    "stored", what=what, status=401,
                                    hint=f"log in first: podman login {self.ref.host}")
            self._basic = True
            return
        fields = dict(_CHALLENGE.findall(challenge))
        params = {k: v for k, v in fields.items() if k in ("service", "scope")}
        try:
            token = self.session.get(fields.get("realm", ""), params=params, auth=self.credentials,
                                     timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryError(f"{self.ref.host}: token request failed: {exc}", what=what) from exc
        if token.status_code != 200:
            raise RegistryError(f"{self.ref.host}: the token service refused the credentials "
                                f"(HTTP {token.status_code})", what=what, status=token.status_code)
        body = token.json()
        self._token = body.get("token") or body.get("access_token")

    def check(self, response: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if response.status_code in ok:
            return response
        detail = response.text.strip()[:300]
        if response.status_code == 401:
            raise RegistryError(f"{self.ref.host} refused the stored credentials for {what} (HTTP 401)",
                                what=what, status=401, hint=f"log in again: podman login {self.ref.host}")
        raise RegistryError(f"{self.ref.host}: {what}: HTTP {response.status_code} {detail}", what=what,
                            status=response.status_code)

    def ping(self) -> None:
        """GET /v2/: reachable, TLS trusted and the credentials accepted (a 401 is answered here)."""
        self.check(self._send("GET", "/v2/", "GET /v2/"), "GET /v2/", (200,))

    def has_blob(self, repository: str, digest: str) -> bool:
        what = f"blob {digest} in {repository}"
        response = self._send("HEAD", f"/v2/{repository}/blobs/{digest}", what)
        return self.check(response, what, (200, 404)).status_code == 200

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Cross-repository mount of a blob the registry holds in ``source``; False when it would not."""
        what = f"blob {digest} in {repository}"
        response = self._send("POST", f"/v2/{repository}/blobs/uploads/", what,
                              params={"mount": digest, "from": source}, headers={"Content-Length": "0"})
        return self.check(response, what, (201, 202)).status_code == 201

    def upload_blob(self, repository: str, chunks: Iterable[bytes], digest_of: Any, what: str) -> tuple[str, int]:
        """Upload ``chunks`` as one blob; ``digest_of()`` gives its digest once every chunk was sent.
        Returns (digest, size)."""
        response = self.check(self._send("POST", f"/v2/{repository}/blobs/uploads/", what,
                                         headers={"Content-Length": "0"}), what, (202,))
        location = response.headers.get("Location", "")
        offset = 0
        for chunk in _pieces(chunks, UPLOAD_CHUNK):
            response = self.check(self._send(
                "PATCH", location, what, data=chunk,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}), what, (202,))
            location = response.headers.get("Location", location)
            offset += len(chunk)
        digest = digest_of()
        separator = "&" if "?" in location else "?"
        self.check(self._send("PUT", f"{location}{separator}digest={digest}", what,
                              headers={"Content-Length": "0"}), what, (201,))
        return digest, offset

    def put_blob(self, repository: str, data: bytes, digest: str) -> None:
        what = f"blob {digest} in {repository}"
        response = self.check(self._send("POST", f"/v2/{repository}/blobs/uploads/", what,
                                         headers={"Content-Length": "0"}), what, (202,))
        location = response.headers.get("Location", "")
        separator = "&" if "?" in location else "?"
        self.check(self._send("PUT", f"{location}{separator}digest={digest}", what, data=data,
                              headers={"Content-Type": "application/octet-stream"}), what, (201,))

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        what = f"manifest {repository}:{reference}"
        response = self.check(self._send("PUT", f"/v2/{repository}/manifests/{reference}", what, data=data,
                                         headers={"Content-Type": media_type}), what, (201,))
        return response.headers.get("Docker-Content-Digest", "")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        what = f"manifest {repository}:{reference}"
        response = self.check(self._send("HEAD", f"/v2/{repository}/manifests/{reference}", what,
                                         headers={"Accept": MANIFEST_TYPES}), what, (200, 404))
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None


def _pieces(chunks: Iterable[bytes], size: int) -> Iterable[bytes]:
    """Chunks regrouped into request bodies of about ``size`` bytes (one PATCH each)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) >= size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)
