import numpy as np
import pytest
import scipy.sparse as sp

from src.metrics import ranking_metrics
from src.retrieval import efficiency, search


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
    assert list(got["same"]) == ["third", "other"] or set(got["same"]) == {"third", "other"}
    assert "same" not in got["same"]


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
