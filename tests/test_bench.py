"""benchmarks/encode_train.py compares like with like: on real scifact text, ours, the straightforward HF head
and sentence-transformers give the same document vectors and the same first-step KL; the bf16-body row differs
only slightly, and its NDCG@10 worker and counting rule work (on a tiny subsample). Not a timing test."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.model.encoders import compute_idf, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("encode_train", ROOT / "benchmarks" / "encode_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_document_vectors_agree(bench, data_dir):
    texts = bench.load_documents(8)
    vectors = {impl: bench.dense_rows(bench.build_encode(impl, CPU)(texts), 8) for impl in bench.ENCODE_IMPLS}
    ours = vectors.pop("ours")
    assert ours.shape == (8, 30522) and (ours > 0).sum(1).min() > 50  # real SPLADE vectors, not empty ones
    # The bf16 body runs (its vectors move) but stays close: weights reach about 2.4, it moved 0.06 when written.
    assert bench.VECTOR_TOLERANCE < np.abs(vectors.pop(bench.BF16_BODY) - ours).max() < 0.2
    assert set(vectors) == set(bench.EXACT_IMPLS) - {"ours"}
    for impl, v in vectors.items():
        assert np.abs(v - ours).max() < bench.VECTOR_TOLERANCE, impl


def test_ndcg_worker_and_rule(bench, data_dir):
    # A tiny subsample only: the full scifact evaluation is the benchmark's, not the tests'.
    spec = {"settings": list(bench.NDCG_SETTINGS), "subsample": {"max_queries": 5, "max_docs": 50}}
    record = bench.worker_ndcg(spec, CPU)
    assert (record["queries"], record["docs"]) == (5, 50) and record["full_split"] == {"queries": 300, "docs": 5183}
    values, deltas = bench.ndcg_summary(record)
    assert set(values) == {"fp32", "ours", bench.BF16_BODY} and all(0 < v <= 1 for v in values.values())
    assert deltas["ours"] == pytest.approx(0, abs=1e-3)  # the auto head is exact: same ranking as fp32
    rule = bench.issue_rule(True, {"ours": 0.0, bench.BF16_BODY: -0.0019}, subsampled=False)
    assert [rule[i]["counts"] for i in bench.ENCODE_IMPLS] == [True, True, True, True, None, None]
    assert rule[bench.BF16_BODY]["counts"] is True
    assert bench.issue_rule(True, {bench.BF16_BODY: 0.0021}, False)[bench.BF16_BODY]["counts"] is False
    assert bench.issue_rule(False, {bench.BF16_BODY: None}, False)["ours"]["counts"] is False
    speeds = {"ours": 120.0, "ours_fp32": 90.0, "ours_bf16": 125.0, bench.BF16_BODY: 160.0, "hf": 30.0, "st": 40.0}
    best = bench.best_counting(speeds, bench.issue_rule(True, {bench.BF16_BODY: 0.003}, False))
    assert best["impl"] == "ours_bf16" and best["x_st"] == pytest.approx(3.125) and best["met"]


def test_training_losses_agree(bench, data_dir):
    tokenizer = load_tokenizer(None)
    batch = bench.training_batch(tokenizer, 2)
    assert batch.teacher.shape == (2, 2) and batch.doc_ids.shape[0] == 4
    idf = compute_idf(batch.queries + batch.positives + batch.negatives, tokenizer)
    values = {}
    for impl in bench.TRAIN_IMPLS:
        train = bench.build_train(impl, idf, tokenizer, CPU)
        values[impl] = bench.first_step_values(train, batch)
        assert all(m.p > 0 for m in train.model.modules() if isinstance(m, torch.nn.Dropout))  # restored
        bench.train_step(train, torch.optim.AdamW(train.parameters(), lr=bench.LR), batch)  # backward runs too
    ours = values["ours"]
    for impl, v in values.items():
        assert v["kl"] == pytest.approx(ours["kl"], abs=bench.KL_TOLERANCE), impl
        # Same vectors, so each FLOPS definition gives the same number on every implementation's documents...
        assert v["flops_per_slot"] == pytest.approx(ours["flops_per_slot"], rel=1e-5), impl
        assert v["flops_pooled"] == pytest.approx(ours["flops_pooled"], rel=1e-5), impl
    # ...but each side optimises its own: ours per document slot, ST over all N x G documents pooled.
    assert ours["lambda_flops_optimised"] == pytest.approx(bench.LAMBDA * ours["flops_per_slot"], rel=1e-5)
    assert values["st"]["lambda_flops_optimised"] == pytest.approx(bench.LAMBDA * ours["flops_pooled"], rel=1e-5)


def test_load_mode_runs_ours_with_our_thread_defaults_and_peers_without(bench, monkeypatch):
    """--load compares each implementation as its users run it: ours with src.common.runtime's THREAD_DEFAULTS (what
    `import src` sets), HF and ST and the competing process without them, unless the caller set them."""
    monkeypatch.setattr(bench.runtime, "APPLIED", dict(bench.runtime.THREAD_DEFAULTS))  # as `import src` set them
    for name, value in bench.runtime.THREAD_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    assert all(bench.worker_env("ours")[n] == v for n, v in bench.runtime.THREAD_DEFAULTS.items())
    for impl in ("st", "hf", None):
        assert not set(bench.runtime.THREAD_DEFAULTS) & set(bench.worker_env(impl)), impl
        assert bench.worker_env(impl)[bench.runtime.KEEP_FREED_MEMORY_ENV] == "0", impl  # glibc's own heap
    assert bench.runtime.KEEP_FREED_MEMORY_ENV not in bench.worker_env("ours")
    monkeypatch.setattr(bench.runtime, "APPLIED", {})  # the caller set them: everyone runs with them
    assert bench.worker_env("st")["OMP_WAIT_POLICY"] == bench.runtime.THREAD_DEFAULTS["OMP_WAIT_POLICY"]


def test_kept_under_load_is_the_share_of_idle_throughput(bench):
    metrics = {
        "encode_docs_per_s": {"ours": 100.0, "hf": 20.0, "st": 30.0},
        "encode_docs_per_s_loaded": {"ours": 50.0, "hf": 5.0, "st": None},
        "train_step_s": {"ours": 0.5, "hf": 4.0, "st": 4.0},
        "train_step_s_loaded": {"ours": 1.0, "hf": 16.0, "st": 8.0},
    }
    kept = bench.kept_under_load(metrics)
    assert kept["encode"] == {"ours": 0.5, "hf": 0.25, "st": None}
    assert kept["train"] == {"ours": 0.5, "hf": 0.25, "st": 0.5}
