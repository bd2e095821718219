"""Benchmark `imgbuild archive` against the shell pipeline it replaces, on a realistic image (>= 1.5 GB).

The image: imgbuild's bootstrap (Debian bookworm + python3), the host's local torch CPU wheel unpacked into
site-packages, and generated float32 weights files, each in a layer of its own (five layers in all).
Measured in one run, on the same engine, the contenders taking turns in a different order each round:

  raw save     the engine's save API read to /dev/null (uncompressed, no hashing)
  baseline     ENGINE save IMG | zstd -T0 -3 | split -b 2047m, then sha256sum of the parts
  archive      imgbuild archive --media bd25 --source storage (layers from the engine's storage: dedup,
               zstd -3 on all cores, parts, sha256 of layers and parts as written)
  archive api  the same with --source api (layers through the engine's save API)

Goals: archive wall time <= 0.6 x baseline; archive throughput >= 1.5 x raw save.

What bounds the throughput is printed after the ratios, from the same run: the CPU time the archive used
(all its threads; with --source api the engine's CPU for the save is not in it), and the CPU time of the
work the set format asks for alone (zstd -3 of every layer, and SHA-256 of the layer and twice of its
compressed bytes: the part's hash and its block hashes), timed on the layers held in memory, best of two.
Divided by the number of CPUs, the first is the archive's time if its work kept every CPU busy throughout,
the second the same for the format's work alone, with this zstd at this level.

    python bench/bench_archive.py [--engine podman|docker] [--host URL] [--keep-image] [--rounds N]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import zstandard

from imgbuild.archive.archive import ArchiveOptions, archive
from imgbuild.archive.storage_source import StorageUnavailable, open_store
from imgbuild.build.bootstrap import BootstrapOptions, bootstrap_image
from imgbuild.engine.connect import Engine, connect
from imgbuild.engine.images import find_image
from imgbuild.foundation import hostconfig
from imgbuild.recipe.model import Bootstrap

TAG = "localhost/imgbuild-bench-archive:1"
BASE_TAG = "localhost/imgbuild-bench-archive-base:1"
SITE = "/usr/lib/python3/dist-packages"
LEVEL = ArchiveOptions.level  # archive's default zstd level
CHUNK = 4 * 1024 * 1024


def torch_wheel() -> Path:
    for folder in hostconfig.pip_config().find_links:
        found = sorted(glob.glob(os.path.join(folder.removeprefix("file://"), "torch-*.whl")))
        if found:
            return Path(found[-1])
    sys.exit("no torch wheel in pip's find-links folders (pip config list)")


def build_image(engine: Engine, weights_mb: int, *, tag: str = TAG, base_tag: str = BASE_TAG, seed: int = 0,
                salt: str | None = None, weights_layers: int = 1, wheel: bool = True, app_mb: int = 0) -> None:
    """The benchmark image: bookworm + python3, the torch wheel unpacked, ``weights_mb`` of float32 weights
    in ``weights_layers`` files, one layer each, and with ``app_mb`` a last layer of that many MB of app
    files on top (a recipe's app code, voices and serve script come last, after its checkpoints).

    Other benchmarks pass their own tags, a weights ``seed`` and a ``salt`` file when their layers must not
    be shared with this benchmark's image. ``wheel=False`` leaves torch out (a small image for quick runs).
    """
    if find_image(engine, tag):
        print(f"reusing {tag}", file=sys.stderr)
        return
    mirror = hostconfig.apt_archive_url()
    if not mirror:
        sys.exit("this host has no apt sources to take a Debian mirror from")
    if not find_image(engine, base_tag):
        bootstrap_image(engine, Bootstrap(suite="bookworm", include=["python3"]),
                        BootstrapOptions(mirror=mirror, tag=base_tag))
    with tempfile.TemporaryDirectory(prefix="bench-image-ctx-", dir=os.environ.get("BENCH_TMP")) as ctx:
        context = Path(ctx)
        print("unpacking the torch wheel and generating weights ...", file=sys.stderr)
        (context / "site").mkdir()
        if wheel:
            with zipfile.ZipFile(torch_wheel()) as unpacked:
                unpacked.extractall(context / "site")
        if salt is not None:
            (context / "site" / "imgbuild-bench-salt.txt").write_text(salt)
        rng = np.random.default_rng(seed)
        names = ["weights.bin"] if weights_layers == 1 else [f"weights-{n}.bin" for n in range(weights_layers)]
        for name in names:
            with open(context / name, "wb") as fh:
                for _ in range(weights_mb // 16 // len(names)):  # trained weights look like small normal values
                    fh.write((rng.standard_normal(4 * 1024 * 1024, dtype=np.float32) * 0.02).tobytes())
        app = ""
        if app_mb:
            (context / "app").mkdir()
            for n in range(app_mb):
                (context / "app" / f"part-{n}.bin").write_bytes(rng.bytes(1 << 20))
            app = "COPY app/ /app/\n"
        (context / "Containerfile").write_text(
            f"FROM {base_tag}\nCOPY site/ {SITE}/\n" + "".join(f"COPY {name} /models/{name}\n" for name in names)
            + app)
        print(f"building {tag} ...", file=sys.stderr)
        for line in engine.api.build(path=ctx, dockerfile="Containerfile", tag=tag, rm=True, decode=True):
            if "error" in line:
                sys.exit(f"building {tag} failed: {line['error']}")
            if line.get("stream", "").strip():
                print(line["stream"].rstrip(), file=sys.stderr)


def engine_cli(engine: Engine) -> tuple[str, dict[str, str]]:
    env = dict(os.environ)
    if engine.kind == "podman":
        return f"podman --url {engine.host}", env
    env["DOCKER_HOST"] = engine.host
    return "docker", env


def timed(fn) -> tuple[float, object]:
    start = time.monotonic()
    value = fn()
    return time.monotonic() - start, value


def save_response(engine: Engine):
    """The engine's save API answering for the benchmark image (a streamed HTTP response)."""
    api = engine.api
    response = api._get(api._url("/images/get"), params={"names": [TAG]}, stream=True)
    api._raise_for_status(response)
    return response


def raw_save(engine: Engine) -> tuple[int, float]:
    """(bytes, seconds to the first byte): Podman's API writes the whole archive to a temporary file
    before it sends the first byte, so no reader of its save stream can overlap with that part."""
    start = time.monotonic()
    response = save_response(engine)
    total, first = 0, None
    for chunk in response.iter_content(1024 * 1024):
        if first is None:
            first = time.monotonic() - start
        total += len(chunk)
    return total, first or 0.0


def baseline(engine: Engine, work: Path) -> None:
    cli, env = engine_cli(engine)
    parts = work / "baseline"
    parts.mkdir()
    subprocess.run(f"{cli} save {TAG} | zstd -q -T0 -3 | split -b 2047m - {parts}/part.", shell=True,
                   check=True, env=env)
    subprocess.run(f"sha256sum {parts}/part.* > {parts}/SHA256SUMS", shell=True, check=True)
    shutil.rmtree(parts)


def run_archive(engine: Engine, work: Path, source: str, cpu: list[float]) -> int:
    out = work / "archive"
    started = time.process_time()
    result = archive(engine, [TAG], ArchiveOptions(out=out, media="bd25", catalog=work / "catalog", source=source))
    cpu.append(time.process_time() - started)
    shutil.rmtree(out)
    shutil.rmtree(work / "catalog")
    if result.layer_source != source:
        sys.exit(f"archive read its layers from {result.layer_source}, not {source}: {result.fallbacks}")
    return result.uncompressed_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="podman", choices=["podman", "docker"])
    parser.add_argument("--host", default=None, help="engine URL; default IMGBUILD_TEST_<ENGINE>_HOST")
    parser.add_argument("--weights-mb", type=int, default=704)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep-image", action="store_true", help="keep the image for the next run")
    parser.add_argument("--no-wheel", action="store_true", help="leave torch out: a small image, a quick run")
    args = parser.parse_args()
    host = args.host or os.environ.get(f"IMGBUILD_TEST_{args.engine.upper()}_HOST")
    with connect(args.engine, host) as engine:
        build_image(engine, args.weights_mb, weights_layers=3, wheel=not args.no_wheel)
        try:
            measure(engine, args.rounds)
        finally:
            if not args.keep_image:
                engine.api.remove_image(TAG, force=True)
                engine.api.remove_image(BASE_TAG, force=True)


