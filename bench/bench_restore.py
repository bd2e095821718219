"""Benchmark the restore side against the shell commands it replaces, on a realistic image (>= 1.5 GB).

The image is made like bench_archive.py's (its helpers: imgbuild's bootstrap, the host's torch CPU wheel
unpacked, generated float32 weights), under its own tag and with its own weights and a salt file, so its
layers are not shared with bench_archive's image: loading it really imports every layer but the base.

Measured in one run, on the same engine, on the same set written by imgbuild archive:

  sha256sum -c    `sha256sum -c SHA256SUMS` in every volume folder, one after another
  verify          imgbuild verify of the set (reader thread + hasher thread, manifest and SHA256SUMS checks)
  zstd | load     `zstd -dc IMAGE.tar.zst | ENGINE load` of the same image saved and compressed beforehand
  load            imgbuild load of the set (parts checked, zstd, docker-archive built on the fly, load API)

The page cache is warmed first, so both sides of each pair read from memory. The image is removed from the
engine before each load. Goals: verify >= 4x faster than sha256sum -c; load <= 1.0x the time of
zstd -dc | ENGINE load.

    python bench/bench_restore.py [--engine podman|docker] [--host URL] [--rounds N] [--keep-image]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_archive import build_image, engine_cli  # noqa: E402  (shared image helpers)

from imgbuild.archive.archive import ArchiveOptions, archive  # noqa: E402
from imgbuild.engine.connect import Engine, connect  # noqa: E402
from imgbuild.engine.images import find_image  # noqa: E402
from imgbuild.restore.load import load_set  # noqa: E402
from imgbuild.restore.verify import verify_set  # noqa: E402

TAG = "localhost/imgbuild-bench-restore:1"


def make_image(engine: Engine, weights_mb: int, wheel: bool = True) -> None:
    """bench_archive's image recipe with other weights (seed 1) and a salt file: layers of its own."""
    build_image(engine, weights_mb, tag=TAG, seed=1, salt="salt: this layer is not bench_archive's\n", wheel=wheel)


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def sha256sum_volumes(volumes: list[Path]) -> None:
    for volume in volumes:
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=volume, check=True)


def verify_with_imgbuild(folder: Path) -> None:
    report = verify_set([folder])
    if not report.ok:
        sys.exit(f"verify found problems: {report.problems}")


def remove(engine: Engine, ref: str) -> None:
    if find_image(engine, ref):
        engine.api.remove_image(ref, force=True)


def shell_load(engine: Engine, compressed: Path) -> None:
    cli, env = engine_cli(engine)
    subprocess.run(f"zstd -q -dc {compressed} | {cli} load", shell=True, check=True, env=env,
                   stdout=subprocess.DEVNULL)


def imgbuild_load(engine: Engine, folder: Path) -> None:
    result = load_set(engine, [folder])
    if [i.status for i in result.images] != ["loaded"]:
        sys.exit(f"load did not load the image: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="podman", choices=["podman", "docker"])
    parser.add_argument("--host", default=None, help="engine URL; default IMGBUILD_TEST_<ENGINE>_HOST")
    parser.add_argument("--weights-mb", type=int, default=704)
    parser.add_argument("--media", default="bd25")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep-image", action="store_true", help="keep the image for the next run")
    parser.add_argument("--no-wheel", action="store_true", help="leave torch out: a small image, a quick run")
    args = parser.parse_args()
    host = args.host or os.environ.get(f"IMGBUILD_TEST_{args.engine.upper()}_HOST")
    with connect(args.engine, host) as engine:
        make_image(engine, args.weights_mb, wheel=not args.no_wheel)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-restore-", dir=os.environ.get("BENCH_TMP")) as tmp:
                measure(engine, Path(tmp), args.media, args.rounds)
        finally:
            if not args.keep_image:
                remove(engine, TAG)


def measure(engine: Engine, work: Path, media: str, rounds: int) -> None:
    size = int(engine.api.inspect_image(TAG)["Size"])
    print(f"engine {engine.kind} {engine.version}; image {TAG}: {size / 1e9:.2f} GB", file=sys.stderr)
    folder = work / "set"
    result = archive(engine, [TAG], ArchiveOptions(out=folder, media=media, catalog=work / "catalog"))
    volumes = [Path(v) for v in result.volumes]
    compressed = work / "image.tar.zst"
    cli, env = engine_cli(engine)
    subprocess.run(f"{cli} save {TAG} | zstd -q -T0 -3 -o {compressed}", shell=True, check=True, env=env)
    set_bytes = sum(p.stat().st_size for v in volumes for p in v.rglob("*") if p.is_file())
    print(f"set: {len(volumes)} volumes, {set_bytes / 1e9:.2f} GB; {TAG} saved + zstd: "
          f"{compressed.stat().st_size / 1e9:.2f} GB", file=sys.stderr)
    subprocess.run(f"cat {compressed} > /dev/null", shell=True, check=True)
    times: dict[str, list[float]] = {"sha256sum -c": [], "verify": [], "zstd | load": [], "load": []}
    for round_number in range(rounds):
        # Alternate which side goes first, so neither always gets the warmer machine.
        pairs = [("sha256sum -c", lambda: sha256sum_volumes(volumes)), ("verify", lambda: verify_with_imgbuild(folder))]
        for name, fn in pairs if round_number % 2 == 0 else reversed(pairs):
            times[name].append(timed(fn))
        loads = [("zstd | load", lambda: shell_load(engine, compressed)), ("load", lambda: imgbuild_load(engine, folder))]
        for name, fn in loads if round_number % 2 == 0 else reversed(loads):
            # by tag: in Docker's containerd image store a loaded image's id is not the built one's
            remove(engine, TAG)
            times[name].append(timed(fn))
    best = {name: min(values) for name, values in times.items()}
    verify_ratios = [s / v for s, v in zip(times["sha256sum -c"], times["verify"])]
    load_ratios = [mine / shell for mine, shell in zip(times["load"], times["zstd | load"])]
    for name, seconds in best.items():
        print(f"{name:13s} {seconds:7.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"verify: {set_bytes / best['verify'] / 1e6:.0f} MB/s; sha256sum -c: "
          f"{set_bytes / best['sha256sum -c'] / 1e6:.0f} MB/s")
    print(f"verify speed-up over sha256sum -c = {best['sha256sum -c'] / best['verify']:.2f}x best of each, "
          f"{statistics.median(verify_ratios):.2f}x median of rounds  (goal >= 4)")
    print(f"load wall time / (zstd -dc | {engine.kind} load) = {best['load'] / best['zstd | load']:.2f} best of each, "
          f"{statistics.median(load_ratios):.2f} median of rounds  (goal <= 1.0)")
    print(f"load average: {os.getloadavg()[0]:.1f} (this machine is shared; ratios from a quiet machine are steadier)")


if __name__ == "__main__":
    main()
