"""Run a W&B sweep file without a W&B server: `python -m src.sweep sweeps/threshold.yaml`.

The runner is src/experiments/sweep.py (its docstring: methods, distributions, launchers, resuming); the sweep
files are under sweeps/.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.experiments.sweep import LAUNCHERS, run_sweep


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file", type=Path, help="a W&B sweep file, e.g. sweeps/threshold.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/sweeps"), help="runs go to OUT/<sweep>/<point>")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="serial")
    parser.add_argument("--jobs", type=int, help="parallel jobs of --launcher joblib (default: all cores)")
    parser.add_argument(
        "--extra",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="overrides appended to every point (trainer.max_steps=20); hydra.* ones go to the launcher",
    )
    parser.add_argument("--count", type=int, help="points of a random search (default: the file's run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random search's draws")
    parser.add_argument("--dry-run", action="store_true", help="print one command line per point, run nothing")
    args = parser.parse_args(argv)
    if args.jobs is not None and (args.launcher != "joblib" or args.jobs < 1):
        parser.error("--jobs N (N >= 1) goes with --launcher joblib")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: see `src.experiments.sweep.run_sweep`."""
    return run_sweep(parse_args(argv), sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
