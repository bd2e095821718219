"""Find the volumes of a set among the folders a user names, and the manifest to trust.

Shared by verify, repair, load, push and inspect; a command locates its set once and hands the ``LocatedSet``
- one volume source per volume (imgbuild/discs/sources.py) - to every stage. A folder the user names is either
a volume folder (it holds imgbuild-set.json) or a set folder (its subfolders are volume folders). A disc
mounted somewhere is named by its mount point, not by the volume folder name it was burned from, so a volume
is recognised by its content when its folder name does not tell: the part files it holds (part names are
unique within a set) or, when those are gone, the part names its SHA256SUMS lists.

The trusted manifest is the catalog copy when one is given (the root of trust kept apart from the discs),
otherwise the manifest most volumes agree on. Volumes whose own copy differs are still used; verify
reports the differing copy as a bad file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgbuild.discs.iso import IsoVolume, is_iso
from imgbuild.discs.sources import FolderVolume, VolumeSource
from imgbuild.foundation.errors import ArchiveError, ManifestError, Remedy
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import SetManifest, parse_manifest


@dataclass(frozen=True)
class Finding:
    """Something wrong with the folders given (not with a file's content)."""

    folder: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"folder": self.folder, "reason": self.reason}


@dataclass(frozen=True)
class LocatedSet:
    manifest: SetManifest
    manifest_bytes: bytes = field(repr=False)
    manifest_source: str
    volumes: dict[int, VolumeSource]
    whole_set_expected: bool
    findings: tuple[Finding, ...] = ()

    def missing(self) -> list[int]:
        return [v.number for v in self.manifest.volumes if v.number not in self.volumes]

    def bytes_read(self) -> dict[int, int]:
        """Bytes read so far from each volume found (its disc)."""
        return {number: source.bytes_read for number, source in self.volumes.items()}

    def label(self, number: int) -> str:
        """How a volume is named to a user: its folder name, which is also the disc label imgbuild suggests."""
        return f"{self.manifest.volume(number).folder} (volume {number} of {self.manifest.volume_count} " \
               f"of set {self.manifest.name})"


def open_volume(location: Path) -> VolumeSource:
    """The volume at ``location``: an .iso image named by the user, else a volume folder."""
    if is_iso(location):
        return IsoVolume(location)
    if not location.is_dir():
        raise ArchiveError(f"{location}: not a folder")
    return FolderVolume(location)


def candidate_folders(dirs: Sequence[Path]) -> tuple[list[VolumeSource], bool, list[Finding]]:
    """Volumes under ``dirs``, whether a set folder was given (then every volume is expected), and
    volume folders left out because they are symlinks (a set folder's volumes are not followed elsewhere)."""
    found: list[VolumeSource] = []
    skipped: list[Finding] = []
    set_folder_given = False
    for d in dirs:
        if is_iso(d) or (d.is_dir() and (d / layout.MANIFEST_NAME).exists()):
            found.append(open_volume(d))
            continue
        if not d.is_dir():
            raise ArchiveError(f"{d}: not a folder")
        entries = sorted(d.iterdir())
        children = [c for c in entries if c.is_dir() and not c.is_symlink()
                    and not c.name.endswith(layout.PARTIAL_SUFFIX) and (c / layout.MANIFEST_NAME).exists()]
        for link in (c for c in entries if c.is_symlink() and (c / layout.MANIFEST_NAME).exists()):
            skipped.append(Finding(str(link), f"is a symlink to {os.readlink(link)}: volume folders inside a set "
                                              f"folder are not followed; name {link.resolve()} itself to use it"))
        if not children:
            raise ArchiveError(f"{d}: no volume of an imgbuild set here ({_why_empty(entries)})",
                               hint=_hint_empty(d, entries, skipped))
        found.extend(FolderVolume(c) for c in children)
        set_folder_given = True
    return found, set_folder_given, skipped


def _why_empty(entries: list[Path]) -> str:
    isos = [e for e in entries if is_iso(e)]
    if isos:
        return f"no volume folder; it holds {len(isos)} .iso image(s), which are read only when named one by one"
    if any(e.is_symlink() for e in entries):
        return f"no volume folder but symlinks, which are not followed (no {layout.MANIFEST_NAME} here)"
    return f"no {layout.MANIFEST_NAME} in it or in any folder in it"


def _hint_empty(d: Path, entries: list[Path], skipped: list[Finding]) -> str | None:
    if any(is_iso(e) for e in entries):
        return f"name the images: imgbuild verify {d}/*.iso"
    partial = [e.name for e in entries if e.name.endswith(layout.PARTIAL_SUFFIX)]
    if partial:
        return f"{', '.join(partial)} is an unfinished archive; rerun the archive command"
    if skipped:
        return "; ".join(f"{f.folder} {f.reason}" for f in skipped)
    return None


