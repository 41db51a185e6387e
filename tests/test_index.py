"""The on-disk index: written chunk by chunk, read whole or memory-mapped, checked against its checksums."""

import json
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from src.retrieval.engine import search
from src.retrieval.index import CorruptIndex, SparseIndex, index_writer

ROOT = Path(__file__).resolve().parents[1]


def _corpus(num_docs=900, vocab=300, seed=0):
    rng = np.random.default_rng(seed)
    docs = sp.random(num_docs, vocab, density=0.04, format="csr", random_state=rng, dtype=np.float32)
    return docs, [f"d{i}" for i in range(num_docs)]


def _mapped(array: np.ndarray) -> bool:
    """Whether array is a view of a memory-mapped file (its chain of bases ends in an mmap)."""
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, mmap.mmap)


def test_chunked_writer_equals_save_and_mmap_load_equals_load(tmp_path):
    docs, doc_ids = _corpus()
    SparseIndex(docs, doc_ids, {"source": "whole"}).save(tmp_path / "whole")
    with index_writer(tmp_path / "chunked", docs.shape[1], {"source": "chunks"}) as add:
        for start in (0, 100, 101, 550):  # uneven chunks, one of a single document
            stop = {0: 100, 100: 101, 101: 550, 550: 900}[start]
            add(docs[start:stop], doc_ids[start:stop])
        add(docs[:0], [])  # an empty chunk changes nothing
    whole = SparseIndex.load(tmp_path / "whole")
    chunked = SparseIndex.load(tmp_path / "chunked")
    mapped = SparseIndex.load(tmp_path / "chunked", mmap=True)
    for index in (whole, chunked, mapped):
        assert (index.matrix != docs).nnz == 0 and index.doc_ids == doc_ids
    assert chunked.meta == {"source": "chunks"}
    header = json.loads((tmp_path / "chunked" / "index.json").read_text())
    assert header["shape"] == [900, 300] and header["nnz"] == docs.nnz
    # Memory-mapped: the CSR arrays are views of the files, not copies read into memory.
    assert _mapped(mapped.matrix.data) and _mapped(mapped.matrix.indices) and not _mapped(whole.matrix.data)
    queries = sp.random(20, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    query_ids = [f"q{i}" for i in range(20)]
    expected = search(queries, docs, query_ids, doc_ids, k=15)
    assert search(queries, mapped.matrix, query_ids, mapped.doc_ids, k=15, doc_chunk=128) == expected


def test_checksums_catch_a_damaged_array_and_the_writer_refuses_mismatched_rows(tmp_path):
    docs, doc_ids = _corpus(num_docs=50)
    SparseIndex(docs, doc_ids).save(tmp_path / "index")
    data = np.load(tmp_path / "index" / "data.npy")
    np.save(tmp_path / "index" / "data.npy", data * 2)
    with pytest.raises(CorruptIndex, match="data.npy"):
        SparseIndex.load(tmp_path / "index", mmap=True)
    with pytest.raises(ValueError, match="49 ids"), index_writer(tmp_path / "bad", docs.shape[1]) as add:
        add(docs, doc_ids[:49])
    assert not (tmp_path / "bad").exists()  # nothing half-written is left


@pytest.mark.slow  # five subprocesses that each import torch: ~20 s
def test_retrieval_benchmark_runs_and_the_methods_agree(tmp_path):
    """A small run of `make bench-retrieval`'s script: ours equals scipy's top-k; BMP, given our queries on
    its own weight grid, returns our top-10 (the disagreement on raw queries is its query rounding only)."""
    out = tmp_path / "result.json"
    cmd = [sys.executable, "benchmarks/retrieval.py", "--docs", "3000", "--queries", "40", "--k", "10"]
    cmd += ["--output", str(out), "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["same_top_k"] is True
    assert run["bmp"]["overlap_at_10_on_its_query_grid"] == 1.0
    assert 0.5 < run["bmp"]["overlap_at_10"] <= 1.0
    assert result["corpus"]["docs"] == 3000 and result["corpus"]["index_bytes"] > 0
    assert "| 10 | BMP" in done.stdout
