"""Every on-disc name of an archive set, format versions 1 to 3 (FORMAT.md describes them).

A set is a folder per volume (one disc each) under the output folder::

    OUT/<set-id>-vol001/
        README.txt                              how to check and restore, English and Chinese
        FORMAT.md                               this format's specification (format 3)
        SHA256SUMS                              `sha256sum -c` list of every other file of this volume
        imgbuild-set.json                       the set manifest, byte-identical on every volume
        restore.sh                              POSIX sh restore without imgbuild, identical on every volume
        images/manifest.json                    docker-archive manifest (Config, RepoTags, Layers)
        images/config01.json ...                image configs; sha256 of the file = the image id
        sbom/image01.cdx.json ...               what each image holds, CycloneDX JSON (format 3)
        blobs/layer0001.tar.zst.part001 ...     zstd stream of one layer tar, split into parts

Readers accept only names that match these patterns: a manifest naming anything else is hostile.
Names stay short (<= 32 characters per component) so ISO 9660 with Joliet keeps them intact.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_NAME = "imgbuild-set"
FORMAT_VERSION = 3
# Version 2 (FORMAT.md section 8) adds per-block hashes and parity volumes; version 3 adds each image's SBOM
# (sbom/imageNN.cdx.json on every data volume); readers accept all three.
FORMAT_VERSION_BLOCKS = 2
FORMAT_VERSION_SBOM = 3
READABLE_VERSIONS = (1, 2, 3)

MANIFEST_NAME = "imgbuild-set.json"
SUMS_NAME = "SHA256SUMS"
README_NAME = "README.txt"
# The format specification itself, on every volume written since format 3 (sets without it are read alike).
FORMAT_DOC_NAME = "FORMAT.md"
RESTORE_NAME = "restore.sh"
IMAGES_DIR = "images"
BLOBS_DIR = "blobs"
DOCKER_MANIFEST_PATH = f"{IMAGES_DIR}/manifest.json"

CATALOG_DEFAULT = "manifests"
PARTIAL_SUFFIX = ".partial"

# No part file is larger than this, so plain ISO 9660 (level 2) and simple burners can hold it.
MAX_PART_SIZE = 2047 * 1024 * 1024
MAX_PARTS_PER_LAYER = 999
MAX_LAYERS = 9999
MAX_IMAGES = 99
MAX_VOLUMES = 999
# A manifest larger than this is refused before it is parsed.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024

MIB = 1024 * 1024
MEDIA_PROFILES: dict[str, int] = {
    "bd25": 23_000 * MIB,
    "bd50": 46_000 * MIB,
    "bd100": 92_000 * MIB,
    "bd128": 117_500 * MIB,
    "dvd": 4_450 * MIB,
    "dvd-dl": 8_100 * MIB,
    "cd": 690 * MIB,
}

SET_ID_RE = re.compile(r"^[0-9a-f]{16}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
VOLUME_FOLDER_RE = re.compile(r"^(?P<set_id>[0-9a-f]{16})-vol(?P<number>[0-9]{3})$")
PART_RE = re.compile(rf"^{BLOBS_DIR}/layer(?P<layer>[0-9]{{4}})\.tar\.zst\.part(?P<part>[0-9]{{3}})$")
CONFIG_RE = re.compile(rf"^{IMAGES_DIR}/config(?P<image>[0-9]{{2}})\.json$")
SBOM_DIR = "sbom"
SBOM_RE = re.compile(rf"^{SBOM_DIR}/image(?P<image>[0-9]{{2}})\.cdx\.json$")
MAX_SBOM_BYTES = 64 * 1024 * 1024
# Format 2: a parity volume holds README.txt and its parity stream cut into parts (imgbuild/parity/volumes.py).
PARITY_DIR = "parity"
PARITY_PART_RE = re.compile(rf"^{PARITY_DIR}/parity\.part(?P<part>[0-9]{{3}})$")


def volume_folder(set_id: str, number: int) -> str:
    """Folder name of volume ``number`` (1-based) of a set."""
    return f"{set_id}-vol{number:03d}"


def layer_name(layer_number: int) -> str:
    """The layer's file name inside the docker-archive tar that restore builds (``layer0001.tar``)."""
    return f"layer{layer_number:04d}.tar"


def part_path(layer_number: int, part_number: int) -> str:
    """Volume-relative path of part ``part_number`` (1-based, counted across volumes) of a layer."""
    return f"{BLOBS_DIR}/{layer_name(layer_number)}.zst.part{part_number:03d}"


def config_path(image_number: int) -> str:
    """Volume-relative path of the config JSON of image ``image_number`` (1-based)."""
    return f"{IMAGES_DIR}/config{image_number:02d}.json"


def sbom_path(image_number: int) -> str:
    """Volume-relative path of the SBOM (CycloneDX JSON) of image ``image_number`` (1-based), format 3."""
    return f"{SBOM_DIR}/image{image_number:02d}.cdx.json"


def config_name(image_number: int) -> str:
    """The config's file name inside the docker-archive tar (no folder)."""
    return config_path(image_number).split("/", 1)[1]


def parity_part_path(part_number: int) -> str:
    """Volume-relative path of part ``part_number`` (1-based) of a parity volume's parity stream."""
    return f"{PARITY_DIR}/parity.part{part_number:03d}"


def is_parity_volume_path(path: str) -> bool:
    """True when ``path`` is a name a parity volume's file list may hold."""
    return path in (README_NAME, FORMAT_DOC_NAME) or PARITY_PART_RE.match(path) is not None


def catalog_path(catalog_dir: Path, set_id: str) -> Path:
    """Where the catalog copy of a set's manifest lives (the root of trust, kept apart from the discs)."""
    return catalog_dir / f"{set_id}.json"


def partial(path: Path) -> Path:
    """The name a file or folder has while it is being written."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def is_data_path(path: str) -> bool:
    """True when ``path`` is a volume-relative name the manifest may list (everything but itself and SUMS)."""
    return (
        path in (README_NAME, FORMAT_DOC_NAME, RESTORE_NAME, DOCKER_MANIFEST_PATH)
        or CONFIG_RE.match(path) is not None
        or SBOM_RE.match(path) is not None
        or PART_RE.match(path) is not None
    )


def parse_volume_folder(name: str) -> tuple[str, int] | None:
    """(set id, volume number) of a volume folder name, or None when it is not one."""
    match = VOLUME_FOLDER_RE.match(name)
    if match is None:
        return None
    return match["set_id"], int(match["number"])


def media_capacity(profile: str | None, media_size: int | None) -> tuple[str, int]:
    """(profile name, capacity in bytes); ``media_size`` wins and is reported as profile ``custom``."""
    if media_size is not None:
        return "custom", media_size
    if profile is None or profile not in MEDIA_PROFILES:
        raise KeyError(profile)
    return profile, MEDIA_PROFILES[profile]
