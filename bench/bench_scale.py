"""Scale test: archive, verify and load back a large image (default 10.5 GB in 12 layers) and a small one
(1.5 GB), and how each figure grows with the image size.

The images: bench_archive.py's (imgbuild's bootstrap, the host's torch CPU wheel unpacked, generated float32
weights), built in steps of two weights layers of at most 0.75 GB each, plus, when the image is large enough
for it, two layers of real Python packages (the files of this interpreter's stdlib and site-packages, copied
again as often as needed), so that about 60% of every size is compressible library code and the rest
incompressible weights, like a real model image. Each image is built on one engine, then measured through
the imgbuild CLI, each step a child process:

  archive  imgbuild archive IMAGE --media bd25 --parity 1 --iso   (build engine; data + parity volume + ISOs)
  verify   imgbuild verify SET
  load     imgbuild load SET                                      (into the OTHER engine)

Per step: wall time; CPU time of the imgbuild process (wall time growing faster than it points at the engine
or the disks); peak RSS of the imgbuild process (VmHWM polled from /proc, and wait4's ru_maxrss, which also
covers the children it waited for, such as xorriso); peak extra disk on the work folder's filesystem (statvfs
polled every 0.2 s, against the free space just before the step: engine storage, the set and the engine's
upload buffer are all counted when they share that filesystem); the 1-minute load average. The table puts each
figure of the largest size over that of the smallest next to the size ratio: linear growth means the two match
(the goal), and peak RSS should stay under 1 GiB whatever the size.

Disk: the image, its set and the set's ISO images (up to 5x the image size), then, with the built image
removed before the load (it goes to the other engine), a load that buffers the upload and imports it (about
2x the image more). With --load-from auto, when the free space left after the archive is short of that, the
volume folders are deleted and the set is loaded from its ISO images instead (said in the output).

    export IMGBUILD_TEST_PODMAN_HOST=... IMGBUILD_TEST_DOCKER_HOST=...   (scripts/engines.sh start both)
    python bench/bench_scale.py [--sizes 1.5,10.5] [--build-engine podman|docker] [--work DIR]
                                [--load-from auto|folders|isos] [--no-wheel] [--keep-images]

Run it from the repository root (or with the repository on PYTHONPATH): the children run `python -m imgbuild`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_archive  # noqa: E402  (its image helpers, and the engine connection it uses)
from bench_archive import build_image, engine_cli, torch_wheel  # noqa: E402

GB = 1e9
MIB = 1024 * 1024
COMPRESSIBLE = 0.6  # share of each image that is library code (base system, torch, Python packages)
WEIGHTS_LAYER = 0.75 * GB  # at most, per weights layer
TAG = "localhost/imgbuild-bench-scale"
BASE_TAG = "localhost/imgbuild-bench-scale-base:1"
PROBE_TAG = "localhost/imgbuild-bench-scale-probe:1"


# ---------------------------------------------------------------- measuring a child process


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def vm_hwm(pid: int) -> int:
    """Peak resident set of a live process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    rss: int = 0  # VmHWM of the imgbuild process, polled
    rss_tree: int = 0  # wait4's ru_maxrss: the process or a child it waited for
    cpu: float = 0.0  # user + system seconds of the process and the children it waited for
    disk: int = 0  # peak extra bytes used on the work filesystem
    load: list[float] = field(default_factory=list)
    result: dict = field(default_factory=dict)


class Monitor:
    """Polls free space (and a process's VmHWM, and the load average) until stopped."""

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        self.path, self.interval = path, interval
        self.pid: int | None = None
        self.baseline = self.lowest = free_bytes(path)
        self.hwm = 0
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_load = 0.0
        while not self._stop.is_set():
            self.lowest = min(self.lowest, free_bytes(self.path))
            if self.pid is not None:
                self.hwm = max(self.hwm, vm_hwm(self.pid))
            if time.monotonic() - last_load >= 5:
                self.loads.append(os.getloadavg()[0])
                last_load = time.monotonic()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.lowest = min(self.lowest, free_bytes(self.path))
        self.loads.append(os.getloadavg()[0])

    @property
    def extra(self) -> int:
        return max(0, self.baseline - self.lowest)


