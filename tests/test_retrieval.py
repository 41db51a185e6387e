import numpy as np
import pytest
import scipy.sparse as sp

import src.retrieval.engine as retrieval
from src.retrieval.engine import efficiency, plan_chunks, search
from src.retrieval.metrics import ranking_metrics


def test_search_equals_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    docs = sp.random(500, 300, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    queries = sp.random(37, 300, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    doc_ids, query_ids = [f"d{i}" for i in range(500)], [f"q{i}" for i in range(37)]
    got = search(queries, docs, query_ids, doc_ids, k=20, query_chunk=8, doc_chunk=64)
    dense = (queries @ docs.T).toarray()
    for row, qid in enumerate(query_ids):
        expected = {doc_ids[j] for j in np.argsort(-dense[row])[:20] if dense[row, j] > 0}
        assert set(got[qid]) == expected
        for doc_id, score in got[qid].items():
            assert score == pytest.approx(dense[row, int(doc_id[1:])], rel=1e-5)


def test_a_document_with_the_query_id_is_never_returned():
    docs = sp.csr_matrix(np.array([[5.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=np.float32))
    queries = sp.csr_matrix(np.array([[1.0, 0.0]], dtype=np.float32))
    got = search(queries, docs, ["same"], ["same", "other", "third"], k=2, doc_chunk=2)
    assert list(got["same"]) == ["third", "other"]  # best first, and "same" (score 5) left out
    assert "same" not in got["same"]


def _brute_force(queries, docs, query_ids, doc_ids, k):
    """The rule search promises: score > 0, not the query's own id, best first, ties to the earlier doc."""
    dense = (queries @ docs.T).toarray()  # (nq, nd)
    results = {}
    for row, qid in enumerate(query_ids):
        order = np.lexsort((np.arange(len(doc_ids)), -dense[row]))  # by score down, then position up
        kept = [j for j in order if dense[row, j] > 0 and doc_ids[j] != qid][:k]
        results[qid] = {doc_ids[j]: float(dense[row, j]) for j in kept}
    return results


def _integer_corpus(seed, num_docs=700, num_queries=23, vocab=40):
    """Small-integer weights: sums are exact in float32, so ties are real ties and comparisons exact."""
    rng = np.random.default_rng(seed)
    docs = sp.random(num_docs, vocab, density=0.08, format="csr", random_state=rng, dtype=np.float32)
    docs.data = rng.integers(1, 4, docs.nnz).astype(np.float32)
    queries = sp.random(num_queries, vocab, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    queries.data = rng.integers(1, 3, queries.nnz).astype(np.float32)
    return queries, docs


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"query_chunk": 5, "doc_chunk": 64, "score_rows": 2, "threads": 1},
        {"query_chunk": 5, "doc_chunk": 64, "score_rows": 2, "threads": 2},
        {"doc_chunk": 3, "score_rows": 1},
        {"query_chunk": 1, "doc_chunk": 50},
        {"doc_chunk": 333, "score_rows": 4, "threads": 3},
    ],
)
@pytest.mark.parametrize("k", [1, 7, 100, 5000])
def test_ties_order_and_any_chunking_give_the_brute_force_answer(kwargs, k):
    queries, docs = _integer_corpus(1)
    doc_ids = [f"d{i}" for i in range(docs.shape[0])]
    query_ids = [f"q{i}" for i in range(queries.shape[0] - 3)] + ["d5", "d64", "d699"]  # own ids at edges
    got = search(queries, docs, query_ids, doc_ids, k=k, **kwargs)
    expected = _brute_force(queries, docs, query_ids, doc_ids, k)
    for qid in query_ids:
        assert list(got[qid].items()) == list(expected[qid].items())  # same documents, scores and order


def test_the_public_scipy_path_gives_the_same_answer(monkeypatch):
    queries, docs = _integer_corpus(2)
    doc_ids, query_ids = [f"d{i}" for i in range(docs.shape[0])], [f"q{i}" for i in range(queries.shape[0])]
    fast = search(queries, docs, query_ids, doc_ids, k=50, doc_chunk=100)
    monkeypatch.setattr(retrieval, "_sparsetools", None)
    assert search(queries, docs, query_ids, doc_ids, k=50, doc_chunk=100) == fast


def test_int64_indices_and_float64_inputs():
    queries, docs = _integer_corpus(3)
    docs.indices, docs.indptr = docs.indices.astype(np.int64), docs.indptr.astype(np.int64)
    doc_ids, query_ids = [f"d{i}" for i in range(docs.shape[0])], [f"q{i}" for i in range(queries.shape[0])]
    got = search(queries.astype(np.float64), docs, query_ids, doc_ids, k=20, doc_chunk=128)
    assert got == _brute_force(queries, docs, query_ids, doc_ids, 20)


def test_k_beyond_the_corpus_an_empty_query_and_non_positive_scores():
    docs = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [2.0, 1.0]], dtype=np.float32))
    queries = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    got = search(queries, docs, ["a", "empty", "b"], ["w", "x", "y", "z"], k=1000, doc_chunk=3)
    assert got == {"a": {"z": 2.0, "w": 1.0}, "empty": {}, "b": {"x": 2.0, "z": 1.0}}  # "y" scores -3: left out


