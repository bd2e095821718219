"""Benchmark `imgbuild push` from a set's volumes against the manual way, into the same real registry.

The image is bench_archive.py's (bookworm + python3, the host's torch CPU wheel, generated weights in three
layers; >= 1.5 GB), archived onto BD-25 volumes. The registry is Debian's docker-registry on loopback with TLS
and htpasswd auth (tests/support/registry.py). Measured in one run, each round into fresh repositories:

  manual   cat each layer's parts | zstd -d > layerNNNN.tar beside the set's images/ files, tar them into a
           docker-archive, then skopeo copy docker-archive:... docker://REGISTRY/... (skopeo gzips the layers;
           its blob-info cache is emptied first, or it would mount the blobs an earlier round pushed)
  push     imgbuild push SET --registry REGISTRY/PREFIX (the zstd parts sent as they are, checked as read)

Goal: push wall time <= 0.5 x the manual way.

    python bench/bench_push.py [--engine podman|docker] [--rounds N] [--keep-image]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_archive  # noqa: E402  (the image builder of the archive benchmark)

from imgbuild.archive.archive import ArchiveOptions, archive  # noqa: E402
from imgbuild.engine.connect import connect  # noqa: E402
from imgbuild.fleet.push import PushOptions, push_set  # noqa: E402
from imgbuild.setformat import layout  # noqa: E402
from imgbuild.setformat.manifest import parse_manifest  # noqa: E402
from tests.support.registry import PASSWORD, USER, start_registry  # noqa: E402

TAG = "localhost/imgbuild-bench-push:1"
BASE_TAG = "localhost/imgbuild-bench-push-base:1"
# Where containers/image (skopeo) remembers which registry repositories hold a blob: root's and a user's.
BLOB_INFO_CACHES = [Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"),
                    Path.home() / ".local/share/containers/cache/blob-info-cache-v1.boltdb"]


def manual(set_folder: Path, work: Path, registry, repository: str) -> None:
    manifest = parse_manifest(next(set_folder.glob("*/" + layout.MANIFEST_NAME)).read_bytes(), "bench")
    folders = {v.number: set_folder / v.folder for v in manifest.volumes}
    tree = work / "docker-archive"
    shutil.copytree(folders[1] / layout.IMAGES_DIR, tree)
    for layer in manifest.layers:
        parts = " ".join(str(folders[p.volume] / p.path) for p in layer.parts)
        subprocess.run(f"cat {parts} | zstd -q -d > {tree / layout.layer_name(layer.number)}", shell=True, check=True)
    subprocess.run(["tar", "-C", str(tree), "-cf", str(work / "image.tar"), "."], check=True)
    for cache in BLOB_INFO_CACHES:
        cache.unlink(missing_ok=True)
    certs = work / "certs"
    certs.mkdir()
    shutil.copy(registry.ca, certs / "ca.crt")
    subprocess.run(["skopeo", "copy", "-q", "--dest-cert-dir", str(certs), "--dest-creds", f"{USER}:{PASSWORD}",
                    f"docker-archive:{work / 'image.tar'}", f"docker://{registry.host}/{repository}"], check=True)
    shutil.rmtree(tree)
    shutil.rmtree(certs)
    (work / "image.tar").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="podman", choices=["podman", "docker"])
    parser.add_argument("--host", default=None, help="engine URL; default IMGBUILD_TEST_<ENGINE>_HOST")
    parser.add_argument("--weights-mb", type=int, default=704)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep-image", action="store_true")
    args = parser.parse_args()
    if shutil.which("skopeo") is None or shutil.which("docker-registry") is None:
        sys.exit("needs skopeo and docker-registry (scripts/setup.sh installs them)")
    host = args.host or os.environ.get(f"IMGBUILD_TEST_{args.engine.upper()}_HOST")
    times: dict[str, list[float]] = {"manual": [], "push": []}
    with tempfile.TemporaryDirectory(prefix="bench-push-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        with connect(args.engine, host) as engine:
            bench_archive.build_image(engine, args.weights_mb, tag=TAG, base_tag=BASE_TAG, weights_layers=3)
            try:
                result = archive(engine, [TAG], ArchiveOptions(out=work / "set", media="bd25",
                                                               catalog=work / "catalog"))
            finally:
                if not args.keep_image:
                    engine.api.remove_image(TAG, force=True)
                    engine.api.remove_image(BASE_TAG, force=True)
        print(f"set: {result.uncompressed_bytes / 1e9:.2f} GB of layers, {result.compressed_bytes / 1e9:.2f} GB "
              f"on {len(result.volumes)} volume(s)", file=sys.stderr)
        registry = start_registry(work / "registry")
        auth = work / "registry" / "auth.json"
        os.environ["REGISTRY_AUTH_FILE"] = str(auth)
        try:
            for number in range(args.rounds):
                order = ["manual", "push"] if number % 2 == 0 else ["push", "manual"]
                for name in order:
                    prefix = f"r{number}{name}{secrets.token_hex(2)}"
                    start = time.monotonic()
                    if name == "manual":
                        manual(work / "set", work, registry, f"{prefix}/imgbuild-bench-push:1")
                    else:
                        pushed = push_set([work / "set"], PushOptions(registry=f"{registry.host}/{prefix}",
                                                                     ca_file=registry.ca))
                        if pushed.blobs_sent != result.layers:
                            sys.exit(f"push sent {pushed.blobs_sent} of {result.layers} layers: {pushed}")
                    times[name].append(time.monotonic() - start)
        finally:
            registry.stop()
    for name, values in times.items():
        print(f"{name:7s} best {min(values):7.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    per_round = statistics.median(p / m for p, m in zip(times["push"], times["manual"]))
    print(f"push / manual wall time = {min(times['push']) / min(times['manual']):.2f} best of each, "
          f"{per_round:.2f} median of rounds  (goal <= 0.5)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
