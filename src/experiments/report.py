"""Results table, efficiency-effectiveness frontier and training curves from the runs' results.json.

    python -m src.report --runs results/runs/cpu-small --reference BM25=results/runs/bm25 \\
        --reference "splade-tiny (Siamese, as shipped)=results/runs/splade-tiny" --out results/

writes `table.md`, `frontier.png` and `curves.png` under --out. The same functions feed notebooks/frontier.ipynb.
A training run's results.json comes from src/training/run.py (status, config knobs, train, eval), a reference's
from src/retrieval/evaluation.py (config, eval); per-step metrics come from `<run>/metrics/metrics.csv`.
Everything here is plain Python and matplotlib's object API (no pyplot, no global backend): PNGs render through
Agg."""

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

log = logging.getLogger(__name__)

# BEIR-13 in the paper's order, with the names its tables use.
BEIR13 = {
    "trec-covid": "TREC-COVID",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "hotpotqa": "HotpotQA",
    "fiqa": "FiQA",
    "arguana": "ArguAna",
    "webis-touche2020": "Touche",
    "dbpedia-entity": "DBPedia",
    "scidocs": "SCIDOCS",
    "fever": "FEVER",
    "climate-fever": "Climate-FEVER",
    "scifact": "SciFact",
    "quora": "Quora",
}
ACTIVATION_ORDER = ["relu", "log1", "log2", "log3", "log4"]  # unknown activations sort after these, by name
LAYOUTS = ("cpu-small", "paper")
PROTOCOLS = {"cpu-small": "cpu-small protocol (splade-tiny, SciFact + NFCorpus train)", "paper": "paper protocol"}
NOT_IN_NAMES = ("paths", "resume", "num_threads", "logger", "checkpoint")  # config keys that never tell runs apart


@dataclass
class Row:
    """One model of the table: a training run or a labelled reference."""

    name: str
    kind: str  # "run" | "reference"
    status: str  # finished | collapsed | diverged (runs); reference
    ndcg: dict[str, float]  # dataset -> NDCG@10, only the datasets evaluated
    flops: dict[str, float] = field(default_factory=dict)  # dataset -> FLOPS, where the mode defines it
    doc_len: dict[str, float] = field(default_factory=dict)
    dev_ndcg: dict[str, float] = field(default_factory=dict)  # dataset -> NDCG@10 on its dev split (runs)
    prune_ratio: float | None = None  # the post-hoc pruning the model was evaluated (reference) or exported (run) with
    start_weight: float = 0.0  # runs: the starting model's share of the exported weights (posthoc.start_weight)
    activation: str | None = None
    mask_t: float | None = None
    lambda_d: float | None = None
    reason: str | None = None
    wall_s: float | None = None
    steps: int | None = None
    path: str = ""
    resolved: dict = field(default_factory=dict, repr=False)

    @property
    def masked(self) -> bool:
        return self.mask_t is not None

    @property
    def posthoc(self) -> bool:
        """A run whose exported weights were averaged with the start or pruned after training: its sparsity is not
        the regulariser's alone, so it stays off the activations' curves."""
        return self.kind == "run" and bool(self.start_weight or self.prune_ratio)

    def mean_ndcg(self, datasets: Sequence[str]) -> float | None:
        return _mean(self.ndcg.get(d) for d in datasets)

    def mean_dev_ndcg(self, datasets: Sequence[str]) -> float | None:
        return _mean(self.dev_ndcg.get(d) for d in datasets)

    def mean_flops(self, datasets: Sequence[str]) -> float | None:
        return _mean(self.flops.get(d) for d in datasets)

    def mean_doc_len(self, datasets: Sequence[str]) -> float | None:
        return _mean(self.doc_len.get(d) for d in datasets)

    def complete(self, datasets: Sequence[str]) -> bool:
        return all(d in self.ndcg for d in datasets)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(present) / len(present) if present else None


# ---------------------------------------------------------------- loading


def find_run_dirs(dirs: Iterable[str | Path]) -> list[Path]:
    """Each dir holding results.json, or its subfolders holding one (one level down); sorted, without repeats."""
    found: set[Path] = set()
    for d in map(Path, dirs):
        if (d / "results.json").is_file():
            found.add(d)
        elif d.is_dir():
            found.update(p.parent for p in d.glob("*/results.json"))
        else:
            log.warning("%s: no such folder", d)
    return sorted(found, key=lambda p: str(p))


