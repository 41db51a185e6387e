"""Distributed evaluation: W ranks share a corpus's encoding, rank 0 assembles it and scores. The matrix,
the cache and the metrics are those of one process. Real splade-tiny and scifact, two CPU processes (gloo)."""

import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import src.retrieval.engine as retrieval
from src.data.beir import load_beir, subsample
from src.model.encoders import DocEncoder, compute_idf, load_tokenizer
from src.retrieval.engine import encode_documents
from src.retrieval.evaluation import EvalSettings, evaluate, evaluate_dataset
from tests.conftest import ROOT, compose_tool

WORLD = 2
TOKENS_PER_BATCH = 2048  # small batches: 300 documents make a few dozen, dealt out to the ranks
PIECE_NNZ = 4000  # a piece every few batches, so each rank sends several
SIAMESE = EvalSettings(max_length=128, query_max_length=64, tokens_per_batch=TOKENS_PER_BATCH, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(data_dir: Path):
    torch.set_num_threads(1)  # the same kernels, so the same bits, in every process
    dataset = subsample(load_beir(data_dir, "scifact", "test"), 20, 300)
    tokenizer = load_tokenizer(None)
    encoder = DocEncoder.from_pretrained(None, "log2").eval()
    return dataset, tokenizer, encoder


def _rank(rank: int, port: int, data_dir: Path, out: Path) -> None:
    retrieval.PIECE_NNZ = PIECE_NNZ
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        dataset, tokenizer, encoder = _setup(data_dir)
        texts = [dataset.corpus[d] for d in dataset.doc_ids]
        matrix = encode_documents(encoder, tokenizer, texts, 128, TOKENS_PER_BATCH, progress=False)
        encoded = []  # batches this rank encoded, counted through the encoder's forward
        encoder.register_forward_hook(lambda _m, args, _o: encoded.append(args[0].shape[0]))
        settings = EvalSettings(
            max_length=128, tokens_per_batch=TOKENS_PER_BATCH, cache_dir=out / "cache", progress=False
        )
        idf = compute_idf(dataset.corpus.values(), tokenizer)
        first = evaluate_dataset(dataset, "inference_free", settings, encoder, tokenizer, idf)
        share = sum(encoded)
        again = evaluate_dataset(dataset, "inference_free", settings, encoder, tokenizer, idf)  # rank 0's cache
        encoded_again = sum(encoded) - share
        siamese, _ = evaluate_dataset(dataset, "siamese", SIAMESE, encoder, tokenizer)
        result = {"matrix": matrix, "first": first, "again": again, "siamese": siamese, "share": share}
        result["encoded_again"] = encoded_again
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_encoding_and_rank_zero_gets_the_one_process_matrix_and_metrics(data_dir, tmp_path):
    mp.spawn(_rank, args=(_free_port(), data_dir, tmp_path), nprocs=WORLD, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]

    dataset, tokenizer, encoder = _setup(data_dir)
    texts = [dataset.corpus[d] for d in dataset.doc_ids]
    one = encode_documents(encoder, tokenizer, texts, 128, TOKENS_PER_BATCH, progress=False)
    assert ranks[1]["matrix"] is None
    merged = ranks[0]["matrix"]
    assert merged.shape == one.shape and merged.nnz == one.nnz > 0
    assert (merged != one).nnz == 0  # the same rows in the same order, bit for bit

    # Both ranks encoded a share: about half of the documents each, none twice.
    shares = [r["share"] for r in ranks]
    assert sum(shares) == len(texts) and min(shares) > 0.3 * len(texts)

    settings = EvalSettings(max_length=128, tokens_per_batch=TOKENS_PER_BATCH, progress=False)
    idf = compute_idf(dataset.corpus.values(), tokenizer)
    metrics, run = evaluate_dataset(dataset, "inference_free", settings, encoder, tokenizer, idf)
    assert ranks[1]["first"] == (None, None)
    assert ranks[0]["first"] == (metrics, run)
    assert ranks[0]["again"] == (metrics, run) and ranks[1]["again"] == (None, None)
    assert [r["encoded_again"] for r in ranks] == [0, 0]  # rank 0 read the cache, and told rank 1 so
    siamese, _ = evaluate_dataset(dataset, "siamese", SIAMESE, encoder, tokenizer)  # queries are sharded too
    assert ranks[0]["siamese"] == siamese and ranks[1]["siamese"] is None
    print(f"encoded per rank {shares}; NDCG@10 {metrics['ndcg@10']:.4f} on both")


@pytest.mark.slow  # the launcher path; the in-process 2-rank test above keeps the sharing in the default suite
def test_torchrun_evaluate_on_two_processes_writes_the_one_process_results(tmp_path, cli_env, data_dir):
    """`torchrun --nproc_per_node 2 -m src.evaluate ...`: the ranks join from torchrun's environment (gloo on
    CPUs), share the encoding, and rank 0 alone writes results.json and the run file."""
    args = ["max_queries=20", "max_docs=300", "max_length=128", "cache=false", "num_threads=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "src.evaluate", *args, f"paths.output_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoding documents (rank 0 of 2)" in proc.stderr  # the corpus was dealt out to both ranks
    two = json.loads((tmp_path / "two" / "results.json").read_text())

    one = evaluate(
        compose_tool("evaluate", *args, f"paths.output_dir={tmp_path / 'one'}", f"paths.data_dir={data_dir}")
    )
    assert two["eval"] == one["eval"]
    assert (tmp_path / "two" / "runs" / "scifact.trec").read_text() == (
        tmp_path / "one" / "runs" / "scifact.trec"
    ).read_text()
    print(f"torchrun x2: NDCG@10 {two['eval']['scifact']['ndcg@10']:.4f}, as one process")