def measure(engine: Engine, rounds: int) -> None:
    size = int(engine.api.inspect_image(TAG)["Size"])
    layers = len(engine.api.inspect_image(TAG)["RootFS"]["Layers"])
    print(f"engine {engine.kind} {engine.version}; image {TAG}: {size / 1e9:.2f} GB in {layers} layers",
          file=sys.stderr)
    raw_save(engine)  # warm the page cache for every contender alike
    times: dict[str, list[float]] = {"raw save": [], "baseline": [], "archive": [], "archive api": []}
    try:
        open_store(engine)
    except StorageUnavailable as exc:  # e.g. Docker's containerd image store: the save API is the only way
        print(f"archive --source storage: not measured, {exc.reason}", file=sys.stderr)
        del times["archive"]
    headline = "archive" if "archive" in times else "archive api"
    sizes = {"raw save": 0, "archive": 0}
    cpu: dict[str, list[float]] = {"archive": [], "archive api": []}
    with tempfile.TemporaryDirectory(prefix="bench-archive-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)

        def contender(name: str) -> None:
            if name == "raw save":
                seconds, (sizes[name], first_byte) = timed(lambda: raw_save(engine))
                print(f"raw save: first byte after {first_byte:.2f} s of {seconds:.2f} s", file=sys.stderr)
            elif name == "baseline":
                seconds, _ = timed(lambda: baseline(engine, work))
            else:
                source = "api" if name == "archive api" else "storage"
                seconds, sizes["archive"] = timed(lambda: run_archive(engine, work, source, cpu[name]))
            times[name].append(seconds)

        names = list(times)
        for number in range(rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            for name in order:
                contender(name)
        format_cpu = format_work_cpu(engine, work)
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:11s} {seconds:7.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in times[name])})")
    saved, archived = sizes["raw save"], sizes["archive"]
    save_rate = saved / best["raw save"] / 1e6
    archive_rate = archived / best[headline] / 1e6
    print(f"raw save    {save_rate:7.1f} MB/s of save stream; archive {archive_rate:7.1f} MB/s of layers")
    # Per round, the contenders ran back to back: on a shared machine these ratios vary less than the times.
    def ratio(top: str, bottom: str) -> str:
        per_round = statistics.median(a / b for a, b in zip(times[top], times[bottom]))
        return f"{best[top] / best[bottom]:.2f} best of each, {per_round:.2f} median of rounds"

    throughput = [(archived / a) / (saved / r) for a, r in zip(times[headline], times["raw save"])]
    print(f"{headline} wall time / baseline wall time = {ratio(headline, 'baseline')}  (goal <= 0.6)")
    print(f"{headline} throughput / raw save throughput = {archive_rate / save_rate:.2f} best of each, "
          f"{statistics.median(throughput):.2f} median of rounds  (goal >= 1.5)")
    if headline == "archive":
        print(f"archive --source storage / --source api wall time = {ratio('archive', 'archive api')}")
    print(f"archive --source api / baseline wall time = {ratio('archive api', 'baseline')}")
    cpus = os.cpu_count() or 1
    best_save = best["raw save"]
    fastest = times[headline].index(best[headline])
    used = cpu[headline][fastest]
    print(f"{headline} used {used:.2f} s of CPU in {best[headline]:.2f} s ({used / best[headline]:.0%} of one "
          f"CPU, {cpus} CPUs): with every CPU busy throughout it would take {used / cpus:.2f} s, throughput / "
          f"raw save <= {best_save / (used / cpus) * archived / saved:.2f}")
    if format_cpu:
        print(f"the format's work alone (zstd -{LEVEL} and 3 SHA-256 passes, layers in memory): {format_cpu:.2f} s "
              f"of CPU, at least {format_cpu / cpus:.2f} s on {cpus} CPUs: throughput / raw save <= "
              f"{best_save / (format_cpu / cpus) * archived / saved:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {cpus} CPUs")