def _read_json(path: Path) -> dict | None:
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable (%s); skipped", path, err)
        return None
    if not isinstance(results, dict):
        log.warning("%s: not a JSON object; skipped", path)
        return None
    return results


def _metric_block(evals: object, key: str) -> dict[str, float]:
    if not isinstance(evals, dict):
        return {}
    blocks = sorted((ds, m) for ds, m in evals.items() if isinstance(m, dict))
    return {ds: float(m[key]) for ds, m in blocks if isinstance(m.get(key), int | float)}


def model_name(
    activation: str | None,
    mask_t: float | None,
    lambda_d: float | None,
    resolved: dict | None = None,
    start_weight: float | None = None,
    prune_ratio: float | None = None,
) -> str:
    """'log2, l0 mask t=100, λd=0.4' | 'log1, FLOPS λd=4' | 'log1, no reg' (a linear threshold: 't=300→100'),
    then what was done after training: ', averaged 0.5 with the start, pruned 0.2'."""
    act = activation or "?"
    if not lambda_d:
        name = f"{act}, no reg"
    elif mask_t is None:
        name = f"{act}, FLOPS λd={lambda_d:g}"
    else:
        mask = (resolved or {}).get("mask") or {}
        start = mask.get("t_start") if mask.get("schedule") == "linear" else None
        t = f"{start:g}→{mask_t:g}" if start is not None else f"{mask_t:g}"
        name = f"{act}, l0 mask t={t}, λd={lambda_d:g}"
    if start_weight:
        name += f", averaged {start_weight:g} with the start"
    if prune_ratio:
        name += f", pruned {prune_ratio:g}"
    return name


def run_row(path: Path, results: dict) -> Row:
    config = results.get("config", {})
    evals = results.get("eval") or {}
    train = results.get("train") or {}
    return Row(
        name=model_name(
            config.get("activation"),
            config.get("mask_t"),
            config.get("lambda_d"),
            config.get("resolved"),
            config.get("start_weight"),
            config.get("prune_ratio"),
        ),
        kind="run",
        status=results.get("status", "finished"),
        reason=results.get("reason"),
        ndcg=_metric_block(evals, "ndcg@10"),
        flops=_metric_block(evals, "flops"),
        doc_len=_metric_block(evals, "doc_len"),
        dev_ndcg=_metric_block(results.get("dev") or {}, "ndcg@10"),
        activation=config.get("activation"),
        mask_t=config.get("mask_t"),
        lambda_d=config.get("lambda_d"),
        prune_ratio=config.get("prune_ratio") or None,
        start_weight=config.get("start_weight") or 0.0,
        wall_s=train.get("wall_s"),
        steps=train.get("steps"),
        path=str(path),
        resolved=config.get("resolved") or {},
    )


def load_runs(dirs: Iterable[str | Path]) -> list[Row]:
    """One row per training run under dirs (a run dir, or a folder of run dirs), sorted as in the table.
    Results of src.evaluate (no "status") are left out with a warning: pass them with load_reference."""
    rows = []
    for path in find_run_dirs(dirs):
        results = _read_json(path / "results.json")
        if results is None:
            continue
        if "status" not in results and "mask_t" not in results.get("config", {}):
            log.warning("%s: an evaluation, not a training run; pass it as --reference LABEL=DIR", path)
            continue
        rows.append(run_row(path, results))
    _disambiguate(rows)
    return sort_rows(rows)


def load_reference(label: str, path: str | Path) -> Row:
    """A labelled row from a `python -m src.evaluate` output dir (or a training run dir, under its label)."""
    path = Path(path)
    results = _read_json(path / "results.json") if (path / "results.json").is_file() else None
    if results is None:
        raise FileNotFoundError(f"reference {label!r}: {path / 'results.json'} does not exist or is unreadable")
    config = results.get("config", {})
    evals = results.get("eval") or {}
    return Row(
        name=label,
        kind="reference",
        status="reference",
        ndcg=_metric_block(evals, "ndcg@10"),
        flops=_metric_block(evals, "flops"),
        doc_len=_metric_block(evals, "doc_len"),
        activation=config.get("activation"),
        prune_ratio=config.get("prune_ratio"),
        path=str(path),
    )


