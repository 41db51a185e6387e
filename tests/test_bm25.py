import pytest

from src.data.beir import BeirDataset, load_beir
from src.retrieval.bm25 import bm25_search
from src.retrieval.metrics import ranking_metrics


@pytest.mark.parametrize(("name", "beir_ndcg"), [("scifact", 0.665), ("nfcorpus", 0.325)])
def test_ndcg_matches_beirs_published_bm25(data_dir, name, beir_ndcg):
    dataset = load_beir(data_dir, name, "test")
    results = bm25_search(dataset, k=100, progress=False)
    assert set(results) == set(dataset.queries)
    ndcg = ranking_metrics(dataset.qrels, results)["ndcg@10"]
    assert ndcg == pytest.approx(beir_ndcg, abs=0.03), f"{name}: BM25 NDCG@10 {ndcg:.4f}, BEIR reports {beir_ndcg}"


def test_document_with_the_query_id_is_never_returned():
    # Document "q1" repeats query "q1" verbatim, so it would rank first if allowed.
    corpus = {"q1": "sparse retrieval with l0 masks", "d1": "sparse retrieval", "d2": "l0 masks", "d3": "cooking pasta"}
    queries = {"q1": "sparse retrieval with l0 masks", "q2": "sparse pasta"}
    dataset = BeirDataset("toy", corpus, queries, {"q1": {"d1": 1}, "q2": {"d3": 1}}, "test")
    assert set(bm25_search(dataset, k=2, progress=False)["q1"]) == {"d1", "d2"}  # still k hits without its own doc
    results = bm25_search(dataset, k=10, progress=False)
    assert set(results["q1"]) == {"d1", "d2"}  # zero-score documents are not padded in
    assert set(results["q2"]) == {"d3", "d1", "q1"}  # another query's id is an ordinary document
