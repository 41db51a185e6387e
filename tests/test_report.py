"""The results table, frontier and curves (src/experiments/report.py) on hand-written results, and the notebook on
real runs."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from src.experiments import report
from src.report import main as report_main
from tests.conftest import ROOT, compose_train

NOTEBOOK = ROOT / "notebooks" / "frontier.ipynb"


def write_run(
    folder: Path,
    activation: str = "log2",
    mask_t: float | None = 100,
    lambda_d: float = 0.4,
    status: str = "finished",
    evals: dict | None = None,
    seed: int = 42,
    reason: str | None = None,
    metrics: str | None = None,
    dev: dict | None = None,
    posthoc: tuple[float, float] = (0.0, 0.0),
) -> Path:
    """A results.json as src/training/run.py writes it (evals: dataset -> (ndcg@10, flops, doc_len); dev: dataset ->
    ndcg@10 on the dev split; posthoc: (start_weight, prune_ratio))."""
    evals = {"scifact": (0.6, 1.0, 90.0), "nfcorpus": (0.3, 0.5, 100.0)} if evals is None else evals
    results = {
        "status": status,
        **({"reason": reason} if reason else {}),
        "config": {
            "activation": activation,
            "mask_t": mask_t,
            "lambda_d": lambda_d,
            "T": 100,
            "model": "splade-tiny (bundled)",
            "seed": seed,
            "loss": "kl",
            "group_size": 2,
            "train_data": "/tmp/prepared",
            "teachers": ["bm25", "splade-tiny"],
            "max_steps": 300,
            "start_weight": posthoc[0],
            "prune_ratio": posthoc[1],
            "resolved": {"seed": seed, "activation": activation, "mask": {"t": mask_t}, "paths": {"x": str(folder)}},
        },
        "train": {"steps": 300, "doc_len": 85.1, "wall_s": 390.2},
        "eval": {
            name: {"ndcg@10": n, "recall@100": 0.9, "mrr@10": 0.5, "flops": f, "doc_len": d, "q_len": 8.0}
            for name, (n, f, d) in evals.items()
        },
        **({"dev": {name: {"ndcg@10": n} for name, n in dev.items()}} if dev else {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    if metrics is not None:
        (folder / "metrics").mkdir()
        (folder / "metrics" / "metrics.csv").write_text(metrics)
    return folder


def write_reference(
    folder: Path, mode: str = "inference_free", evals: dict | None = None, prune_ratio: float | None = 0.0
) -> Path:
    """A results.json as src/retrieval/evaluation.py writes it; BM25 has no FLOPS / Doc_Len."""
    evals = {"scifact": (0.66, 2.1, 285.2), "nfcorpus": (0.31, 0.58, 296.6)} if evals is None else evals
    none = mode == "bm25"
    results = {
        "config": {
            "model": None if none else "splade-tiny",
            "mode": mode,
            "activation": None if none else "log1",
            "prune_ratio": None if none else prune_ratio,
        },
        "eval": {
            name: {"ndcg@10": n, "flops": None if none else f, "doc_len": None if none else d, "q_len": None}
            for name, (n, f, d) in evals.items()
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    runs = tmp_path / "runs"
    write_run(runs / "a", "log2", 100, 0.4)
    write_run(
        runs / "b",
        "log1",
        None,
        4,
        evals={"scifact": (0.5, 0.2, 20.0), "nfcorpus": (0.2, 0.1, 30.0)},
        dev={"scifact": 0.55, "nfcorpus": 0.25},
    )
    write_run(runs / "c", "log1", None, 0)
    write_run(runs / "d", "log1", 50, 0.4)
    write_run(runs / "e", "log1", 200, 0.4)
    write_run(runs / "f", "log1", None, 40, status="collapsed", reason="train/doc_len < 1.0 for 20 steps")
    write_run(runs / "g", "log2", None, 40, status="diverged", reason="NaN loss at step 12", evals={})
    write_reference(tmp_path / "bm25", mode="bm25", evals={"scifact": (0.6772, 0, 0), "nfcorpus": (0.3178, 0, 0)})
    write_reference(tmp_path / "tiny")
    return tmp_path


def table_rows(table: str, which: int = 0) -> list[list[str]]:
    """The rows of the `which`-th markdown table in the text, without its |---| line."""
    blocks, block = [], []
    for line in [*table.splitlines(), ""]:
        if line.startswith("| "):
            block.append([c.strip() for c in line.strip("|").split("|")])
        elif not line.startswith("|") and block:
            blocks.append(block)
            block = []
    return blocks[which]


def test_names_means_and_metrics(sweep):
    rows = {r.path: r for r in report.load_runs([sweep / "runs"])}
    a, b, c = (rows[str(sweep / "runs" / x)] for x in "abc")
    assert a.name == "log2, l0 mask t=100, λd=0.4"
    assert b.name == "log1, FLOPS λd=4"
    assert c.name == "log1, no reg"
    datasets = ["scifact", "nfcorpus"]
    assert b.mean_ndcg(datasets) == pytest.approx(0.35)
    assert b.mean_flops(datasets) == pytest.approx(0.15)
    assert b.mean_doc_len(datasets) == pytest.approx(25.0)
    assert (a.activation, a.mask_t, a.lambda_d, a.status, a.wall_s) == ("log2", 100, 0.4, "finished", 390.2)
    assert report.model_name("log2", 100, 0.04, {"mask": {"schedule": "linear", "t_start": 300}}) == (
        "log2, l0 mask t=300→100, λd=0.04"
    )


def test_run_dirs_direct_or_one_level_down_without_repeats_and_evaluations_left_out(sweep, caplog):
    direct = report.load_runs([sweep / "runs" / "a", sweep / "runs"])
    assert len(direct) == 7  # "a" given twice, once directly and once through its parent
    assert report.load_runs([sweep]) == []  # bm25/ and tiny/ are evaluations, not runs
    assert "pass it as --reference" in caplog.text


def test_table_references_first_then_sorted_runs_with_status(sweep):
    refs = [report.load_reference("BM25", sweep / "bm25"), report.load_reference("splade-tiny", sweep / "tiny")]
    rows = [*refs, *report.load_runs([sweep / "runs"])]
    datasets = report.datasets_of(rows)
    assert datasets == ["nfcorpus", "scifact"]  # BEIR-13 order
    table = report.format_table(rows, datasets, command="python -m src.report --runs x", date="2026-11-26")
    assert "Made with `python -m src.report --runs x` on 2026-11-26." in table
    body = table_rows(table)
    assert body[0] == [
        "model",
        "nfcorpus",
        "scifact",
        "mean NDCG@10",
        "dev mean",
        "FLOPS",
        "Doc_Len",
        "status",
        "train s",
    ]
    assert [r[0] for r in body[1:]] == [
        "BM25",
        "splade-tiny",
        "log1, no reg",
        "log1, FLOPS λd=4",
        "log1, FLOPS λd=40",
        "log1, l0 mask t=50, λd=0.4",
        "log1, l0 mask t=200, λd=0.4",
        "log2, FLOPS λd=40",
        "log2, l0 mask t=100, λd=0.4",
    ]
    by_name = {r[0]: r[1:] for r in body[1:]}
    assert by_name["BM25"] == ["0.3178", "0.6772", "0.4975", "-", "-", "-", "reference", "-"]
    assert by_name["log1, FLOPS λd=4"] == ["0.2000", "0.5000", "0.3500", "0.4000", "0.150", "25.0", "finished", "390"]
    assert by_name["log1, FLOPS λd=40"][-2] == "collapsed"
    assert by_name["log2, FLOPS λd=40"] == ["-", "-", "-", "-", "-", "-", "diverged", "390"]
    assert "- log1, FLOPS λd=40: collapsed (train/doc_len < 1.0 for 20 steps)." in table
    assert "- log2, FLOPS λd=40: diverged (NaN loss at step 12)." in table


def test_flops_each_activation_needs_for_equal_ndcg(tmp_path):
    """Activations compared at equal NDCG@10: each one's finished runs' Pareto frontier, interpolated."""
    for name, act, flops, ndcg in [
        ("a", "log1", 0.2, 0.40),
        ("b", "log1", 0.6, 0.48),
        ("f", "log1", 0.8, 0.30),  # dominated by b: not on the frontier
        ("c", "log1", 1.0, 0.50),
        ("d", "log2", 0.3, 0.46),
        ("e", "log2", 0.5, 0.50),
    ]:
        write_run(tmp_path / "runs" / name, act, 100, flops, evals={"scifact": (ndcg, flops, 50.0)})
    write_run(tmp_path / "runs" / "x", "log2", None, 40, status="collapsed", evals={"scifact": (0.1, 0.01, 1.0)})
    rows = report.load_runs([tmp_path / "runs"])
    assert report.flops_needed(rows, ["scifact"], "log1", 0.44) == pytest.approx(0.4)  # halfway from a to b
    assert report.flops_needed(rows, ["scifact"], "log2", 0.48) == pytest.approx(0.4)
    assert report.flops_needed(rows, ["scifact"], "log2", 0.40) == pytest.approx(0.3)  # its first point already
    assert report.flops_needed(rows, ["scifact"], "log1", 0.49) == pytest.approx(0.8)  # halfway from b to c
    assert report.flops_needed(rows, ["scifact"], "log1", 0.51) is None
    # A run averaged with its start and pruned after training is named so and stays off the activation's curve.
    write_run(tmp_path / "runs" / "p", "log1", 100, 0.1, evals={"scifact": (0.49, 0.3, 50.0)}, posthoc=(0.5, 0.2))
    rows = report.load_runs([tmp_path / "runs"])
    assert "log1, l0 mask t=100, λd=0.1, averaged 0.5 with the start, pruned 0.2" in [r.name for r in rows]
    assert report.flops_needed(rows, ["scifact"], "log1", 0.44) == pytest.approx(0.4)
    markers = [line.get_marker() for line in report.frontier_figure(rows, ["scifact"]).axes[0].lines]
    assert markers.count("D") == 1
    write_reference(tmp_path / "ref", evals={"scifact": (0.48, 2.0, 290.0)})
    table = report.format_table([report.load_reference("splade-tiny", tmp_path / "ref"), *rows], ["scifact"])
    assert table_rows(table, 1) == [
        ["mean NDCG@10 of", "level", "log1", "log2"],
        ["splade-tiny", "0.4800", "0.600", "0.400"],
    ]


def test_incomplete_mean_is_marked_and_same_names_disambiguated(tmp_path):
    write_run(tmp_path / "s1", seed=1)
    write_run(tmp_path / "s2", seed=2, evals={"scifact": (0.7, 1.0, 90.0)})
    rows = report.load_runs([tmp_path])
    assert [r.name for r in rows] == ["log2, l0 mask t=100, λd=0.4 (seed=1)", "log2, l0 mask t=100, λd=0.4 (seed=2)"]
    table = report.format_table(rows, ["scifact", "nfcorpus"])
    assert table_rows(table)[2][1:4] == ["0.7000", "-", "0.7000†"]
    assert "† mean over the datasets" in table


def test_paper_layout_datasets_as_rows_with_average_and_missing(sweep):
    rows = [report.load_reference("BM25", sweep / "bm25"), *report.load_runs([sweep / "runs" / "a"])]
    table = report.format_paper_table(rows)
    body = table_rows(table)
    assert body[0] == ["dataset", "BM25", "log2, l0 mask t=100, λd=0.4"]
    assert [r[0] for r in body[1:14]] == list(report.BEIR13.values())
    assert body[1] == ["TREC-COVID", "-", "-"]
    assert body[2] == ["NFCorpus", "31.78", "30.00"]
    assert body[12] == ["SciFact", "67.72", "60.00"]
    assert body[14] == ["**Average**", "49.75†", "45.00†"]
    assert body[15] == ["FLOPS", "-", "0.750"]


def test_cli_writes_table_frontier_curves_and_is_deterministic(sweep, tmp_path):
    metrics = "step,train/doc_len,train/masked_frac,train/loss\n0,200.5,0.0,\n0,,,1.2\n1,150.0,0.25,1.1\n"
    write_run(sweep / "runs" / "h", "log3", 100, 0.4, metrics=metrics)
    args = ["--runs", str(sweep / "runs"), "--reference", f"BM25={sweep / 'bm25'}", "--command", "make table"]
    report_main([*args, "--reference", f"splade-tiny (Siamese, λ=as shipped)={sweep / 'tiny'}", "--out", "o1"])
    assert "| splade-tiny (Siamese, λ=as shipped) |" in Path("o1/table.md").read_text()
    assert {p.name for p in Path("o1").iterdir()} == {"table.md", "frontier.png", "curves.png"}

    # The same inputs written in another order, with the JSON keys in another order: the same bytes.
    other = tmp_path / "other"
    for name in sorted((p.name for p in (sweep / "runs").iterdir()), reverse=True):
        results = json.loads((sweep / "runs" / name / "results.json").read_text())
        write_run(other / "runs" / name, metrics=metrics if name == "h" else None)
        (other / "runs" / name / "results.json").write_text(json.dumps(dict(reversed(results.items()))))
    (other / "bm25").mkdir()
    (other / "bm25" / "results.json").write_text((sweep / "bm25" / "results.json").read_text())
    (other / "tiny").mkdir()
    (other / "tiny" / "results.json").write_text((sweep / "tiny" / "results.json").read_text())
    args = ["--runs", str(other / "runs"), "--reference", f"BM25={other / 'bm25'}", "--command", "make table"]
    report_main([*args, "--reference", f"splade-tiny (Siamese, λ=as shipped)={other / 'tiny'}", "--out", "o2"])
    for name in ("table.md", "frontier.png", "curves.png"):
        assert Path("o1", name).read_bytes() == Path("o2", name).read_bytes(), name


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")  # 2025-11-26


def test_frontier_markers_scale_and_references(sweep):
    rows = [
        report.load_reference("BM25", sweep / "bm25"),
        report.load_reference("splade-tiny", sweep / "tiny"),
        *report.load_runs([sweep / "runs"]),
    ]
    fig = report.frontier_figure(rows, ["scifact", "nfcorpus"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"  # FLOPS from 0.15 to 1.34: under 20x
    markers = [(line.get_marker(), line.get_markerfacecolor()) for line in ax.lines if np.size(line.get_xdata()) == 1]
    assert ("x", "C0") in markers  # the collapsed log1 run
    assert sum(m == "o" and face == "none" for m, face in markers) == 2  # plain FLOPS and no reg: hollow
    assert sum(m == "o" and face != "none" for m, face in markers) == 3  # the l0 mask runs: filled
    assert any(m == "*" for m, _ in markers)  # splade-tiny has FLOPS
    assert any(line.get_linestyle() == "--" for line in ax.lines)  # BM25 has none: a dashed line
    write_run(sweep / "runs" / "sparse", "log2", 10, 4, evals={"scifact": (0.1, 0.001, 2.0)})
    fig = report.frontier_figure(report.load_runs([sweep / "runs"]), ["scifact", "nfcorpus"])
    assert fig.axes[0].get_xscale() == "log"
    # splade-tiny pruned post hoc at two more ratios: one dotted curve through all three, not three stars
    write_reference(
        sweep / "tiny-0.2", evals={"scifact": (0.65, 1.5, 200.0), "nfcorpus": (0.3, 0.4, 210.0)}, prune_ratio=0.2
    )
    write_reference(
        sweep / "tiny-0.4", evals={"scifact": (0.64, 0.9, 100.0), "nfcorpus": (0.29, 0.2, 110.0)}, prune_ratio=0.4
    )
    pruned = [report.load_reference(f"pruned {x}", sweep / x) for x in ("tiny", "tiny-0.2", "tiny-0.4")]
    ax = report.frontier_figure([*pruned, rows[0], *rows[2:]], ["scifact", "nfcorpus"]).axes[0]
    curve = [line for line in ax.lines if line.get_marker() == "s"]
    assert len(curve) == 1 and list(curve[0].get_xdata()) == pytest.approx([0.55, 0.95, 1.34])
    assert not any(line.get_marker() == "*" for line in ax.lines)


def test_training_curves_read_metrics_with_empty_cells(tmp_path):
    metrics = "step,train/doc_len,train/masked_frac,train/loss\n0,200.5,0.0,\n0,,,1.2\n4,150.0,0.25,1.1\n"
    run = write_run(tmp_path / "r", metrics=metrics)
    assert report.read_metrics(run)["train/doc_len"] == [(0, 200.5), (4, 150.0)]
    fig = report.training_curves([tmp_path])
    doc_len, masked = fig.axes
    assert doc_len.lines[0].get_label() == "log2, l0 mask t=100, λd=0.4"
    assert list(masked.lines[0].get_ydata()) == [0.0, 0.25]


def test_reference_spec_and_committed_notebook_has_no_outputs(tmp_path):
    (tmp_path / "a=b").mkdir()
    assert report.parse_reference(f"λd=0.4 run={tmp_path / 'a=b'}") == ("λd=0.4 run", tmp_path / "a=b")
    assert report.parse_reference("BM25=/nowhere") == ("BM25", Path("/nowhere"))
    with pytest.raises(ValueError, match="LABEL=DIR"):
        report.parse_reference("BM25")
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


# ---------------------------------------------------------------- the notebook, on two real tiny runs


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, data_dir, cache_dir) -> Path:
    """Two 4-step runs of splade-tiny on scifact, with and without the l0 mask."""
    from src.training.run import train

    runs = tmp_path_factory.mktemp("runs")
    for name, t in (("mask50", "mask.t=50"), ("flops", "mask.t=null")):
        cfg = compose_train(
            "debug=smoke",
            "trainer.max_steps=4",
            "trainer.log_every_n_steps=1",
            "optim.warmup_steps=1",
            "data.max_queries=32",
            "eval.max_queries=10",
            "eval.max_docs=100",
            "logger=csv",
            t,
            f"paths.output_dir={runs / name}",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={cache_dir}",
        )
        train(cfg)
    return runs


def test_notebook_runs_on_real_results(real_runs, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # A kernel spec for this very interpreter, so no other Python on the machine answers for "python3".
    spec = tmp_path / "jupyter" / "kernels" / "l0-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "l0 test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("L0_RESULTS", str(real_runs))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="l0-test", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = {c.id: c.outputs for c in nb.cells if c.cell_type == "code"}
    assert "2 models from" in outputs["load"][0]["text"]
    table = outputs["table"][0]["data"]["text/markdown"]
    assert "log1, l0 mask t=50, λd=0.1" in table and "log1, FLOPS λd=0.1" in table
    for cell in ("frontier", "curves"):
        assert any("image/png" in out.get("data", {}) for out in outputs[cell]), cell
