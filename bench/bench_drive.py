"""Benchmark `imgbuild load` from volumes on a drive as slow as an optical one (about 35 MB/s for a BD drive).

The set (bench_archive.py's image, archived onto BD-25 volumes) is copied onto an ext4 file system on a loop
device, and every read of that device by the measured commands is throttled by the cgroup v1 blkio
controller (blkio.throttle.read_bps_device). The page cache is dropped before each measurement. Measured in
one run, alternating:

  read   cat of every file of the set's volumes to /dev/null (the drive's own time: the floor)
  load   imgbuild load of the set into the engine (zstd and the engine's import overlapped with reading)
  whole  with --whole: imgbuild load --whole-archive (one upload, which the engine imports after its last byte)

Goal: load wall time <= 1.05 x read. Needs root (loop devices, mount, cgroups, drop_caches).

    python bench/bench_drive.py [--engine podman|docker] [--weights-mb 704] [--weights-layers 3] [--app-mb 0]
                                [--rate-mb 35] [--rounds 2] [--whole]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_archive  # noqa: E402  (the image builder of the archive benchmark)

from imgbuild.archive.archive import ArchiveOptions, archive  # noqa: E402
from imgbuild.engine.connect import connect  # noqa: E402

TAG = "localhost/imgbuild-bench-drive:1"
BASE_TAG = "localhost/imgbuild-bench-drive-base:1"
CGROUP = Path("/sys/fs/cgroup/blkio/imgbuild-bench-drive")


def run(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout.strip()


def throttled(command: str) -> float:
    """Wall time of ``command`` run inside the throttled cgroup, with a cold page cache."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    start = time.monotonic()
    subprocess.run(["sh", "-c", f"echo $$ > {CGROUP}/cgroup.procs && exec {command}"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="podman", choices=["podman", "docker"])
    parser.add_argument("--host", default=None, help="engine URL; default IMGBUILD_TEST_<ENGINE>_HOST")
    parser.add_argument("--weights-mb", type=int, default=704)
    parser.add_argument("--weights-layers", type=int, default=3,
                        help="how many layers (one file each) the weights are spread over")
    parser.add_argument("--app-mb", type=int, default=0,
                        help="a last layer of this many MB on top of the weights, as a recipe's app files")
    parser.add_argument("--rate-mb", type=float, default=35.0, help="read rate of the drive, MB/s")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--whole", action="store_true", help="also time load --whole-archive")
    args = parser.parse_args()
    if args.weights_layers < 1:
        parser.error("--weights-layers must be at least 1")
    if os.geteuid() != 0 or not (CGROUP.parent / "blkio.throttle.read_bps_device").exists():
        sys.exit("needs root and the cgroup v1 blkio controller at /sys/fs/cgroup/blkio")
    host = args.host or os.environ.get(f"IMGBUILD_TEST_{args.engine.upper()}_HOST")
    imgbuild = str(Path(sys.executable).with_name("imgbuild"))
    times: dict[str, list[float]] = {"read": [], "load": []} | ({"whole": []} if args.whole else {})
    with tempfile.TemporaryDirectory(prefix="bench-drive-", dir=os.environ.get("BENCH_TMP")) as tmp, \
            connect(args.engine, host) as engine:
        work = Path(tmp)
        app = f"-app{args.app_mb}" if args.app_mb else ""
        tag = TAG.replace(":1", f"-{args.weights_mb}x{args.weights_layers}{app}:1")
        bench_archive.build_image(engine, args.weights_mb, tag=tag, base_tag=BASE_TAG,
                                  weights_layers=args.weights_layers, app_mb=args.app_mb)
        result = archive(engine, [tag], ArchiveOptions(out=work / "set", media="bd25", catalog=work / "catalog"))
        size = sum(f.stat().st_size for f in (work / "set").rglob("*") if f.is_file())
        print(f"set: {size / 1e6:.0f} MB on {len(result.volumes)} volume(s); drive {args.rate_mb} MB/s",
              file=sys.stderr)
        disk, mount = work / "drive.img", work / "drive"
        with open(disk, "wb") as handle:
            handle.truncate(int(size * 1.2) + 64 * 1024 * 1024)
        run("mkfs.ext4", "-q", "-F", str(disk))
        loop = run("losetup", "--find", "--show", str(disk))
        mount.mkdir()
        CGROUP.mkdir(exist_ok=True)
        try:
            run("mount", loop, str(mount))
            shutil.copytree(work / "set", mount / "set")
            run("mount", "-o", "remount,ro", str(mount))
            major_minor = run("lsblk", "-dno", "MAJ:MIN", loop).strip()
            (CGROUP / "blkio.throttle.read_bps_device").write_text(f"{major_minor} {int(args.rate_mb * 1e6)}\n")
            files = " ".join(str(p) for p in sorted((mount / "set").rglob("*")) if p.is_file())
            engine_flags = f"--engine {engine.kind} --host {engine.host}"
            names = list(times)
            for number in range(args.rounds):
                for name in names[number % len(names):] + names[:number % len(names)]:
                    if name == "read":
                        times[name].append(throttled(f"cat {files}"))
                    else:
                        engine.api.remove_image(tag, force=True)
                        whole = " --whole-archive" if name == "whole" else ""
                        times[name].append(throttled(f"{imgbuild} load {mount / 'set'} {engine_flags}{whole} --json"))
        finally:
            subprocess.run(["umount", str(mount)], check=False)
            subprocess.run(["losetup", "-d", loop], check=False)
            CGROUP.rmdir()
            for ref in (tag, BASE_TAG):
                try:
                    engine.api.remove_image(ref, force=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
    for name, values in times.items():
        print(f"{name:5s} best {min(values):7.2f} s = {size / min(values) / 1e6:5.1f} MB/s  "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    for name in [n for n in times if n != "read"]:
        ratios = [load / read for load, read in zip(times[name], times["read"])]
        print(f"{name} / read wall time = {min(times[name]) / min(times['read']):.3f} best of each, "
              f"{sorted(ratios)[len(ratios) // 2]:.3f} median of rounds  (goal <= 1.05)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
