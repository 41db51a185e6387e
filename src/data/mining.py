"""Training groups for the cpu-small protocol: (query, 1 positive, G-1 BM25 hard negatives) with
scores from the Siamese SPLADE teacher, cached on disk so a second run does not recompute them."""

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from src import bm25
from src.data.beir import BeirDataset
from src.encoders import DocEncoder, load_tokenizer, resolve_model
from src.index import corpus_fingerprint, fingerprint
from src.io import atomic_write_text

log = logging.getLogger(__name__)
GROUPS_FORMAT_VERSION = 1
# bm25s's defaults without stemming, as the groups were first mined: keeps cached groups and the README's training
# figures valid. Moving to bm25.BEIR_SETTINGS changes ~25-30% of the top-50 pool; bump GROUPS_FORMAT_VERSION then.
MINING_BM25 = bm25.BM25Settings(k1=1.5, stemmer=None)


@dataclass(frozen=True)
class Group:
    query_id: str
    doc_ids: list[str]  # positive first, then G-1 negatives
    teacher_scores: list[float]


@dataclass(frozen=True)
class MiningConfig:
    group_size: int = 2
    negatives_from_top: int = 50  # negatives are sampled from this many BM25 candidates
    teacher: str | None = None  # None: the bundled splade-tiny
    teacher_activation: str = "log1"  # SPLADE's own activation for the Siamese teacher
    max_length: int = 256
    query_max_length: int = 64
    batch_size: int = 32
    seed: int = 0


def bm25_candidates(dataset: BeirDataset, qids: list[str], k: int) -> dict[str, list[str]]:
    """Top-k BM25 documents per query (positive scores only), best first."""
    doc_ids = dataset.doc_ids
    retriever = bm25.build_index([dataset.corpus[d] for d in doc_ids], MINING_BM25)
    hits = bm25.retrieve(retriever, [dataset.queries[q] for q in qids], k, MINING_BM25)
    return {qid: [doc_ids[i] for i, _ in ranked] for qid, ranked in zip(qids, hits, strict=True)}


def sample_groups(dataset: BeirDataset, cfg: MiningConfig) -> tuple[list[tuple[str, list[str]]], dict[str, int]]:
    """One (query id, [positive, negatives...]) per judged query; also counts of what was skipped.

    The positive is drawn among the query's top-graded documents; negatives are drawn from the
    BM25 top `negatives_from_top` that the query has no judgement for (judged docs are never
    negatives, whatever their grade).
    """
    rng = random.Random(cfg.seed)
    qids = [q for q, judged in dataset.qrels.items() if max(judged.values()) > 0]
    candidates = bm25_candidates(dataset, qids, cfg.negatives_from_top + 50)
    groups, skipped_few_negatives = [], 0
    for qid in qids:
        judged = dataset.qrels[qid]
        best = max(judged.values())
        positive = rng.choice(sorted(d for d, g in judged.items() if g == best))
        pool = [d for d in candidates[qid] if d not in judged][: cfg.negatives_from_top]
        if len(pool) < cfg.group_size - 1:
            skipped_few_negatives += 1
            continue
        groups.append((qid, [positive, *rng.sample(pool, cfg.group_size - 1)]))
    counts = {
        "queries_judged": len(dataset.qrels),
        "queries_without_positive": len(dataset.qrels) - len(qids),
        "queries_with_too_few_negatives": skipped_few_negatives,
        "groups": len(groups),
    }
    return groups, counts


class SiameseTeacher:
    """Scores s(q, d) = w(q) . w(d) with queries and documents both through the MLM encoder."""

    def __init__(self, name_or_path: str | None, activation: str = "log1"):
        self.encoder = DocEncoder.from_pretrained(name_or_path, activation).eval()
        self.tokenizer = load_tokenizer(name_or_path)

    @torch.inference_mode()
    def score(self, queries: list[str], docs: list[list[str]], max_length: int, query_max_length: int) -> torch.Tensor:
        """queries: N texts; docs: N lists of G texts. Returns (N, G).

        Only the query's non-zero terms matter to the dot product, so documents are projected
        onto those columns alone: exact, and the projection touches tens of columns instead of V.
        """
        n, g = len(docs), len(docs[0])
        q = self.tokenizer(queries, padding=True, truncation=True, max_length=query_max_length, return_tensors="pt")
        q_vecs = self.encoder(q["input_ids"], q["attention_mask"])  # (N, V)
        d = self.tokenizer(
            [t for group in docs for t in group],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        scores = torch.zeros(n, g)
        for i in range(n):
            terms = q_vecs[i].nonzero().squeeze(-1)  # (T,)
            rows = slice(i * g, (i + 1) * g)
            d_terms = self.encoder.encode_terms(d["input_ids"][rows], d["attention_mask"][rows], terms)  # (G, T)
            scores[i] = d_terms @ q_vecs[i, terms]
        return scores


def _fingerprint(dataset: BeirDataset, cfg: MiningConfig) -> str:
    """Cache key: the data itself, the teacher's weights and every mining setting."""
    model_dir = Path(resolve_model(cfg.teacher))
    # A hub id has no local files: its name in cfg is the key.
    weights = [p.read_bytes() for p in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))]
    judged = [[qid, dataset.queries[qid], sorted(grades.items())] for qid, grades in dataset.qrels.items()]
    texts = [dataset.corpus[d] for d in dataset.doc_ids]
    return fingerprint(
        GROUPS_FORMAT_VERSION, asdict(cfg), dataset.split, judged, corpus_fingerprint(dataset.doc_ids, texts), *weights
    )


def load_or_build_groups(dataset: BeirDataset, cfg: MiningConfig, cache_dir: Path) -> list[Group]:
    cache_file = Path(cache_dir) / "groups" / f"{dataset.name}-{dataset.split}-{_fingerprint(dataset, cfg)}.jsonl"
    if cache_file.is_file():
        log.info("training groups for %s from cache %s", dataset.name, cache_file)
        return [Group(**json.loads(line)) for line in cache_file.read_text().splitlines()]

    groups, counts = sample_groups(dataset, cfg)
    log.info("mined %s: %s", dataset.name, counts)
    teacher = SiameseTeacher(cfg.teacher, cfg.teacher_activation)
    scored: list[Group] = []
    for start in tqdm(range(0, len(groups), cfg.batch_size), desc=f"teacher scores {dataset.name}", unit="batch"):
        chunk = groups[start : start + cfg.batch_size]
        scores = teacher.score(
            [dataset.queries[q] for q, _ in chunk],
            [[dataset.corpus[d] for d in ids] for _, ids in chunk],
            cfg.max_length,
            cfg.query_max_length,
        )
        scored += [Group(q, ids, s) for (q, ids), s in zip(chunk, np.round(scores.numpy(), 6).tolist(), strict=True)]
    atomic_write_text(cache_file, "".join(json.dumps(asdict(g)) + "\n" for g in scored))
    return scored
