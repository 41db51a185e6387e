"""Real training on a real slice of scifact with the real splade-tiny."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from src.data import prepare as prepare_module
from src.model.encoders import resolve_model
from src.retrieval.evaluation import evaluate
from src.training.run import prepared_set, train
from tests.conftest import ROOT, compose_tool, compose_train

VOCAB = 30522


def test_few_steps_in_process_stay_finite_and_sparse(tmp_path, data_dir, cache_dir):
    cfg = compose_train(
        "debug=smoke",
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=1",
        "data.max_queries=64",
        "eval.max_queries=10",
        "eval.max_docs=200",
        "logger=csv",
        "mask.t=50",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={cache_dir}",
    )
    results = train(cfg)
    assert results == json.loads((tmp_path / "results.json").read_text())
    assert results["train"]["steps"] == 6
    with open(tmp_path / "metrics" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    doc_lens = [float(r["train/doc_len"]) for r in rows if r.get("train/doc_len")]
    assert all(0 < d < VOCAB / 20 for d in doc_lens)  # sparse: a few hundred of 30,522 terms at most
    for name in ("train/loss_rank", "train/loss_flops", "train/lambda", "train/threshold", "train/masked_frac"):
        assert any(r.get(name) for r in rows), name
    scifact = results["eval"]["scifact"]
    assert (scifact["num_queries"], scifact["num_docs"]) == (10, 200)
    assert 0 < scifact["doc_len"] < VOCAB / 20 and scifact["flops"] > 0
    assert (tmp_path / "model" / "idf.json").is_file() and (tmp_path / "model" / "config.json").is_file()
    # The default posthoc step: weights averaged with the start's, document weights pruned by their readers.
    assert json.loads((tmp_path / "model" / "l0_sparse.json").read_text())["prune_ratio"] == cfg.posthoc.prune_ratio
    assert (results["config"]["start_weight"], results["config"]["prune_ratio"]) == (0.5, 0.2)
    # model.train_vocabulary: false (the default): the term embedding keeps splade-tiny's values, the rest trains
    trained = load_file(tmp_path / "model" / "model.safetensors")
    shipped = load_file(Path(resolve_model(None)) / "model.safetensors")
    vocabulary = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[vocabulary], shipped[vocabulary])
    assert not torch.equal(
        trained["bert.encoder.layer.1.output.dense.weight"], shipped["bert.encoder.layer.1.output.dense.weight"]
    )
    assert not torch.equal(trained["cls.predictions.bias"], shipped["cls.predictions.bias"])


def test_cli_smoke_run_writes_results(tmp_path, cli_env):
    """The issue's command, as a user types it (W&B offline), end to end."""
    env = cli_env
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "activation=log2",
        "mask.t=200",
        "reg.lambda_d=0.04",
        "debug=smoke",
        f"paths.output_dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["config"]["activation"], results["config"]["mask_t"], results["config"]["lambda_d"]) == (
        "log2",
        200,
        0.04,
    )
    assert results["train"]["steps"] == 20
    scifact = results["eval"]["scifact"]
    assert set(scifact) >= {"ndcg@10", "recall@100", "mrr@10", "flops", "doc_len", "q_len", "num_queries", "num_docs"}
    # Plausible for splade-tiny on 50 queries over 1,000 documents (the untrained model scores ~0.85).
    assert 0.5 < scifact["ndcg@10"] <= 1.0 and scifact["recall@100"] >= scifact["ndcg@10"] - 0.2
    assert 10 < scifact["doc_len"] < 1000 and 0 < scifact["flops"] < scifact["q_len"]
    assert "NDCG@10" in proc.stdout and list(out.glob("wandb/offline-run-*"))  # a run `wandb sync` can upload
    # Output to a pipe: progress as log lines (first step, last step), not a redrawn bar; no warnings.
    assert "step 1/20  loss " in proc.stdout and "step 20/20  loss " in proc.stdout and "ETA" in proc.stdout
    assert "warning" not in (proc.stdout + proc.stderr).lower()


def test_bf16_run_on_a_prepared_set_without_recomputing_it(tmp_path, data_dir, cache_dir, monkeypatch):
    """trainer.precision=bf16-mixed: the body autocasts, the head keeps its own dtype, losses stay finite.
    data.prepared: the run reads the set as it is; no mining or teacher runs again."""
    cfg = compose_train(
        "debug=smoke",
        "trainer.max_steps=3",
        "optim.warmup_steps=1",
        "trainer.log_every_n_steps=1",
        "trainer.precision=bf16-mixed",
        "data.max_queries=64",
        "eval.max_queries=5",
        "eval.max_docs=100",
        "logger=csv",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={cache_dir}",
    )
    folder = prepared_set(cfg)  # built here, or found in the session's cache

    def recomputed(*args, **kwargs):
        raise AssertionError("the prepared set was recomputed")

    monkeypatch.setattr(prepare_module, "mine_groups", recomputed)
    monkeypatch.setattr(prepare_module, "_score_shard", recomputed)
    cfg.data.prepared = str(folder)
    results = train(cfg)
    assert results["config"]["train_data"] == str(folder)
    assert results["config"]["teachers"] == ["bm25", "minilm"]
    with open(tmp_path / "metrics" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)


def test_training_on_a_query_set_raises_ndcg_on_that_query_set(tmp_path, data_dir, cache_dir):
    """The sanity check that failed before the student's scale was fitted (README, "Why training lost NDCG"): 64
    scifact train queries, 8 epochs of them with the default recipe (documents cut at 128 tokens) and no
    regulariser. NDCG@10 on those same queries, over 1,000 documents, must rise well above the untrained model's
    with the same query IDF. Measured: untrained 0.6812, trained 0.7921 (12 epochs: 0.7950); with the student's
    scale fixed at 1 (experiment=no_reg_fixed_scale, 12 epochs) 0.7617, which fails. Every weight trains here: with
    the default's frozen vocabulary (model.train_vocabulary=false) the model memorises less, 0.7579, against 0.7440
    with the fixed scale, too close to tell the two losses apart. MiniLM reads 256 document tokens here, as when the
    bar was set: with the default's 128 (a teacher that sees less of scifact's abstracts) the trained model reaches
    0.7814, 0.0002 above the bar, too close for a check that must hold on other CPUs."""
    where = [f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}"]
    queries = ["eval.split=train", "eval.max_queries=64", "eval.max_docs=1000", "eval.max_length=128"]
    cfg = compose_train(
        "debug=smoke",
        "experiment=no_reg",
        "data.group_size=8",  # the default recipe's, not debug=smoke's
        "model.train_vocabulary=true",
        "data.teachers.1.max_length=256",
        "data.max_queries=64",  # the first 64 train queries: those eval.split=train eval.max_queries=64 scores
        "trainer.max_steps=64",  # 8 queries a step: 8 epochs
        "logger=csv",
        f"paths.output_dir={tmp_path / 'trained'}",
        *queries,
        *where,
    )
    trained = train(cfg)["eval"]["scifact"]["ndcg@10"]
    untrained = evaluate(
        compose_tool(
            "evaluate",
            "datasets=[scifact]",
            *(q.removeprefix("eval.") for q in queries),
            f"idf={prepared_set(cfg) / 'idf.json'}",
            f"paths.output_dir={tmp_path / 'untrained'}",
            *where,
        )
    )["eval"]["scifact"]["ndcg@10"]
    print(f"NDCG@10 on the 64 trained-on queries: untrained {untrained:.4f}, trained {trained:.4f}")
    assert trained >= untrained + 0.1
