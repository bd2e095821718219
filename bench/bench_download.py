"""Benchmark: imgbuild's checkpoint download vs huggingface_hub's snapshot_download, same local Hub server.

Measures, in the same run:
  1. throughput of a fresh download of one big LFS file (median of --repeat runs each, ratio to baseline);
  2. bytes fetched again after the download process is killed (SIGKILL) at 50 %, for both tools.

    python bench/bench_download.py [--size-mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # a local endpoint is a mirror: no Xet
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from huggingface_hub import snapshot_download  # noqa: E402

from imgbuild.checkpoints.download import DownloadOptions, download_checkpoints  # noqa: E402
from imgbuild.checkpoints.transfer import TransferOptions  # noqa: E402
from tests.support.hub_repos import RepoStore  # noqa: E402
from tests.support.hub_server import Fault, HubServer  # noqa: E402
from tests.support.recipes import load, write_recipe  # noqa: E402

IMGBUILD_CHILD = """
import sys
from pathlib import Path
from imgbuild.checkpoints.download import DownloadOptions, download_checkpoints
from tests.support.recipes import load
download_checkpoints(load(Path(sys.argv[1])), DownloadOptions(cache_dir=Path(sys.argv[2])))
"""
HF_CHILD = """
import sys
from huggingface_hub import snapshot_download
snapshot_download("org/big", endpoint=sys.argv[1], cache_dir=sys.argv[2])
"""


def make_file(path: Path, size: int) -> None:
    rng = random.Random(1234)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 << 20)
            fh.write(rng.randbytes(n))
            left -= n


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput(server: HubServer, recipe: Path, work: Path, size: int, repeat: int) -> tuple[float, float, float]:
    ours, ranged, theirs = [], [], []
    for i in range(repeat):
        cache = work / f"ours-{i}"
        ours.append(size / timed(lambda: download_checkpoints(load(recipe), DownloadOptions(cache_dir=cache))))
        shutil.rmtree(cache)
        options = DownloadOptions(cache_dir=cache, transfer=TransferOptions(connections=4))
        ranged.append(size / timed(lambda: download_checkpoints(load(recipe), options)))
        shutil.rmtree(cache)
        cache = work / f"hf-{i}"
        theirs.append(size / timed(lambda: snapshot_download("org/big", endpoint=server.endpoint, cache_dir=cache)))
        shutil.rmtree(cache)
    return statistics.median(ours), statistics.median(ranged), statistics.median(theirs)


def limited(source: Path, work: Path, limit_mb: float, size_mb: int) -> str:
    """A server that limits each connection (as some CDNs and proxies do): one stream vs 4 ranges."""
    size = size_mb * 1024 * 1024
    small = work / "limited.pth"
    with open(source, "rb") as src, open(small, "wb") as dst:
        dst.write(src.read(size))
    store = RepoStore()
    store.add_file("org/big", "model.pth", source=small)
    mb = 1024 * 1024
    with HubServer(store, rate_per_connection=limit_mb * mb) as server:
        recipe = write_recipe(work / "limited", [{"repo": "org/big", "dest": "m"}], mirror=server.endpoint)
        rates = {}
        for name, connections in (("one stream", 1), ("4 ranges", 4)):
            options = DownloadOptions(cache_dir=work / f"lim-{connections}",
                                      transfer=TransferOptions(connections=connections, range_min_size=4 * mb))
            rates[name] = size / timed(lambda: download_checkpoints(load(recipe), options)) / mb
        cache = work / "lim-hf"
        rates["snapshot_download"] = size / timed(
            lambda: snapshot_download("org/big", endpoint=server.endpoint, cache_dir=cache)) / mb
    return (f"server limits each connection to {limit_mb:.0f} MiB/s, {size_mb} MiB file: " +
            ", ".join(f"{k} {v:.1f} MiB/s" for k, v in rates.items()) +
            f"; 4 ranges / snapshot_download = {rates['4 ranges'] / rates['snapshot_download']:.2f}")


def refetched_after_kill(server: HubServer, child: list[str], size: int, rerun) -> int:
    """Run `child`, kill it once the server has sent half the file, rerun in-process; bytes sent twice."""
    server.reset_counters()
    server.released.clear()
    server.add_fault(Fault("stall", path="model.pth", after=size // 2))
    proc = subprocess.Popen(child, cwd=ROOT)
    deadline = time.monotonic() + 120
    while server.served("model.pth") < size // 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the child never reached 50 %")
        time.sleep(0.05)
    time.sleep(1.0)  # let the child write what it has received
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.release()
    first = server.served("model.pth")
    server.reset_counters()
    rerun()
    return first + server.served("model.pth") - size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit-mb", type=float, default=8.0, help="per-connection limit of the second run")
    parser.add_argument("--limited-size-mb", type=int, default=48)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        source = work / "model.pth"
        make_file(source, size)
        store = RepoStore()
        store.add_file("org/big", "model.pth", source=source)
        with HubServer(store) as server:
            recipe = write_recipe(work / "recipe", [{"repo": "org/big", "dest": "m"}], mirror=server.endpoint)
            ours, ranged, theirs = throughput(server, recipe, work, size, args.repeat)
            mb = 1024 * 1024
            print(f"file: {args.size_mb} MiB over 127.0.0.1 (Hub listener + CDN listener, 302 redirect)")
            print(f"throughput imgbuild download : {ours / mb:8.1f} MiB/s (median of {args.repeat})")
            print(f"throughput imgbuild, 4 ranges: {ranged / mb:8.1f} MiB/s (median of {args.repeat})")
            print(f"throughput snapshot_download : {theirs / mb:8.1f} MiB/s (median of {args.repeat})")
            print(f"ratio imgbuild / snapshot_download: {ours / theirs:.2f} (4 ranges: {ranged / theirs:.2f})")
            print(limited(source, work, args.limit_mb, args.limited_size_mb))
            cache = work / "kill-ours"
            ours_again = refetched_after_kill(
                server, [sys.executable, "-c", IMGBUILD_CHILD, str(recipe), str(cache)], size,
                lambda: download_checkpoints(load(recipe), DownloadOptions(cache_dir=cache)))
            cache = work / "kill-hf"
            hf_again = refetched_after_kill(
                server, [sys.executable, "-c", HF_CHILD, server.endpoint, str(cache)], size,
                lambda: snapshot_download("org/big", endpoint=server.endpoint, cache_dir=cache))
            for name, again in (("imgbuild download", ours_again), ("snapshot_download", hf_again)):
                print(f"killed at 50 %, {name:18}: fetched again {again / mb:7.1f} MiB "
                      f"= {100 * again / size:5.1f} % of the file, {100 * again / (size // 2):5.1f} % of what it had")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