def run_imgbuild(name: str, args: list[str], work: Path, logs: Path) -> Step:
    """``python -m imgbuild ARGS --json`` as a child, measured; exits on failure with the end of its log."""
    step = Step(name)
    out, err = logs / f"{name}.json", logs / f"{name}.log"
    monitor = Monitor(work)
    start = time.monotonic()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "imgbuild", *args, "--json"], stdout=stdout, stderr=stderr)
        monitor.pid = proc.pid
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    step.seconds = time.monotonic() - start
    monitor.stop()
    step.rss, step.rss_tree, step.disk, step.load = monitor.hwm, usage.ru_maxrss * 1024, monitor.extra, monitor.loads
    step.cpu = usage.ru_utime + usage.ru_stime
    text = out.read_text()
    step.result = json.loads(text) if text.strip().startswith("{") else {}
    print(f"{name}: {step.seconds:.1f} s ({step.cpu:.1f} s CPU), peak RSS {step.rss / MIB:.0f} MiB "
          f"({step.rss_tree / MIB:.0f} MiB with children), peak extra disk {step.disk / GB:.2f} GB, "
          f"exit {proc.returncode}", file=sys.stderr)
    if proc.returncode != 0:
        tail = err.read_text(errors="replace").splitlines()[-30:]
        sys.exit(f"imgbuild {' '.join(args)} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return step


# ---------------------------------------------------------------- the images


def cli(engine, command: str, check: bool = True) -> str:
    prefix, env = engine_cli(engine)
    done = subprocess.run(f"{prefix} {command}", shell=True, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        sys.exit(f"{prefix} {command} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def image_facts(engine, tag: str) -> tuple[int, int]:
    """(size in bytes, layers) as the engine reports them."""
    size, layers = cli(engine, f"image inspect --format '{{{{.Size}}}} {{{{len .RootFS.Layers}}}}' {tag}").split()
    return int(size), int(layers)


def library_files() -> list[Path]:
    """Real Python packages: the files of this interpreter's stdlib and of the site-packages on sys.path."""
    roots = {Path(sysconfig.get_paths()["stdlib"])}
    roots |= {Path(p) for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)}
    files = []
    for root in sorted(roots):
        for folder, _, names in sorted(os.walk(root)):
            files += [Path(folder) / n for n in sorted(names) if (Path(folder) / n).is_file()
                      and not (Path(folder) / n).is_symlink()]
    return files


def add_library_layers(engine, base: str, tag: str, total: int, work: Path, layers: int = 2) -> None:
    """``layers`` layers of real Python package files, ``total`` bytes in all, on top of ``base``."""
    files = library_files()
    with tempfile.TemporaryDirectory(prefix="scale-libs-", dir=work) as ctx:
        context = Path(ctx)
        copied, n = 0, 0
        for layer in range(layers):
            target = total * (layer + 1) // layers
            while copied < target:
                source = files[n % len(files)]
                dest = context / f"libs{layer}" / f"copy{n // len(files)}" / source.relative_to(source.anchor)
                n += 1
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(source, dest)
                except OSError:  # gone or unreadable since the listing
                    continue
                copied += dest.stat().st_size
        (context / "Containerfile").write_text(
            f"FROM {base}\n" + "".join(f"COPY libs{i}/ /opt/libs{i}/\n" for i in range(layers)))
        print(f"building {tag}: {copied / GB:.2f} GB of Python package files in {layers} layers ...", file=sys.stderr)
        cli(engine, f"build -t {tag} -f {context}/Containerfile {context}")


def make_image(engine, size: float, tag: str, work: Path, wheel: bool) -> list[str]:
    """An image of about ``size`` bytes; returns every tag made (the last is ``tag``)."""
    build_image(engine, 16, tag=PROBE_TAG, base_tag=BASE_TAG, wheel=False)  # bootstraps BASE_TAG
    cli(engine, f"rmi {PROBE_TAG}")
    base_bytes, _ = image_facts(engine, BASE_TAG)
    torch_bytes = sum(i.file_size for i in zipfile.ZipFile(torch_wheel()).infolist()) if wheel else 0
    libs = int(COMPRESSIBLE * size) - base_bytes - torch_bytes
    libs = libs if libs >= 0.1 * GB else 0  # the base and torch are compressible enough
    weights = max(32 * MIB, int(size) - base_bytes - torch_bytes - libs)
    steps = max(1, math.ceil(weights / WEIGHTS_LAYER / 2))
    print(f"{tag}: base {base_bytes / GB:.2f} GB, torch {torch_bytes / GB:.2f} GB, libraries {libs / GB:.2f} GB, "
          f"weights {weights / GB:.2f} GB in {2 * steps} layers", file=sys.stderr)
    tags, below = [], BASE_TAG
    if libs:
        below = f"{tag}-libs"
        add_library_layers(engine, BASE_TAG, below, libs, work)
        tags.append(below)
    for number in range(steps):
        this = tag if number == steps - 1 else f"{tag}-part{number}"
        build_image(engine, weights // steps // MIB, tag=this, base_tag=below, seed=1000 + number,
                    salt=f"bench_scale {tag} step {number}\n", weights_layers=2, wheel=wheel and number == 0)
        tags.append(this)
        below = this
    return tags


def remove_images(engine, tags: list[str]) -> None:
    for tag in reversed(tags):
        cli(engine, f"rmi -f {tag}", check=False)


# ---------------------------------------------------------------- one size


@dataclass
class Run:
    size: float
    image_bytes: int
    layers: int
    compressed: int = 0
    volumes: dict[str, int] = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict)
    loaded_from: str = ""


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(build, target, size: float, work: Path, load_from: str, wheel: bool, keep: bool) -> Run:
    tag = f"{TAG}-{size:g}:1"
    logs = work / f"logs-{size:g}"
    logs.mkdir(exist_ok=True)
    monitor = Monitor(work)
    start = time.monotonic()
    tags = make_image(build, size * GB, tag, work, wheel)
    monitor.stop()
    image_bytes, layers = image_facts(build, tag)
    run = Run(size, image_bytes, layers)
    run.steps["build"] = Step("build", time.monotonic() - start, disk=monitor.extra, load=monitor.loads)
    print(f"{tag}: {image_bytes / GB:.2f} GB in {layers} layers on {build.kind}", file=sys.stderr)
    out, catalog = work / f"set-{size:g}", work / "catalog"
    try:
        cli(target, f"rmi -f {tag}", check=False)
        run.steps["archive"] = run_imgbuild("archive", [
            "archive", tag, "--out", str(out), "--media", "bd25", "--parity", "1", "--iso", "--catalog", str(catalog),
            "--engine", build.kind, "--host", build.host], work, logs)
        run.compressed = run.steps["archive"].result.get("compressed_bytes", 0)
        run.volumes = {p.name: tree_bytes(p) for p in sorted(out.iterdir())}
        run.steps["verify"] = run_imgbuild("verify", ["verify", str(out), "--catalog", str(catalog)], work, logs)
        if not keep:  # the load goes to the other engine: the built image is not needed any more
            remove_images(build, tags)
        if load_from == "auto":  # the load buffers the upload and imports it: about twice the image
            needed, free = 2.2 * image_bytes + 2 * GB, free_bytes(work)
            load_from = "folders" if free > needed else "isos"
            print(f"{free / GB:.1f} GB free, {needed / GB:.1f} GB wanted for the load: loading from the "
                  f"{'volume folders' if load_from == 'folders' else 'ISO images (folders deleted first)'}",
                  file=sys.stderr)
        sources = [str(out)]
        if load_from == "isos":
            for folder in [p for p in out.iterdir() if p.is_dir()]:
                shutil.rmtree(folder)
            sources = [str(p) for p in sorted(out.glob("*.iso"))]
        run.loaded_from = load_from
        run.steps["load"] = run_imgbuild("load", ["load", *sources, "--engine", target.kind, "--host", target.host],
                                         work, logs)
        statuses = [i["status"] for i in run.steps["load"].result.get("images", [])]
        if statuses != ["loaded"]:
            sys.exit(f"load did not load the image: {statuses}")
        loaded_bytes, loaded_layers = image_facts(target, tag)
        print(f"loaded into {target.kind}: {loaded_bytes / GB:.2f} GB in {loaded_layers} layers", file=sys.stderr)
    finally:
        if not keep:
            remove_images(build, tags)
            cli(target, f"rmi -f {tag}", check=False)
            shutil.rmtree(out, ignore_errors=True)
    return run


# ---------------------------------------------------------------- the table


def table(runs: list[Run], build, target) -> None:
    small, large = runs[0], runs[-1]
    size_ratio = large.image_bytes / small.image_bytes
    packed_ratio = large.compressed / small.compressed if small.compressed else float("nan")
    print(f"\nbuilt on {build.kind} {build.version}, loaded into {target.kind} {target.version}; "
          f"{os.cpu_count()} CPUs")
    for run in runs:
        volumes = ", ".join(f"{name} {size / GB:.2f} GB" for name, size in run.volumes.items())
        print(f"{run.size:g} GB run: image {run.image_bytes / GB:.2f} GB in {run.layers} layers, compressed "
              f"{run.compressed / GB:.2f} GB ({run.compressed / run.image_bytes:.0%}); loaded from {run.loaded_from}; "
              f"set: {volumes}")
    heads = [f"{r.image_bytes / GB:.2f} GB" for r in runs]
    print(f"\n{'step':8s} {'figure':26s}" + "".join(f"{h:>11s}" for h in heads)
          + f"{'ratio':>8s}   size ratio {size_ratio:.2f} (compressed {packed_ratio:.2f})")

    def row(step: str, label: str, value, unit_fmt) -> None:
        values = [value(r.steps[step]) if step in r.steps else None for r in runs]
        cells = "".join(f"{unit_fmt(v):>11s}" if v is not None else f"{'-':>11s}" for v in values)
        a, b = values[0], values[-1]
        ratio = f"{b / a:8.2f}" if a and b is not None else f"{'-':>8s}"
        print(f"{step:8s} {label:26s}{cells}{ratio}")

    for step in ("build", "archive", "verify", "load"):
        row(step, "time (s)", lambda s: s.seconds, lambda v: f"{v:.1f}")
        if step != "build":
            row(step, "imgbuild CPU time (s)", lambda s: s.cpu, lambda v: f"{v:.1f}")
            row(step, "peak RSS imgbuild (MiB)", lambda s: s.rss / MIB, lambda v: f"{v:.0f}")
            row(step, "peak RSS + children (MiB)", lambda s: s.rss_tree / MIB, lambda v: f"{v:.0f}")
        row(step, "peak extra disk (GB)", lambda s: s.disk / GB, lambda v: f"{v:.2f}")
        row(step, "load average (max 1-min)", lambda s: max(s.load), lambda v: f"{v:.1f}")
    worst = max((s.rss_tree for r in runs for s in r.steps.values()), default=0)
    print(f"\npeak RSS of any imgbuild step: {worst / MIB:.0f} MiB (goal < 1024 MiB: "
          f"{'met' if worst < 1024 * MIB else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1.5,10.5", help="image sizes in GB, smallest first (default 1.5,10.5)")
    parser.add_argument("--build-engine", default="podman", choices=["podman", "docker"],
                        help="engine the images are built on and archived from; the load goes to the other")
    parser.add_argument("--podman-host", default=os.environ.get("IMGBUILD_TEST_PODMAN_HOST"))
    parser.add_argument("--docker-host", default=os.environ.get("IMGBUILD_TEST_DOCKER_HOST"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/imgbuild-scale"),
                        help="folder for build contexts, sets and logs (its filesystem is the one measured)")
    parser.add_argument("--load-from", default="auto", choices=["auto", "folders", "isos"])
    parser.add_argument("--no-wheel", action="store_true", help="leave torch out: a small image, a quick run")
    parser.add_argument("--keep-images", action="store_true", help="keep the images and the sets")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_TMP"] = os.environ["TMPDIR"] = str(args.work)  # build contexts and the SDK's context tar
    tempfile.tempdir = None
    other = {"podman": "docker", "docker": "podman"}[args.build_engine]
    hosts = {"podman": args.podman_host, "docker": args.docker_host}
    with bench_archive.connect(args.build_engine, hosts[args.build_engine]) as build, \
            bench_archive.connect(other, hosts[other]) as target:
        runs: list[Run] = []
        try:
            for size in sizes:
                runs.append(measure(build, target, size, args.work, args.load_from, not args.no_wheel,
                                    args.keep_images))
        finally:
            if not args.keep_images:
                cli(build, f"rmi -f {BASE_TAG}", check=False)
            if runs:  # also the sizes done when a later one failed
                table(runs, build, target)
                print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
