"""Benchmark the refusals of hostile input: time and peak memory against a baseline of the same run.

Baseline: loading the demo recipe (recipes/demo.yaml) in-process, and `verify --deep` of a one-layer
synthetic set whose layer really is 1 MiB. Each hostile case (tests/support/hostile_recipes.py; a 100 GiB
zstd bomb for verify) is timed the same way; the goal is a refusal in under a second and 100 MB, so the
ratio to the baseline stays small whatever the input claims.

    python bench/bench_hostile.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zstandard  # noqa: E402

from imgbuild.foundation.errors import ImgbuildError  # noqa: E402
from imgbuild.recipe.loader import load_recipe  # noqa: E402
from imgbuild.restore.verify import VerifyOptions, verify_set  # noqa: E402
from tests.support.hostile_recipes import CASES  # noqa: E402
from tests.test_hostile_set import rle_bomb, set_with_part  # noqa: E402


def measure(action: Callable[[], object], rounds: int) -> tuple[float, float, str]:
    """Median seconds, peak MB (Python allocations, first round) and the outcome's first words."""
    times = []
    outcome = "ok"
    peak = 0.0
    for i in range(rounds):
        if i == 0:
            tracemalloc.start()
        started = time.perf_counter()
        try:
            action()
        except ImgbuildError as exc:
            outcome = str(exc).split(": ", 1)[-1][:60]
        times.append(time.perf_counter() - started)
        if i == 0:
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
    return statistics.median(times[1:] or times), peak, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; median of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, base_peak, _ = measure(lambda: load_recipe(ROOT / "recipes" / "demo.yaml", env={}), args.rounds)
        print(f"{'baseline: demo recipe':32} {base * 1000:8.1f} ms {base_peak:6.1f} MB")
        for name, write in CASES.items():
            case = folder / name
            case.mkdir()
            path = write(case)
            took, peak, outcome = measure(lambda: load_recipe(path, env={}), args.rounds)
            print(f"{name:32} {took * 1000:8.1f} ms {peak:6.1f} MB  x{took / base:7.1f}  {outcome}")
        layer = os.urandom(1 << 20)
        honest = set_with_part(folder / "honest", zstandard.ZstdCompressor().compress(layer), layer=layer)
        bomb = set_with_part(folder / "bomb", rle_bomb(100 << 30))
        base, base_peak, _ = measure(lambda: verify_set([honest], VerifyOptions(deep=True)), args.rounds)
        print(f"{'baseline: verify --deep 1 MiB':32} {base * 1000:8.1f} ms {base_peak:6.1f} MB")
        took, peak, _ = measure(lambda: verify_set([bomb], VerifyOptions(deep=True)), args.rounds)
        print(f"{'verify --deep, 100 GiB bomb':32} {took * 1000:8.1f} ms {peak:6.1f} MB  x{took / base:7.1f}")


if __name__ == "__main__":
    main()
