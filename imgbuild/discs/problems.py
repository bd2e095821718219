"""What can be wrong with a set on disc, as records: verify finds them, parity's damage assessment and repair
use them (volume, file, bad blocks), the command line renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ProblemKind(StrEnum):
    MISSING = "missing"  # a file the manifest lists is not there
    SIZE = "size"  # a listed file of another size
    SHA256 = "sha256"  # a listed file whose content differs
    UNREADABLE = "unreadable"  # a listed file that could not be read to its end (I/O error)
    UNEXPECTED = "unexpected"  # a file or folder the manifest does not list, or an odd file type
    SYMLINK = "symlink"  # a symbolic link on a volume
    SUMS = "sums"  # SHA256SUMS says something else than the manifest
    MANIFEST_COPY = "manifest-copy"  # a volume's manifest copy differs from the trusted one
    VOLUME_MISSING = "volume-missing"  # a volume of a set folder is not there
    FOLDER = "folder"  # something about the folders given (not a volume of this set, given twice, a symlink)
    LAYER = "layer"  # deep: a layer does not decompress to its diff id
    LAYER_CONTENT = "layer-content"  # deep: a device node in a layer (when refused)


# The kinds that mean a listed file's bytes are missing or wrong (parity can rebuild them).
CONTENT_KINDS = frozenset({ProblemKind.MISSING, ProblemKind.SIZE, ProblemKind.SHA256, ProblemKind.UNREADABLE})
# The kinds that need only the volume's metadata (manifest copy, SHA256SUMS) written again.
METADATA_KINDS = frozenset({ProblemKind.SUMS, ProblemKind.MANIFEST_COPY})


@dataclass(frozen=True)
class Problem:
    """One bad thing, named: ``path`` as shown to the user (the volume's location and the file); ``volume``
    and ``file`` (volume-relative) when it concerns a volume or one of its files; ``blocks``, for a listed
    file whose content is damaged, the indexes of its bad blocks (None: not located, bad throughout)."""

    kind: ProblemKind
    path: str
    detail: str
    volume: int | None = None
    file: str | None = None
    blocks: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "path": self.path, "detail": self.detail, "volume": self.volume,
                "file": self.file, "blocks": list(self.blocks) if self.blocks is not None else None}
