"""Training groups mined from a BEIR-layout train split: (query, 1 judged positive, G-1 hard negatives).

The negatives come from the top of a ranking of the whole corpus for the query (a `Ranker`): BM25's (the
default), the teachers' ensemble (`ensemble_ranker`) or the student's own (`src.data.prepare.student_ranker`).
"""

import random
from collections.abc import Callable

import torch

from src.data.beir import BeirDataset
from src.data.groups import Candidate
from src.retrieval import bm25

# bm25s's defaults without stemming, as the groups were first mined: keeps the README's training figures valid.
# Moving to bm25.BEIR_SETTINGS changes ~25-30% of the top-50 pool.
MINING_BM25 = bm25.BM25Settings(k1=1.5, stemmer=None)

# What negatives can be mined from (`negatives_from`): BM25, the teachers' ensemble, the untrained student.
NEGATIVES_FROM = ("bm25", "teachers", "student")

# (dataset, query ids, k) -> per query id, up to k corpus document ids, best first
Ranker = Callable[[BeirDataset, list[str], int], dict[str, list[str]]]
# query texts -> (Q, D) scores against every corpus document, in the dataset's doc_ids order
CorpusScorer = Callable[[list[str]], torch.Tensor]


def bm25_candidates(dataset: BeirDataset, qids: list[str], k: int) -> dict[str, list[str]]:
    """Top-k BM25 documents per query (positive scores only), best first."""
    doc_ids = dataset.doc_ids
    retriever = bm25.build_index([dataset.corpus[d] for d in doc_ids], MINING_BM25)
    hits = bm25.retrieve(retriever, [dataset.queries[q] for q in qids], k, MINING_BM25)
    return {qid: [doc_ids[i] for i, _ in ranked] for qid, ranked in zip(qids, hits, strict=True)}


def ensemble_search(
    scorers: list[CorpusScorer], queries: list[str], k: int, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the corpus by the sum of the scorers' scores, each min-max normalised per query over the corpus
    (the hybrid of BM25 and a dense retriever that BEIR papers use): (Q, k) scores and (Q, k) corpus positions,
    best first. Queries go `chunk` at a time, so no more than (chunk, D) scores are held at once."""
    values, positions = [], []
    for start in range(0, len(queries), chunk):
        texts = queries[start : start + chunk]
        total = None
        for scorer in scorers:
            scores = scorer(texts).float()  # (C, D)
            low, high = scores.amin(1, keepdim=True), scores.amax(1, keepdim=True)  # (C, 1) each
            scores = (scores - low) / (high - low).clamp(min=1e-12)
            total = scores if total is None else total + scores
        top = total.topk(min(k, total.shape[1]), dim=1)  # (C, k) each
        values.append(top.values)
        positions.append(top.indices)
    return torch.cat(values), torch.cat(positions)


def ensemble_ranker(scorers: list[CorpusScorer], chunk: int = 256) -> Ranker:
    """Negatives from the scorers' ensemble (`ensemble_search`)."""

    def rank(dataset: BeirDataset, qids: list[str], k: int) -> dict[str, list[str]]:
        _, positions = ensemble_search(scorers, [dataset.queries[q] for q in qids], k, chunk)
        return {q: [dataset.doc_ids[i] for i in row] for q, row in zip(qids, positions.tolist(), strict=True)}

    return rank


def mine_groups(
    dataset: BeirDataset, group_size: int, negatives_from_top: int, seed: int, ranker: Ranker = bm25_candidates
) -> tuple[list[Candidate], dict[str, int]]:
    """One group per judged query, in qrels order; also counts of what was skipped.

    The positive is drawn among the query's top-graded documents; negatives are drawn from the top
    `negatives_from_top` of `ranker` that the query has no judgement for (judged docs are never
    negatives, whatever their grade). A query with fewer candidates than G-1 is skipped and counted.
    """
    rng = random.Random(seed)
    qids = [q for q, judged in dataset.qrels.items() if max(judged.values()) > 0]
    candidates = ranker(dataset, qids, negatives_from_top + 50)
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
