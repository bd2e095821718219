"""Defaults taken from this host's own configuration, read at run time.

imgbuild never hard-codes a mirror: the apt archive comes from the host's apt sources, pip's index and
find-links from `pip config list`, and the CA bundle from the usual variables and paths. A recipe's
`mirrors` section overrides each of them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
CA_BUNDLE_PATHS = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS
)


@dataclass(frozen=True)
class PipHostConfig:
    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    trusted_hosts: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    cert: str | None = None


def _is_security(suites: list[str], uri: str) -> bool:
    return any(s.endswith("-security") or s.endswith("/updates") for s in suites) or "security" in uri


def parse_deb822(text: str) -> list[str]:
    """Archive URIs of enabled `deb` stanzas in a deb822 .sources file, security archives last."""
    main: list[str] = []
    security: list[str] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            (security if _is_security(suites, uri) else main).append(uri)
    return main + security


def parse_sources_list(text: str) -> list[str]:
    """Archive URIs of `deb` lines in a one-line-style sources.list, security archives last."""
    main: list[str] = []
    security: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])  # drop [arch=... signed-by=...] options
        parts = line.split()
        if len(parts) >= 2:
            (security if _is_security(parts[1:2], parts[0]) else main).append(parts[0])
    return main + security


def apt_archive_url(sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = APT_SOURCES_LIST) -> str | None:
    """The first (non-security) archive URL of the host's apt sources, or None."""
    uris: list[str] = []
    if sources_dir.is_dir():
        for path in sorted(sources_dir.glob("*.sources")):
            uris += parse_deb822(path.read_text(errors="replace"))
        for path in sorted(sources_dir.glob("*.list")):
            uris += parse_sources_list(path.read_text(errors="replace"))
    if sources_list.is_file():
        uris += parse_sources_list(sources_list.read_text(errors="replace"))
    web = [u for u in uris if u.startswith(("http://", "https://"))]
    plain = [u for u in web if "security" not in u]
    return (plain or web or [None])[0]


def parse_pip_config_list(text: str) -> PipHostConfig:
    """Parse `pip config list` output (`scope.key='value'` lines); later scopes do not override earlier."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^[^.=]*\.([a-z-]+)=(.*)$", line.strip())
        if not match:
            continue
        key, raw = match.groups()
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("'\"")]
        items = [w for word in words for w in word.split()]
        values.setdefault(key, items)
    return PipHostConfig(
        index_url=(values.get("index-url") or [None])[0],
        extra_index_urls=values.get("extra-index-url", []),
        trusted_hosts=values.get("trusted-host", []),
        find_links=values.get("find-links", []),
        cert=(values.get("cert") or [None])[0],
    )


def pip_config() -> PipHostConfig:
    """pip's effective configuration on this host (files and PIP_* variables), or empty if pip fails."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return PipHostConfig()
    return parse_pip_config_list(out)


def ca_bundle() -> str | None:
    """The CA bundle file this host trusts (it includes a TLS-intercepting proxy's CA, if any)."""
    for var in ("IMGBUILD_CA_BUNDLE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value and os.path.isfile(value):
            return value
    for path in CA_BUNDLE_PATHS:
        if os.path.isfile(path):
            return path
    return None
