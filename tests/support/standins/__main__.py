"""Make stand-in checkpoints: `python -m tests.support.standins MODEL OUT [--size tiny|real] [--seed N]`.

Every module of this package that defines `register(models)` adds its MODEL subcommand (an argparse
subparser with `set_defaults(make=FUNCTION)`; FUNCTION takes the parsed arguments and returns the folder).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

from . import SIZES


def add_common(parser: argparse.ArgumentParser) -> None:
    """OUT, --size and --seed: the arguments every model takes."""
    parser.add_argument("out", type=Path, help="folder to write the checkpoint files into")
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: seconds to make and run (tests); real: the real parameter count (benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random values")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.standins", description=__doc__)
    models = parser.add_subparsers(dest="model", required=True)
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "register"):
            module.register(models)
    args = parser.parse_args(argv)
    print(args.make(args))


if __name__ == "__main__":
    main()
