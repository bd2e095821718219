"""Where a set is damaged, to the 4 MiB block, and whether its parity volumes can rebuild it.

verify finds bad files (whole-file sha256, sizes, missing files and volumes) and, in the same read, their bad
blocks against the manifest's block hashes (imgbuild/discs/problems.py); ``assess`` takes those findings as
they are - it reads nothing - maps the blocks onto the volumes' payload streams (imgbuild/parity/volumes.py)
and checks every stretch of the streams: it can be rebuilt when at most M of the N + M volumes are bad there.
A scratch on one disc and a scratch on another are both repairable with one parity volume as long as they do
not overlap. repair rebuilds from the plan this module makes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgbuild.discs.problems import CONTENT_KINDS, METADATA_KINDS, Problem, ProblemKind
from imgbuild.parity.volumes import payload_files
from imgbuild.setformat.blockhash import block_count
from imgbuild.setformat.manifest import SetManifest, Volume


@dataclass(frozen=True)
class DamagedFile:
    volume: int
    path: str
    size: int
    bad_blocks: tuple[int, ...]
    block_count: int
    kind: ProblemKind
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "path": self.path, "size": self.size, "bad_blocks": list(self.bad_blocks),
                "block_count": self.block_count, "kind": str(self.kind), "reason": self.reason}


@dataclass(frozen=True)
class Stretch:
    """Bytes [start, end) of the payload streams where the volumes in ``bad`` are bad."""

    start: int
    end: int
    bad: frozenset[int]


@dataclass(frozen=True)
class Recovery:
    """What is damaged and whether (and from which volumes) it can be rebuilt."""

    data_volumes: int
    parity_volumes: int
    damaged: tuple[DamagedFile, ...]
    missing_volumes: tuple[int, ...]
    targets: tuple[int, ...]
    recoverable: bool
    sources: tuple[int, ...]
    unrecoverable: tuple[str, ...]
    stretches: tuple[Stretch, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"recoverable": self.recoverable, "data_volumes": self.data_volumes,
                "parity_volumes": self.parity_volumes, "missing_volumes": list(self.missing_volumes),
                "volumes_to_rebuild": list(self.targets), "sources": list(self.sources),
                "damaged_files": [d.to_json() for d in self.damaged], "unrecoverable": list(self.unrecoverable)}

    def summary(self) -> str:
        if not self.targets:
            return "nothing to repair"
        what = ", ".join(str(t) for t in self.targets)
        if self.recoverable:
            src = ", ".join(str(s) for s in self.sources) or "the manifest"
            return f"repairable: volume(s) {what} can be rebuilt from volume(s) {src} (imgbuild repair)"
        if self.parity_volumes == 0:
            return f"not repairable: the set has no parity volumes (damaged volume(s) {what})"
        return f"not repairable: {'; '.join(self.unrecoverable[:3])}"


def stream_length(volume: Volume) -> int:
    return sum(f.size for f in payload_files(volume))


def file_offsets(volume: Volume) -> dict[str, int]:
    """Where each payload file starts in its volume's payload stream."""
    offsets, pos = {}, 0
    for entry in payload_files(volume):
        offsets[entry.path] = pos
        pos += entry.size
    return offsets