def parse_reference(spec: str) -> tuple[str, Path]:
    """'LABEL=DIR': split at the first '=' whose right side is a folder (labels may hold '='), else the first '='."""
    if "=" not in spec:
        raise ValueError(f"--reference {spec!r}: expected LABEL=DIR")
    cuts = [i for i, ch in enumerate(spec) if ch == "="]
    for i in cuts:
        if Path(spec[i + 1 :]).is_dir():
            return spec[:i], Path(spec[i + 1 :])
    return spec[: cuts[0]], Path(spec[cuts[0] + 1 :])


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _disambiguate(rows: list[Row]) -> None:
    """Runs sharing a name (another seed, loss, schedule ...) get the config keys in which they differ appended."""
    by_name: dict[str, list[Row]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(row)
    for same in by_name.values():
        if len(same) < 2:
            continue
        flat = [_flatten(r.resolved) for r in same]
        keys = sorted(
            k
            for k in set().union(*flat)
            if k.split(".")[0] not in NOT_IN_NAMES and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
        )
        for row, f in zip(same, flat, strict=True):
            extra = ", ".join(f"{k}={_short(f.get(k))}" for k in keys[:3]) or Path(row.path).name
            row.name = f"{row.name} ({extra})"


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _activation_key(act: str | None) -> tuple[int, str]:
    act = act or ""
    return (ACTIVATION_ORDER.index(act) if act in ACTIVATION_ORDER else len(ACTIVATION_ORDER), act)


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Activation (relu, log1, log2, ...), plain FLOPS before the l0 mask, then t, then lambda_d, then name."""

    def key(r: Row) -> tuple:
        return (
            _activation_key(r.activation),
            r.masked,
            r.mask_t if r.mask_t is not None else -1.0,
            r.lambda_d if r.lambda_d is not None else -1.0,
            r.name,
            r.path,
        )

    return sorted(rows, key=key)


def datasets_of(rows: Iterable[Row]) -> list[str]:
    """Every dataset any row was evaluated on: BEIR-13 order first, then others by name."""
    names = {d for r in rows for d in r.ndcg}
    order = list(BEIR13)
    return sorted(names, key=lambda d: (order.index(d) if d in order else len(order), d))


# ---------------------------------------------------------------- table


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _flops(value: float | None) -> str:
    """3 decimals; 2 significant digits under 0.01, where a near-collapsed model would otherwise read 0.000."""
    return "-" if value is None else f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def _header(title: str, command: str | None, date: str | None) -> list[str]:
    lines = [f"# {title}", ""]
    made = []
    if command:
        made.append(f"Made with `{command}`")
    if date:
        made.append(f"on {date}")
    if made:
        lines += [" ".join(made) + ".", ""]
    return lines


def _notes(rows: Sequence[Row], datasets: Sequence[str]) -> list[str]:
    notes = []
    if any(not r.complete(datasets) and r.ndcg for r in rows):
        notes.append("† mean over the datasets this model was evaluated on, not all of them.")
    for r in rows:
        if r.status in ("collapsed", "diverged"):
            notes.append(f"{r.name}: {r.status}" + (f" ({r.reason})" if r.reason else "") + ".")
    return [f"- {n}" for n in notes]


def _mean_cell(row: Row, datasets: Sequence[str]) -> str:
    mean = row.mean_ndcg(datasets)
    return _num(mean, 4) + ("†" if mean is not None and not row.complete(datasets) else "")


def format_table(
    rows: Sequence[Row],
    datasets: Sequence[str],
    command: str | None = None,
    date: str | None = None,
    title: str = "l0-sparse results",
) -> str:
    """Markdown, models as rows: NDCG@10 per dataset and their mean, FLOPS and Doc_Len (means), status, train time.
    Reference rows first, in the order given; runs as sort_rows orders them."""
    refs = [r for r in rows if r.kind == "reference"]
    runs = sort_rows(r for r in rows if r.kind != "reference")
    head = ["model", *datasets, "mean NDCG@10", "dev mean", "FLOPS", "Doc_Len", "status", "train s"]
    lines = _header(title, command, date)
    lines.append(
        "NDCG@10 on the test splits; FLOPS and Doc_Len are means over the same datasets. dev mean: NDCG@10 on the dev "
        "splits (nfcorpus dev; scifact: the fifth of its train queries held out of training), on which settings are "
        "chosen."
    )
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 3) + "---|---:|"]
    for r in [*refs, *runs]:
        cells = [
            r.name.replace("|", "\\|"),
            *(_num(r.ndcg.get(d), 4) for d in datasets),
            _mean_cell(r, datasets),
            _num(r.mean_dev_ndcg(datasets), 4),
            _flops(r.mean_flops(datasets)),
            _num(r.mean_doc_len(datasets), 1),
            r.status,
            _num(r.wall_s, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += format_equal_ndcg([*refs, *runs], datasets)
    notes = _notes([*refs, *runs], datasets)
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def pareto(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (FLOPS, NDCG@10) points no cheaper point matches, in FLOPS order: the frontier a set of runs draws."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier


def flops_needed(rows: Sequence[Row], datasets: Sequence[str], activation: str, ndcg: float) -> float | None:
    """The least FLOPS at which the activation's runs reach a mean NDCG@10 of `ndcg`: the Pareto frontier of its
    finished runs, read as a piecewise-linear curve, crossed at `ndcg` (None when no run reaches it). Activations
    compared at equal effectiveness, not at equal settings; runs averaged or pruned after training are left out."""
    curve = pareto(
        (x, y)
        for r in rows
        if r.kind == "run" and r.status == "finished" and not r.posthoc and (r.activation or "?") == activation
        for x, y in [(r.mean_flops(datasets), r.mean_ndcg(datasets))]
        if x is not None and y is not None
    )
    for i, (x, y) in enumerate(curve):
        if y >= ndcg:
            if i == 0 or curve[i - 1][1] >= ndcg:
                return x
            x0, y0 = curve[i - 1]
            return x0 + (x - x0) * (ndcg - y0) / (y - y0)
    return None


def format_equal_ndcg(rows: Sequence[Row], datasets: Sequence[str]) -> list[str]:
    """A markdown table: for each reference's mean NDCG@10, the FLOPS each activation needs to reach it."""
    activations = sorted({r.activation or "?" for r in rows if r.kind == "run"}, key=_activation_key)
    levels = [(r.name, r.mean_ndcg(datasets)) for r in rows if r.kind == "reference"]
    levels = [(name, y) for name, y in levels if y is not None]
    if not activations or not levels:
        return []
    lines = [
        "",
        "FLOPS each activation needs to reach a reference's mean NDCG@10 (the Pareto frontier of its finished runs, "
        "interpolated, without those averaged or pruned after training; '-': no run reaches it):",
        "",
        "| mean NDCG@10 of | level | " + " | ".join(activations) + " |",
        "|---|---:|" + "---:|" * len(activations),
    ]
    for name, y in levels:
        cells = [_flops(flops_needed(rows, datasets, act, y)) for act in activations]
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {y:.4f} | " + " | ".join(cells) + " |")
    return lines


def format_paper_table(
    rows: Sequence[Row],
    datasets: Sequence[str] = tuple(BEIR13),
    command: str | None = None,
    date: str | None = None,
    title: str = "l0-sparse results (paper layout)",
) -> str:
    """The paper's layout: datasets as rows (BEIR-13 in its order), models as columns, NDCG@10 x 100, an Average
    row, then FLOPS and Doc_Len; a dataset a model was not evaluated on shows '-'."""
    models = [*(r for r in rows if r.kind == "reference"), *sort_rows(r for r in rows if r.kind != "reference")]
    names = [
        r.name.replace("|", "\\|") + ("" if r.status in ("finished", "reference") else f" ({r.status})") for r in models
    ]
    lines = _header(title, command, date)
    lines.append("NDCG@10 (x 100) on the BEIR test splits; '-': not evaluated.")
    lines += ["", "| dataset | " + " | ".join(names) + " |", "|---|" + "---:|" * len(models)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    for d in datasets:
        lines.append(f"| {BEIR13.get(d, d)} | " + " | ".join(pct(r.ndcg.get(d)) for r in models) + " |")
    average = [pct(r.mean_ndcg(datasets)) + ("†" if r.ndcg and not r.complete(datasets) else "") for r in models]
    lines.append("| **Average** | " + " | ".join(average) + " |")
    lines.append("| FLOPS | " + " | ".join(_flops(r.mean_flops(datasets)) for r in models) + " |")
    lines.append("| Doc_Len | " + " | ".join(_num(r.mean_doc_len(datasets), 1) for r in models) + " |")
    notes = _notes(models, datasets)
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


# ---------------------------------------------------------------- figures


def _colors(activations: Iterable[str]) -> dict[str, str]:
    return {act: f"C{i % 10}" for i, act in enumerate(sorted(set(activations), key=_activation_key))}


def _short_label(r: Row) -> str:
    lam = f"λ{r.lambda_d:g}" if r.lambda_d else "no reg"
    return (f"t{r.mask_t:g} {lam}" if r.masked else lam) + (" +post" if r.posthoc else "")


def frontier_figure(
    rows: Sequence[Row], datasets: Sequence[str], protocol: str = "cpu-small", annotate: bool = True
) -> Figure:
    """Mean NDCG@10 against mean FLOPS: one curve per activation (its runs' Pareto frontier), filled markers
    for the l0 mask, hollow for plain FLOPS, x for collapsed runs, diamonds off the curve for runs averaged or
    pruned after training; references with FLOPS as stars, without
    (BM25) as dashed horizontal lines. Log x when FLOPS span more than 20x."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    points = [(r, r.mean_flops(datasets), r.mean_ndcg(datasets)) for r in rows]
    span = [x for r, x, _ in points if x is not None and x > 0 and r.status != "collapsed"]
    log_x = bool(span) and max(span) / min(span) > 20
    if log_x:  # a collapsed run's FLOPS may be 0: drawn at the left edge, not dropped
        floor = min(x for _, x, _ in points if x is not None and x > 0) / 3
        points = [(r, x if x is None or x > 0 else floor, y) for r, x, y in points]
    runs = [(r, x, y) for r, x, y in points if r.kind == "run" and x is not None and y is not None]
    colors = _colors(r.activation or "?" for r, _, _ in runs)
    handles = []
    for act, color in colors.items():
        mine = sorted(((r, x, y) for r, x, y in runs if (r.activation or "?") == act), key=lambda p: (p[1], p[2]))
        curve = pareto((x, y) for r, x, y in mine if r.status != "collapsed" and not r.posthoc)
        if curve:
            ax.plot([x for x, _ in curve], [y for _, y in curve], "-", color=color, alpha=0.6, zorder=1)
        for r, x, y in mine:
            if r.status == "collapsed":
                ax.plot(x, y, "x", color=color, markersize=9, mew=2, zorder=3)
            elif r.posthoc:
                ax.plot(x, y, "D", color=color, markersize=7, zorder=3)
            else:
                ax.plot(x, y, "o", color=color, mfc=color if r.masked else "none", mew=1.5, markersize=7, zorder=2)
            if annotate:
                ax.annotate(_short_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        handles.append(Line2D([], [], color=color, marker="o", label=act))
    handles += [
        Line2D([], [], color="gray", marker="o", ls="none", label="l0 mask"),
        Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="plain FLOPS"),
        Line2D([], [], color="gray", marker="x", mew=2, ls="none", label="collapsed"),
    ]
    if any(r.posthoc for r, _, _ in runs):
        handles.append(Line2D([], [], color="gray", marker="D", ls="none", label="averaged / pruned after training"))
    pruned = sorted(
        ((r, x, y) for r, x, y in points if r.kind == "reference" and r.prune_ratio is not None and x is not None),
        key=lambda p: p[1],
    )
    if len(pruned) > 1:  # one model pruned post hoc at several ratios: the baseline training must beat
        ax.plot([x for _, x, _ in pruned], [y for _, _, y in pruned], "s:", color="0.35", markersize=5, zorder=2)
        for r, x, y in pruned:
            ax.annotate(f"{r.prune_ratio:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        handles.append(Line2D([], [], color="0.35", marker="s", ls=":", label="post-hoc pruning (ratio)"))
    else:
        pruned = []
    refs = [(r, x, y) for r, x, y in points if r.kind == "reference" and y is not None]
    refs = [(r, x, y) for r, x, y in refs if all(r is not p for p, _, _ in pruned)]
    for i, (r, x, y) in enumerate(refs):
        shade = f"{0.15 + 0.5 * i / max(1, len(refs)):.2f}"  # greys, darkest first
        if x is None:
            handles.append(ax.axhline(y, ls="--", color=shade, lw=1.2, label=f"{r.name} (no FLOPS)"))
        else:
            handles.append(ax.plot(x, y, "*", color=shade, markersize=13, ls="none", label=r.name, zorder=4)[0])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("FLOPS (mean over datasets; expected multiply-adds per query-document pair)")
    ax.set_ylabel("NDCG@10 (mean over datasets)")
    partial = any(r.ndcg and not r.complete(datasets) for r, _, _ in points)
    means = f"means over {', '.join(datasets)}" + (" (or those a model was evaluated on)" if partial else "")
    ax.set_title(f"{PROTOCOLS.get(protocol, protocol)}\n{means}", fontsize=10)
    fig.suptitle("Efficiency-effectiveness frontier")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from <run>/metrics/metrics.csv, empty cells skipped; {} if there is no file."""
    path = Path(run_dir) / "metrics" / "metrics.csv"
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if not rec.get("step"):
                continue
            step = int(float(rec["step"]))
            for key, value in rec.items():
                if key != "step" and value not in (None, ""):
                    series.setdefault(key, []).append((step, float(value)))
    return {k: sorted(v) for k, v in sorted(series.items())}


def training_curves(
    run_dirs: Iterable[str | Path], metrics: Sequence[str] = ("train/doc_len", "train/masked_frac")
) -> Figure:
    """One panel per metric against step, one line per run (run dirs, or folders of run dirs)."""
    dirs = find_run_dirs(run_dirs)
    rows = load_runs(dirs)  # in table order; folders without a readable results.json after them
    named = [(r.name, Path(r.path)) for r in rows]
    named += [(d.name, d) for d in dirs if str(d) not in {r.path for r in rows}]
    fig = Figure(figsize=(6 * len(metrics), 4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for (name, d), color in zip(named, (f"C{i % 10}" for i in range(len(named))), strict=True):
        series = read_metrics(d)
        for ax, metric in zip(axes, metrics, strict=True):
            points = series.get(metric, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], color=color, label=name)
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
    if any(ax.lines for ax in axes):
        axes[0].legend(fontsize=7)
    return fig


# ---------------------------------------------------------------- CLI


def report_date() -> str:
    """Today (UTC), or SOURCE_DATE_EPOCH's date, so a rebuild can be byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch) if epoch else None))


def write_report(
    run_dirs: Sequence[str | Path],
    references: Sequence[tuple[str, str | Path]],
    out: str | Path,
    layout: str = "cpu-small",
    datasets: Sequence[str] | None = None,
    command: str | None = None,
    date: str | None = None,
    curve_metrics: Sequence[str] = ("train/doc_len", "train/masked_frac"),
) -> dict[str, Path]:
    """Writes table.md, frontier.png and (where runs logged metrics) curves.png of `curve_metrics` under out;
    returns their paths."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [*(load_reference(label, path) for label, path in references), *load_runs(run_dirs)]
    if datasets is None:
        datasets = list(BEIR13) if layout == "paper" else datasets_of(rows)
    if layout == "paper":
        table = format_paper_table(rows, datasets, command, date)
    else:
        table = format_table(rows, datasets, command, date)
    written = {"table": out / "table.md", "frontier": out / "frontier.png"}
    written["table"].write_text(table)
    measured = [d for d in datasets if any(d in r.ndcg for r in rows)]  # the frontier's means: evaluated sets only
    frontier_figure(rows, measured or datasets, layout).savefig(
        written["frontier"], dpi=150, metadata={"Software": None}
    )
    dirs = [d for d in find_run_dirs(run_dirs) if read_metrics(d)]
    if dirs:
        written["curves"] = out / "curves.png"
        training_curves(dirs, curve_metrics).savefig(written["curves"], dpi=120, metadata={"Software": None})
    return written
