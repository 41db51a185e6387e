"""Results table, efficiency-effectiveness frontier and training curves from the runs' results.json.

    python -m src.report --runs results/runs/cpu-small --reference BM25=results/runs/bm25 \\
        --reference "splade-tiny (Siamese, as shipped)=results/runs/splade-tiny" --out results/

writes `table.md`, `frontier.png` and `curves.png` under --out, with src/experiments/report.py (which
notebooks/frontier.ipynb uses too).
"""

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from src.experiments.report import LAYOUTS, parse_reference, report_date, write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=[], metavar="DIR", help="run dirs, or folders of run dirs")
    parser.add_argument(
        "--reference", action="append", default=[], metavar="LABEL=DIR", help="a src.evaluate output dir"
    )
    parser.add_argument("--out", default="results", help="folder for table.md, frontier.png, curves.png")
    parser.add_argument("--layout", choices=LAYOUTS, default="cpu-small")
    parser.add_argument("--datasets", help="comma-separated; default: every dataset evaluated (paper: BEIR-13)")
    parser.add_argument("--command", help="the command line to record in the table (default: this one)")
    parser.add_argument("--date", help="the date to record (default: today UTC, or SOURCE_DATE_EPOCH's)")
    parser.add_argument(
        "--curves",
        default="train/doc_len,train/masked_frac",
        help="comma-separated metrics of metrics.csv to plot in curves.png, one panel each",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = args.command or shlex.join(["python", "-m", "src.report", *argv])
    written = write_report(
        args.runs,
        [parse_reference(spec) for spec in args.reference],
        args.out,
        args.layout,
        [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None,
        command,
        args.date or report_date(),
        [m.strip() for m in args.curves.split(",") if m.strip()],
    )
    print(written["table"].read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in written.items()))


if __name__ == "__main__":
    main()