def read_small_file(path: Path, limit: int) -> bytes:
    """Read a metadata file that is not on a volume (the catalog's manifest copy) without following a symlink
    and refusing anything above ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArchiveError(f"{path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ArchiveError(f"{path}: not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ArchiveError(f"{path}: larger than {limit} bytes")
    return data


def locate_set(dirs: Sequence[Path], catalog: Path | None = None, set_id: str | None = None) -> LocatedSet:
    """Find the volumes among ``dirs`` and the trusted manifest; refuses hostile manifests (ManifestError).
    Volumes of several sets need ``set_id`` to say which one; those of the other sets are then left out."""
    folders, whole_set, findings = candidate_folders(dirs)
    copies: dict[VolumeSource, bytes] = {}
    unreadable: dict[VolumeSource, str] = {}
    for folder in folders:
        try:
            copies[folder] = folder.read_small(layout.MANIFEST_NAME, layout.MAX_MANIFEST_BYTES)
        except ArchiveError as exc:
            copies[folder], unreadable[folder] = b"", str(exc)
    if catalog is not None:
        trusted_bytes = read_small_file(catalog, layout.MAX_MANIFEST_BYTES)
        source = str(catalog)
        manifest = parse_manifest(trusted_bytes, source)
    else:
        manifest, trusted_bytes, source = _majority_manifest(copies, unreadable, set_id)
    if set_id is not None and manifest.set_id != set_id:
        raise ArchiveError(f"{source} is the manifest of set {manifest.set_id}, not of set {set_id}, the one asked for")
    numbers: dict[int, VolumeSource] = {}
    for folder in folders:
        number = identify_volume(folder, manifest)
        if number is None and set_id is not None and _set_of(copies[folder]) not in (None, set_id):
            continue  # a volume of another set, left out as asked
        if number is None:
            findings.append(Finding(str(folder), f"is not a volume of set {manifest.set_id} ({manifest.name})"))
        elif number in numbers:
            findings.append(Finding(str(folder), f"is volume {number} again (already found at {numbers[number]})"))
        else:
            numbers[number] = folder
    return LocatedSet(manifest=manifest, manifest_bytes=trusted_bytes, manifest_source=source,
                      volumes=dict(sorted(numbers.items())), whole_set_expected=whole_set,
                      findings=tuple(findings))


def _set_of(data: bytes) -> str | None:
    try:
        return parse_manifest(data, "-").set_id if data else None
    except ManifestError:
        return None


def _majority_manifest(copies: dict[VolumeSource, bytes], unreadable: dict[VolumeSource, str],
                       set_id: str | None) -> tuple[SetManifest, bytes, str]:
    """The manifest copy most volumes hold that parses (of set ``set_id`` when given); refuses to choose
    between several sets; when no copy parses, says why for each."""
    counts = Counter(data for data in copies.values() if data)
    errors: dict[VolumeSource, str] = dict(unreadable)
    first_error: ManifestError | None = None
    sets: dict[str, tuple[SetManifest, bytes, str, list[VolumeSource]]] = {}
    for data, _ in counts.most_common():
        holders = [f for f, d in copies.items() if d == data]
        source = holders[0].shown(layout.MANIFEST_NAME)
        try:
            manifest = parse_manifest(data, source)
        except ManifestError as exc:
            first_error = first_error or exc
            errors.update({f: str(exc) for f in holders})
            continue
        if manifest.set_id not in sets:  # the first of a set is the copy most of its volumes hold
            sets[manifest.set_id] = (manifest, data, source, [])
        sets[manifest.set_id][3].extend(holders)
    if set_id is not None:
        if set_id in sets:
            return sets[set_id][:3]
        raise ArchiveError(f"no volume of set {set_id} here" + (f"; found {_list_sets(sets)}" if sets else ""))
    if len(sets) > 1:
        raise ArchiveError(f"volumes of {len(sets)} sets here: {_list_sets(sets)}",
                           remedy=Remedy.CHOOSE_SET)
    if sets:
        return next(iter(sets.values()))[:3]
    if first_error is not None and all(copies.values()):
        raise first_error  # every copy is there and refused: the refusal names the field
    for folder, data in copies.items():
        if not data and folder not in errors:
            errors[folder] = f"{folder.shown(layout.MANIFEST_NAME)}: empty file"
    raise ArchiveError("no readable set manifest: " + "; ".join(dict.fromkeys(errors[f] for f in copies)))


def _list_sets(sets: dict[str, tuple[SetManifest, bytes, str, list[VolumeSource]]]) -> str:
    return "; ".join(f"set {sid} ({m.name}) in {', '.join(sorted(str(f) for f in holders))}"
                     for sid, (m, _, _, holders) in sets.items())


def identify_volume(folder: VolumeSource, manifest: SetManifest) -> int | None:
    """Which volume of ``manifest`` ``folder`` is, or None when it is not one of them.

    By folder name when it is a volume folder name; else by its README.txt, which differs between volumes
    ("volume k of N") and whose sha256 the manifest lists; else by the part files it holds or lists.
    """
    parsed = layout.parse_volume_folder(folder.name)
    if parsed is not None:
        set_id, number = parsed
        if set_id == manifest.set_id and number <= manifest.volume_count:
            return number
        if set_id != manifest.set_id:
            return None
    by_readme = _by_readme(folder, manifest)
    if by_readme is not None:
        return by_readme
    owners = {f.path: v.number for v in manifest.volumes for f in v.files if layout.PART_RE.match(f.path)}
    for path, number in owners.items():
        if folder.exists(path):
            return number
    try:
        sums = folder.read_small(layout.SUMS_NAME, layout.MAX_MANIFEST_BYTES).decode("utf-8", "replace")
    except ArchiveError:
        return None
    for line in sums.splitlines():
        path = line[66:] if len(line) > 66 else ""
        if path in owners:
            return owners[path]
    return None


def _by_readme(folder: VolumeSource, manifest: SetManifest) -> int | None:
    try:
        digest = hashlib.sha256(folder.read_small(layout.README_NAME, 1 << 20)).hexdigest()
    except ArchiveError:
        return None
    found = [v.number for v in manifest.volumes for f in v.files if f.path == layout.README_NAME
             and f.sha256 == digest]
    return found[0] if len(found) == 1 else None