def test_self_id_is_excluded_across_a_chunk_boundary():
    # The query's own document is the best match and the first of the second chunk; the runner-up
    # closes the first chunk.
    docs = sp.csr_matrix(np.array([[1.0], [1.0], [2.0], [9.0], [1.0]], dtype=np.float32))
    queries = sp.csr_matrix(np.array([[1.0], [1.0]], dtype=np.float32))
    got = search(queries, docs, ["d3", "other"], ["d0", "d1", "d2", "d3", "d4"], k=2, doc_chunk=3)
    assert got == {"d3": {"d2": 2.0, "d0": 1.0}, "other": {"d3": 9.0, "d2": 2.0}}


def test_crowded_chunk_where_the_sample_misleads():
    # One term: documents at multiples of 4 (the positions a stride-4 sample sees) score 2 + j 1e-6, the
    # rest 1. The sampled cut is reached by too few, so the exact partition takes over.
    width, k = 19_200, 300
    weights = np.where(np.arange(width) % 4 == 0, 2 + np.arange(width) * 1e-6, 1.0).astype(np.float32)
    docs = sp.csr_matrix(weights[:, None])
    doc_ids = [f"d{i}" for i in range(width)]
    got = search(sp.csr_matrix(np.ones((1, 1), dtype=np.float32)), docs, ["q"], doc_ids, k=k, doc_chunk=width)
    assert list(got["q"]) == [f"d{j}" for j in range(width - 4, width - 4 * k - 1, -4)]


def test_plan_chunks_stays_in_its_budget():
    assert plan_chunks(1000, 1_000_000, 100_000_000, 1000, memory_budget_mib=1024) == (1000, 131_072, 256)
    budget = 64 * 2**20
    for k, workers in [(1000, 1), (100_000, 4)]:
        query_chunk, doc_chunk, score_rows = plan_chunks(10**6, 10**7, 10**9, k, 64, workers)
        assert 8 * query_chunk * k <= budget / 4 and 2 * 8 * 100 * doc_chunk <= budget / 4
        assert workers * score_rows * (12 * doc_chunk + 32 * k) <= budget / 2 and score_rows >= 1


def test_efficiency_by_hand():
    docs = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=np.float32))
    queries = sp.csr_matrix(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]], dtype=np.float32))
    # p_d = [0.5, 0, 1], p_q = [1, 0, 0.5]: FLOPS = 0.5 + 0.5, Doc_Len 1.5, Q_Len 1.5
    assert efficiency(queries, docs) == pytest.approx({"flops": 1.0, "doc_len": 1.5, "q_len": 1.5})


def test_ranking_metrics_by_hand_and_empty_results_count_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
    results = {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {}}
    metrics = ranking_metrics(qrels, results)
    # q1: relevant at rank 2 -> NDCG 1/log2(3), MRR 1/2, recall 1; q2 found nothing -> 0. Mean over 2.
    assert metrics["ndcg@10"] == pytest.approx(0.63093 / 2, abs=1e-5)
    assert metrics["mrr@10"] == pytest.approx(0.25)
    assert metrics["recall@100"] == pytest.approx(0.5)


def test_ranking_metrics_needs_a_result_list_per_judged_query():
    with pytest.raises(ValueError, match="no results"):
        ranking_metrics({"q1": {"d1": 1}}, {})
