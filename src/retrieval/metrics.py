"""Ranking metrics through pytrec_eval, with BEIR's own evaluation code."""

import logging

from beir.retrieval.evaluation import EvaluateRetrieval


def ranking_metrics(qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]]) -> dict[str, float]:
    """NDCG@10, Recall@100, MRR@10, averaged over the judged queries, as BEIR reports them.

    Every judged query must have a (possibly empty) result list, so none drops out of the mean.
    """
    missing = [q for q in qrels if q not in results]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no results, e.g. {missing[:3]}")
    # pytrec_eval skips queries with an empty run; a sentinel non-relevant doc keeps them in at 0.
    results = {q: (r if r else {"__no_result__": 0.0}) for q, r in results.items() if q in qrels}
    logging.disable(logging.INFO)  # BEIR prints every metric at INFO, some on the root logger
    try:
        ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, results, [10, 100], ignore_identical_ids=True)
        mrr = EvaluateRetrieval.evaluate_custom(qrels, results, [10], metric="mrr")
    finally:
        logging.disable(logging.NOTSET)
    return {"ndcg@10": ndcg["NDCG@10"], "recall@100": recall["Recall@100"], "mrr@10": mrr["MRR@10"]}
