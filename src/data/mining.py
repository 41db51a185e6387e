"""Training groups mined from a BEIR-layout train split: (query, 1 judged positive, G-1 BM25 hard negatives)."""

import random

from src import bm25
from src.data.beir import BeirDataset
from src.data.groups import Candidate

# bm25s's defaults without stemming, as the groups were first mined: keeps the README's training figures valid.
# Moving to bm25.BEIR_SETTINGS changes ~25-30% of the top-50 pool.
MINING_BM25 = bm25.BM25Settings(k1=1.5, stemmer=None)


def bm25_candidates(dataset: BeirDataset, qids: list[str], k: int) -> dict[str, list[str]]:
    """Top-k BM25 documents per query (positive scores only), best first."""
    doc_ids = dataset.doc_ids
    retriever = bm25.build_index([dataset.corpus[d] for d in doc_ids], MINING_BM25)
    hits = bm25.retrieve(retriever, [dataset.queries[q] for q in qids], k, MINING_BM25)
    return {qid: [doc_ids[i] for i, _ in ranked] for qid, ranked in zip(qids, hits, strict=True)}


def mine_groups(
    dataset: BeirDataset, group_size: int, negatives_from_top: int, seed: int
) -> tuple[list[Candidate], dict[str, int]]:
    """One group per judged query, in qrels order; also counts of what was skipped.

    The positive is drawn among the query's top-graded documents; negatives are drawn from the
    BM25 top `negatives_from_top` that the query has no judgement for (judged docs are never
    negatives, whatever their grade). A query with fewer candidates than G-1 is skipped and counted.
    """
    rng = random.Random(seed)
    qids = [q for q, judged in dataset.qrels.items() if max(judged.values()) > 0]
    candidates = bm25_candidates(dataset, qids, negatives_from_top + 50)
    groups, too_few = [], 0
    for qid in qids:
        judged = dataset.qrels[qid]
        best = max(judged.values())
        positive = rng.choice(sorted(d for d, g in judged.items() if g == best))
        pool = [d for d in candidates[qid] if d not in judged][:negatives_from_top]
        if len(pool) < group_size - 1:
            too_few += 1
            continue
        doc_ids = [positive, *rng.sample(pool, group_size - 1)]
        groups.append(Candidate(qid, dataset.queries[qid], doc_ids, [dataset.corpus[d] for d in doc_ids]))
    counts = {
        "queries_judged": len(dataset.qrels),
        "queries_without_positive": len(dataset.qrels) - len(qids),
        "queries_with_too_few_negatives": too_few,
        "groups": len(groups),
    }
    return groups, counts