def assess(manifest: SetManifest, present: Iterable[int], problems: Sequence[Problem]) -> Recovery:
    """Damage and recoverability from verify's ``problems``.

    ``present`` are the volume numbers found; every other volume counts as lost. A damaged file whose bad
    blocks verify did not locate (no block hashes, not read) counts as bad throughout.
    """
    present = set(present)
    missing = tuple(v.number for v in manifest.volumes if v.number not in present)
    damaged: dict[tuple[int, str], DamagedFile] = {}
    metadata_only: set[int] = set()
    for problem in problems:
        number = problem.volume
        if number is None or number not in present:
            continue
        if problem.kind in METADATA_KINDS:
            metadata_only.add(number)
            continue
        if problem.kind not in CONTENT_KINDS:
            continue
        entry = next((f for f in manifest.volume(number).files if f.path == problem.file), None)
        if entry is None:  # SHA256SUMS or the manifest copy is missing: written again from the manifest
            metadata_only.add(number)
            continue
        count = block_count(entry.size, manifest.block_size) if manifest.block_size else 1
        located = problem.blocks is not None and problem.kind is not ProblemKind.MISSING and manifest.block_size
        bad = problem.blocks if located and problem.blocks is not None else tuple(range(count))
        damaged[(number, entry.path)] = DamagedFile(number, entry.path, entry.size, bad, count, problem.kind,
                                                    f"{problem.kind}: {problem.detail}")
    ranges = _bad_ranges(manifest, missing, damaged.values())
    stretches = _sweep(ranges)
    targets = tuple(sorted(set(missing) | {d.volume for d in damaged.values()} | metadata_only))
    parity = manifest.parity
    n = parity.data_volumes if parity else len(manifest.volumes)
    m = parity.parity_volumes if parity else 0
    unrecoverable: list[str] = []
    sources: set[int] = set()
    for s in stretches:
        if len(s.bad) > m:
            vols = ", ".join(str(v) for v in sorted(s.bad))
            unrecoverable.append(f"bytes {s.start}-{s.end} of the payload are bad on volumes {vols} "
                                 f"(at most {m} can be rebuilt)")
        else:
            sources.update(pick_sources(manifest, s.bad))
    unregenerable = _unregenerable(manifest, damaged.values(), missing) if m == 0 else []
    unrecoverable += unregenerable
    return Recovery(data_volumes=n, parity_volumes=m, damaged=tuple(damaged.values()), missing_volumes=missing,
                    targets=targets, recoverable=not unrecoverable, sources=tuple(sorted(sources)),
                    unrecoverable=tuple(unrecoverable), stretches=tuple(stretches))


def _unregenerable(manifest: SetManifest, damaged: Iterable[DamagedFile], missing: Sequence[int]) -> list[str]:
    """Without parity only the manifest and SHA256SUMS can be written again."""
    out = [f"volume {v} is missing" for v in missing]
    out += [f"volume {d.volume}: {d.path}" for d in damaged]
    return out


def _bad_ranges(manifest: SetManifest, missing: Sequence[int],
                damaged: Iterable[DamagedFile]) -> list[tuple[int, int, int]]:
    """(start, end, volume) stream ranges that are lost."""
    ranges = []
    for number in missing:
        length = stream_length(manifest.volume(number))
        if length:
            ranges.append((0, length, number))
    offsets = {v.number: file_offsets(v) for v in manifest.volumes}
    block = manifest.block_size
    for d in damaged:
        start = offsets[d.volume].get(d.path)
        if start is None:  # not part of the payload (a parity volume's README.txt): generated again
            continue
        if not block:
            ranges.append((start, start + d.size, d.volume))
            continue
        for index in d.bad_blocks:
            lo = start + index * block
            ranges.append((lo, min(lo + block, start + d.size), d.volume))
    return ranges


def _sweep(ranges: list[tuple[int, int, int]]) -> list[Stretch]:
    """Cut the bad ranges into stretches with one set of bad volumes each (merging equal neighbours)."""
    points = sorted({p for lo, hi, _ in ranges for p in (lo, hi)})
    out: list[Stretch] = []
    for lo, hi in zip(points, points[1:]):
        bad = frozenset(v for a, b, v in ranges if a < hi and b > lo)
        if not bad:
            continue
        if out and out[-1].end == lo and out[-1].bad == bad:
            out[-1] = Stretch(out[-1].start, hi, bad)
        else:
            out.append(Stretch(lo, hi, bad))
    return out


def pick_sources(manifest: SetManifest, bad: frozenset[int]) -> list[int]:
    """N volumes that are good in a stretch, data volumes first (no decoding needed when they suffice).

    """
    parity = manifest.parity
    n = parity.data_volumes if parity else len(manifest.volumes)
    return [v.number for v in manifest.volumes if v.number not in bad][:n]


def describe(recovery: Recovery) -> list[str]:
    """Lines for a human: each damaged file with its bad blocks, then the verdict."""
    lines = []
    for d in recovery.damaged:
        if d.bad_blocks and d.kind is not ProblemKind.MISSING:
            blocks = ", ".join(str(b) for b in d.bad_blocks[:12]) + (" ..." if len(d.bad_blocks) > 12 else "")
            lines.append(f"volume {d.volume}: {d.path}: block(s) {blocks} of {d.block_count} damaged")
        else:
            lines.append(f"volume {d.volume}: {d.path}: damaged throughout")
    for number in recovery.missing_volumes:
        lines.append(f"volume {number}: missing")
    lines.append(recovery.summary())
    return lines
