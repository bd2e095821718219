"""The test Hub server is faithful: the real huggingface_hub client works against it, byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download  # noqa: E402
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError  # noqa: E402

from tests.support.hub_repos import RepoStore  # noqa: E402
from tests.support.hub_server import Fault, HubServer  # noqa: E402

pytestmark = pytest.mark.network_local
REPO_ROOT = Path(__file__).resolve().parent.parent

FILES = {
    "config.json": b'{"sample_rate": 44100}\n',
    "README.md": b"# demo\n",
    "checkpoints/model.pth": bytes(range(256)) * 1200,  # 300 KiB: an LFS file
    "checkpoints/decoder.pth": os.urandom(200_000),
}


@pytest.fixture()
def server():
    store = RepoStore(lfs_threshold=100_000)
    for path, data in FILES.items():
        store.add_file("org/voice", path, data)
    with HubServer(store, page_size=2) as srv:
        yield srv


def test_snapshot_download_gets_identical_files(server: HubServer, tmp_path: Path) -> None:
    folder = snapshot_download("org/voice", endpoint=server.endpoint, local_dir=tmp_path / "snap")
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*")
           if p.is_file() and ".cache" not in p.parts}
    assert got == FILES
    # The LFS files came through the CDN listener after a redirect.
    assert any(method == "GET" and path.startswith("/blobs/") for method, path, _, _ in server.requests)


def test_cache_dir_download_and_metadata(server: HubServer, tmp_path: Path) -> None:
    snapshot = snapshot_download("org/voice", endpoint=server.endpoint, cache_dir=tmp_path / "cache",
                                 allow_patterns=["checkpoints/*"])
    assert sorted(p.name for p in (Path(snapshot) / "checkpoints").iterdir()) == ["decoder.pth", "model.pth"]
    url = hf_hub_url("org/voice", "checkpoints/model.pth", endpoint=server.endpoint)
    meta = get_hf_file_metadata(url)
    assert meta.etag == hashlib.sha256(FILES["checkpoints/model.pth"]).hexdigest()
    assert meta.size == len(FILES["checkpoints/model.pth"])
    assert meta.commit_hash == HfApi(endpoint=server.endpoint).repo_info("org/voice").sha
    assert meta.location.startswith(server.cdn_base)


def test_tree_api_paginates_and_reports_lfs(server: HubServer) -> None:
    api = HfApi(endpoint=server.endpoint)
    entries = {e.path: e for e in api.list_repo_tree("org/voice", recursive=True)}
    assert set(FILES) <= set(entries) and "checkpoints" in entries
    model = entries["checkpoints/model.pth"]
    assert model.lfs.sha256 == hashlib.sha256(FILES["checkpoints/model.pth"]).hexdigest()
    assert model.lfs.size == len(FILES["checkpoints/model.pth"])
    config = entries["config.json"]
    assert config.lfs is None
    data = FILES["config.json"]
    assert config.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    top = [e.path for e in api.list_repo_tree("org/voice")]
    assert sorted(top) == ["README.md", "checkpoints", "config.json"]
    assert any("cursor=" in path for _, path, _, _ in server.requests)  # more than one page was fetched


def test_errors_map_to_the_clients_exceptions(server: HubServer) -> None:
    api = HfApi(endpoint=server.endpoint)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("org/voice", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("org/missing")
    with pytest.raises(EntryNotFoundError):
        get_hf_file_metadata(hf_hub_url("org/voice", "missing.bin", endpoint=server.endpoint))


def test_resolve_headers_and_ranges(server: HubServer) -> None:
    commit = HfApi(endpoint=server.endpoint).repo_info("org/voice").sha
    head = requests.head(f"{server.endpoint}/org/voice/resolve/main/checkpoints/model.pth", allow_redirects=False)
    data = FILES["checkpoints/model.pth"]
    assert head.status_code == 302
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == str(len(data))
    part = requests.get(head.headers["Location"], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    small = requests.get(f"{server.endpoint}/org/voice/resolve/{commit}/config.json", headers={"Range": "bytes=5-"})
    assert small.status_code == 206 and small.content == FILES["config.json"][5:]


def test_faults_and_byte_counter(server: HubServer) -> None:
    url = f"{server.endpoint}/org/voice/resolve/main/checkpoints/decoder.pth"
    data = FILES["checkpoints/decoder.pth"]
    server.add_fault(Fault("status500", path="checkpoints/decoder.pth"))
    assert requests.get(url).status_code == 500
    server.add_fault(Fault("corrupt", path="checkpoints/decoder.pth", after=10, length=4))
    bad = requests.get(url).content
    assert bad[:10] == data[:10] and bad[10:14] != data[10:14] and bad[14:] == data[14:]
    server.add_fault(Fault("ignore_range", path="checkpoints/decoder.pth"))
    assert requests.get(url, headers={"Range": "bytes=100-"}).status_code == 200
    server.add_fault(Fault("drop", path="checkpoints/decoder.pth", after=5000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url).content
    assert server.served("checkpoints/decoder.pth") == 2 * len(data) + 5000


def test_runs_as_a_script_over_a_folder(tmp_path: Path) -> None:
    repo = tmp_path / "org" / "voice"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_bytes(b"{}")
    (repo / "sub" / "model.onnx").write_bytes(os.urandom(150_000))
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.hub_server", "--root", str(tmp_path),
                             "--port", "0"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        endpoint = line.split(" at ")[1].split()[0]
        folder = Path(snapshot_download("org/voice", endpoint=endpoint, local_dir=tmp_path / "out"))
        assert (folder / "sub" / "model.onnx").read_bytes() == (repo / "sub" / "model.onnx").read_bytes()
        assert (folder / "config.json").read_bytes() == b"{}"
    finally:
        proc.terminate()
        proc.wait(10)
