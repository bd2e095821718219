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
                                [--rate-mb 35] [--rounds 2] [--whole] [--set DIR]

With --set DIR the set is kept in DIR: archived there (from an image built on --engine, which is then removed
to free its disk space) when DIR does not exist yet, loaded from there when it does. A set of about 10 GB
takes three times its size of disk while it is built; made once on one engine, it can be loaded into the
other without building the image there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_archive  # noqa: E402  (the image builder of the archive benchmark)
from bench_restore import remove  # noqa: E402

from imgbuild.archive.archive import ArchiveOptions, archive  # noqa: E402
from imgbuild.discs.locate import locate_set  # noqa: E402
from imgbuild.engine.connect import connect  # noqa: E402

TAG = "localhost/imgbuild-bench-drive:1"
BASE_TAG = "localhost/imgbuild-bench-drive-base:1"
CGROUP = Path("/sys/fs/cgroup/blkio/imgbuild-bench-drive")


def run(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Timed:
    """A throttled command's wall time and how the drive was used in it: seconds before its first read,
    seconds in which it read nothing between its first and last read (pauses of at least PAUSE), and
    seconds from the last read to the command's end."""

    wall: float
    before: float
    pauses: list[tuple[float, float]]  # (seconds into the command, length)
    after: float

    @property
    def paused(self) -> float:
        return sum(length for _, length in self.pauses)


# The blkio throttle lets reads through in slices (0.1 s by default), so the drive is never idle for long
# while a reader keeps asking; a pause is this long at least.
PAUSE = 0.5


def sectors_read(device: str) -> int:
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[2])


def throttled(command: str, device: str) -> Timed:
    """``command`` run inside the throttled cgroup, with a cold page cache; ``device`` (e.g. loop3) is
    sampled every 20 ms for the sectors read from it."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append((time.monotonic(), sectors_read(device)))

    start_sectors = sectors_read(device)
    sampler = threading.Thread(target=sample)
    start = time.monotonic()
    sampler.start()
    try:
        subprocess.run(["sh", "-c", f"echo $$ > {CGROUP}/cgroup.procs && exec {command}"], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        end = time.monotonic()
        done.set()
        sampler.join()
    reads = [when for (when, count), (_, earlier) in zip(samples[1:], [(start, start_sectors)] + samples)
             if count > earlier]
    if not reads:
        return Timed(end - start, end - start, [], 0.0)
    pauses = [(a - start, b - a) for a, b in zip(reads, reads[1:]) if b - a >= PAUSE]
    return Timed(end - start, reads[0] - start, pauses, end - reads[-1])


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
    parser.add_argument("--set", type=Path, default=None,
                        help="keep the set in this folder: archive it there if it does not exist, else load it")
    args = parser.parse_args()
    if args.weights_layers < 1:
        parser.error("--weights-layers must be at least 1")
    if os.geteuid() != 0 or not (CGROUP.parent / "blkio.throttle.read_bps_device").exists():
        sys.exit("needs root and the cgroup v1 blkio controller at /sys/fs/cgroup/blkio")
    host = args.host or os.environ.get(f"IMGBUILD_TEST_{args.engine.upper()}_HOST")
    imgbuild = str(Path(sys.executable).with_name("imgbuild"))
    times: dict[str, list[Timed]] = {"read": [], "load": []} | ({"whole": []} if args.whole else {})
    with tempfile.TemporaryDirectory(prefix="bench-drive-", dir=os.environ.get("BENCH_TMP")) as tmp, \
            connect(args.engine, host) as engine:
        work = Path(tmp)
        app = f"-app{args.app_mb}" if args.app_mb else ""
        tag = TAG.replace(":1", f"-{args.weights_mb}x{args.weights_layers}{app}:1")
        set_dir = args.set or work / "set"
        if args.set is not None and args.set.exists():
            print(f"loading the set in {set_dir}", file=sys.stderr)
        else:
            bench_archive.build_image(engine, args.weights_mb, tag=tag, base_tag=BASE_TAG,
                                      weights_layers=args.weights_layers, app_mb=args.app_mb)
            archive(engine, [tag], ArchiveOptions(out=set_dir, media="bd25", catalog=work / "catalog"))
            if args.set is not None:
                for ref in (tag, BASE_TAG):
                    remove(engine, ref)
        manifest = locate_set([set_dir]).manifest
        images = [image.id for image in manifest.images]
        size = sum(f.stat().st_size for f in set_dir.rglob("*") if f.is_file())
        print(f"set: {size / 1e6:.0f} MB on {len(manifest.volumes)} volume(s); drive {args.rate_mb} MB/s",
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
            shutil.copytree(set_dir, mount / "set")
            run("mount", "-o", "remount,ro", str(mount))
            major_minor = run("lsblk", "-dno", "MAJ:MIN", loop).strip()
            device = Path(loop).name
            (CGROUP / "blkio.throttle.read_bps_device").write_text(f"{major_minor} {int(args.rate_mb * 1e6)}\n")
            files = " ".join(str(p) for p in sorted((mount / "set").rglob("*")) if p.is_file())
            engine_flags = f"--engine {engine.kind} --host {engine.host}"
            names = list(times)
            for number in range(args.rounds):
                for name in names[number % len(names):] + names[:number % len(names)]:
                    if name == "read":
                        times[name].append(throttled(f"cat {files}", device))
                    else:
                        for image in images:
                            remove(engine, image)
                        whole = " --whole-archive" if name == "whole" else ""
                        times[name].append(throttled(f"{imgbuild} load {mount / 'set'} {engine_flags}{whole} --json",
                                                     device))
        finally:
            subprocess.run(["umount", str(mount)], check=False)
            subprocess.run(["losetup", "-d", loop], check=False)
            CGROUP.rmdir()
            for ref in [*images, BASE_TAG]:
                remove(engine, ref)
    if not args.rounds:
        return
    walls = {name: [timed.wall for timed in values] for name, values in times.items()}
    for name, values in times.items():
        best = min(walls[name])
        print(f"{name:5s} best {best:7.2f} s = {size / best / 1e6:5.1f} MB/s  "
              f"(rounds: {', '.join(f'{v:.2f}' for v in walls[name])})")
        for number, timed in enumerate(values, 1):
            where = ", ".join(f"{length:.2f} s at {at:.1f} s" for at, length in timed.pauses)
            print(f"      round {number}: drive idle {timed.before:.2f} s before its first read, {timed.paused:.2f} s "
                  f"in pauses of {PAUSE} s or more{f' ({where})' if where else ''}, {timed.after:.2f} s after "
                  "its last read")
    for name in [n for n in times if n != "read"]:
        ratios = [load / read for load, read in zip(walls[name], walls["read"])]
        print(f"{name} / read wall time = {min(walls[name]) / min(walls['read']):.3f} best of each, "
              f"{sorted(ratios)[len(ratios) // 2]:.3f} median of rounds  (goal <= 1.05)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
