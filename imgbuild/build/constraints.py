"""Reproducible Python dependencies: the versions a build resolved, recorded in the image and fed back.

Every layer built from imgbuild's python-base (and the fish-speech app layer) writes `pip list --local
--format=freeze --exclude-editable` of its venv to RECORD_PATH after installing. `imgbuild build
--constraints SOURCE` reads such a list, from a file or from an image, and hands it to the build as
imgbuild/pip/constraints.txt, which those Containerfiles give pip as `-c`: a rebuild then installs the very
versions of the recorded build, whatever the index offers by then, or fails naming what cannot be had.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from imgbuild.engine.connect import Engine
from imgbuild.foundation.errors import ConstraintsError

RECORD_PATH = "/opt/imgbuild/pip-installed.txt"  # in the image: what its venv holds
CONTEXT_DIR = "imgbuild/pip"  # in a build context: constraints.txt when given
CONTEXT_FILE = CONTEXT_DIR + "/constraints.txt"
MAX_BYTES = 1 << 20
# name==version as pip freeze writes it (PEP 503 names, PEP 440 versions with a local part such as +cpu).
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!+_-]+$")


@dataclass(frozen=True)
class Constraints:
    source: str  # the file or image the pins came from
    text: str  # the constraints file given to pip

    @property
    def pins(self) -> int:
        return sum(1 for line in self.text.splitlines() if _PIN.match(line.strip()))

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "pins": self.pins}


def parse(text: str, source: str) -> Constraints:
    """Check that every line is a `name==version` pin (or blank or a comment); errors name the line."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#") and not _PIN.match(line):
            raise ConstraintsError(source, f"line {number} is not a name==version pin: {raw!r}", line=number)
    constraints = Constraints(source, text if text.endswith("\n") or not text else text + "\n")
    if constraints.pins == 0:
        raise ConstraintsError(source, "no name==version pins in it")
    return constraints


def load_constraints(source: str, engine: Engine | None) -> Constraints:
    """Pins from a file (`pip freeze` format), or from RECORD_PATH inside an image (tag or id)."""
    path = Path(source)
    if path.is_file():
        try:
            data = path.read_bytes()[: MAX_BYTES + 1]
        except OSError as exc:
            raise ConstraintsError(source, f"cannot read it: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            raise ConstraintsError(source, f"larger than {MAX_BYTES} bytes: not a constraints file")
        return parse(data.decode("utf-8", errors="replace"), source)
    if engine is None:
        raise ConstraintsError(source, "not a file, and no engine to look for an image of that name")
    return parse(read_record(engine, source), source)


def read_record(engine: Engine, image: str) -> str:
    """RECORD_PATH of an image, read from a created (never started) container."""
    try:
        container = engine.api.create_container(image, command=["true"], network_disabled=True)
    except docker.errors.ImageNotFound:
        raise ConstraintsError(image, "neither a file nor an image on the engine") from None
    except docker.errors.APIError as exc:
        raise ConstraintsError(image, f"the engine cannot open the image: {exc.explanation or exc}") from None
    try:
        try:
            stream, _ = engine.api.get_archive(container["Id"], RECORD_PATH)
        except docker.errors.NotFound:
            raise ConstraintsError(image, f"the image has no {RECORD_PATH}",
                                   hint="it was built before imgbuild recorded versions, or not from "
                                        "imgbuild's python-base; pass a pip freeze file instead") from None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            if not member.isfile() or member.size > MAX_BYTES:
                raise ConstraintsError(image, f"{RECORD_PATH} in the image is not a small regular file")
            return tar.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
    finally:
        engine.api.remove_container(container["Id"], force=True)