def format_work_cpu(engine: Engine, work: Path) -> float:
    """CPU seconds of what the set format asks for, done alone on each layer held in memory: zstd at the
    archive's level (the cheaper of zstd's one-thread and multi-thread modes, layer by layer), the layer's
    SHA-256 and two SHA-256 passes over the compressed bytes (the part's hash and its block hashes); each
    the best of two tries."""
    saved = work / "save.tar"
    with open(saved, "wb") as out:
        for chunk in save_response(engine).iter_content(CHUNK):
            out.write(chunk)
    total = 0.0
    with tarfile.open(saved) as tar:
        # Every layer the save's manifest names, once (Podman also links <id>/layer.tar to <diff id>.tar;
        # extractfile follows such links).
        names = {name for image in json.load(tar.extractfile("manifest.json")) for name in image["Layers"]}
        for name in sorted(names):
            data = tar.extractfile(name).read()
            view = memoryview(data)
            costs = []
            for threads in (0, -1, 0, -1):
                params = zstandard.ZstdCompressionParameters.from_level(LEVEL, threads=threads, write_checksum=1)
                started = time.process_time()
                stream = zstandard.ZstdCompressor(compression_params=params).compressobj(size=len(data))
                compressed = [stream.compress(view[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
                compressed.append(stream.flush())
                costs.append(time.process_time() - started)
            hashing = []
            for _ in range(2):
                started = time.process_time()
                hashlib.sha256(view).digest()
                for _ in range(2):
                    digest = hashlib.sha256()
                    for piece in compressed:
                        digest.update(piece)
                hashing.append(time.process_time() - started)
            total += min(costs) + min(hashing)
    saved.unlink()
    return total


if __name__ == "__main__":
    main()
