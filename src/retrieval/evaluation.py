"""BEIR evaluation of a sparse retriever: exact retrieval over the whole corpus, one code path for
training's final evaluation and `python -m src.evaluate`."""

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from src.data.beir import BeirDataset
from src.common.distributed import broadcast_from_first, rank
from src.model.encoders import DocEncoder, IdfQueryEncoder
from src.index import CorruptIndex, SparseIndex, corpus_fingerprint, fingerprint, model_fingerprint, prune
from src.common.io import atomic_write_text
from src.retrieval.metrics import ranking_metrics
from src.retrieval.engine import efficiency, encode_documents, encode_queries, search

log = logging.getLogger(__name__)
MODES = ("inference_free", "siamese", "bm25", "teachers")


@dataclass(frozen=True)
class EvalSettings:
    max_length: int = 512  # document tokens (BEIR evaluation length)
    query_max_length: int = 512  # query tokens; only siamese mode runs queries through the model
    tokens_per_batch: int = 8192  # padded tokens per encoder batch: bounds the (B, L, V) logits
    top_k: int = 1000
    bf16: bool = False  # autocast the transformer body; the head's precision is DocEncoder.head_precision
    cache_dir: Path | None = None  # encoded corpora are kept here; None re-encodes every time
    progress: bool = True


def _autocast(encoder: DocEncoder, bf16: bool):
    device = next(encoder.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def encode_corpus(
    encoder: DocEncoder, tokenizer: PreTrainedTokenizerBase, dataset: BeirDataset, settings: EvalSettings
) -> SparseIndex | None:
    """The corpus as a sparse index, read from the cache when these weights, activation, length,
    precision and documents were encoded before.

    Under torch.distributed every rank calls this: the ranks share the encoding (`encode_documents`) and
    rank 0, which alone reads and writes the cache, gets the index; the other ranks get None."""
    doc_ids = dataset.doc_ids
    texts = [dataset.corpus[d] for d in doc_ids]
    folder = None  # the cache entry: only rank 0 needs its key (hashing the weights and every document)
    if settings.cache_dir is not None and rank() == 0:
        key = fingerprint(
            model_fingerprint(encoder),
            encoder.activation_name,
            settings.max_length,
            settings.bf16,
            corpus_fingerprint(doc_ids, texts),
        )
        folder = settings.cache_dir / "encoded" / f"{dataset.name}-{key}"
    cached = None
    if folder is not None and folder.is_dir():
        try:
            log.info("%s: encoded corpus from cache %s", dataset.name, folder)
            cached = SparseIndex.load(folder)
        except (CorruptIndex, ValueError, OSError) as err:
            log.warning("%s: cache entry unusable (%s); encoding again", dataset.name, err)
    if broadcast_from_first(cached is not None):  # the other ranks encode only when rank 0 must
        return cached
    with _autocast(encoder, settings.bf16):
        matrix = encode_documents(
            encoder, tokenizer, texts, settings.max_length, settings.tokens_per_batch, settings.progress
        )
    if matrix is None:  # a rank other than 0: its rows went to rank 0
        return None
    meta = {
        "dataset": dataset.name,
        "activation": encoder.activation_name,
        "max_length": settings.max_length,
        "bf16": settings.bf16,
    }
    index = SparseIndex(matrix, doc_ids, meta)
    if folder is not None:
        index.save(folder)
    return index


def query_vectors(
    mode: str,
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    encoder: DocEncoder | None = None,
    idf: torch.Tensor | None = None,
    settings: EvalSettings = EvalSettings(),
):
    """(num_queries, V) CSR: IDF bag of words (inference_free) or the MLM encoder (siamese).
    Under torch.distributed every rank calls this (siamese queries are encoded as documents are); None on
    ranks other than 0."""
    if mode == "inference_free":
        if rank() != 0:
            return None
        return encode_queries(IdfQueryEncoder(idf, tokenizer.all_special_ids), tokenizer, texts)
    if mode == "siamese":
        with _autocast(encoder, settings.bf16):
            return encode_documents(
                encoder, tokenizer, texts, settings.query_max_length, settings.tokens_per_batch, progress=False
            )
    raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")


def evaluate_dataset(
    dataset: BeirDataset,
    mode: str = "inference_free",
    settings: EvalSettings = EvalSettings(),
    encoder: DocEncoder | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    idf: torch.Tensor | None = None,
    prune_ratio: float = 0.0,
    teachers: list[dict] | None = None,
) -> tuple[dict[str, float | int | None], dict[str, dict[str, float]]]:
    """The `eval.<dataset>` block of results.json, and the run (query id -> {doc id: score}).

    mode "teachers": the ensemble of `teachers` (training's teacher specs; those that can rank a corpus) as a
    full-corpus retriever, each min-max normalised per query, as negatives_from=teachers mines: the ceiling
    distillation aims at.

    Under torch.distributed every rank calls this: all ranks encode (a share each), rank 0 alone searches
    and scores, and the other ranks get (None, None)."""
    start = time.perf_counter()
    query_ids = list(dataset.queries)
    if mode in ("bm25", "teachers") and rank() != 0:
        return None, None  # nothing to share: they run on rank 0
    if mode in ("bm25", "teachers"):
        if mode == "bm25":
            from src.retrieval.bm25 import bm25_search

            results = bm25_search(dataset, k=settings.top_k, progress=settings.progress)
        else:
            results = teacher_search(dataset, teachers or [], settings.top_k)
        # Their terms are stems or dense dimensions, not the model's vocabulary: FLOPS would not be comparable.
        eff = {"flops": None, "doc_len": None, "q_len": None}
    else:
        index = encode_corpus(encoder, tokenizer, dataset, settings)
        queries = query_vectors(mode, [dataset.queries[q] for q in query_ids], tokenizer, encoder, idf, settings)
        if index is None:  # a rank other than 0: its share of the encoding is done
            return None, None
        docs = prune(index.matrix, prune_ratio)
        results = search(queries, docs, query_ids, dataset.doc_ids, k=settings.top_k)
        eff = efficiency(queries, docs)
    # A judged query without text (a defect of the data, warned by load_beir) retrieves nothing, whatever ties
    # an all-zero query vector would return.
    results = {q: (hits if dataset.queries[q].strip() else {}) for q, hits in results.items()}
    metrics = {
        **ranking_metrics(dataset.qrels, results),
        **eff,
        "num_queries": len(query_ids),
        "num_docs": len(dataset.doc_ids),
    }
    log.info("%s (%s): %s (%.0f s)", dataset.name, mode, metrics, time.perf_counter() - start)
    return metrics, results


def teacher_search(dataset: BeirDataset, teachers: list[dict], k: int) -> dict[str, dict[str, float]]:
    """query id -> {doc id: score}: the top-k of the teachers' ensemble (`src.data.mining.ensemble_search`); a
    document with the query's own id is never returned."""
    from src.data.mining import ensemble_search
    from src.teachers import TeacherSpec, build_teacher

    corpus = [dataset.corpus[d] for d in dataset.doc_ids]
    built = [build_teacher(TeacherSpec.from_config(dict(t), f"teachers[{i}]"), corpus) for i, t in enumerate(teachers)]
    scorers = [t.score_corpus for t in built if hasattr(t, "score_corpus")]
    if not scorers:
        raise ValueError("mode=teachers: no teacher can rank a corpus (bm25 and bi_encoder can)")
    query_ids = list(dataset.queries)
    values, positions = ensemble_search(scorers, [dataset.queries[q] for q in query_ids], k + 1)
    results = {}
    for qid, row_values, row_positions in zip(query_ids, values.tolist(), positions.tolist(), strict=True):
        hits = [(dataset.doc_ids[i], v) for i, v in zip(row_positions, row_values, strict=True)]
        results[qid] = dict([(d, v) for d, v in hits if d != qid][:k])
    return results


def write_trec_run(path: Path, results: dict[str, dict[str, float]], tag: str) -> None:
    """TREC run format: `qid Q0 docid rank score tag`, best first."""
    lines = []
    for qid, hits in results.items():
        ranked = sorted(hits.items(), key=lambda item: (-item[1], item[0]))
        lines += [f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}" for rank, (doc_id, score) in enumerate(ranked, 1)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def format_table(evals: dict[str, dict]) -> str:
    """The summary table both entry points print."""

    def num(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    lines = [f"{'dataset':<12}{'NDCG@10':>9}{'R@100':>8}{'MRR@10':>8}{'Doc_Len':>9}{'Q_Len':>7}{'FLOPS':>8}"]
    for name, m in evals.items():
        lines.append(
            f"{name:<12}{num(m['ndcg@10'], 9, 4)}{num(m['recall@100'], 8, 4)}{num(m['mrr@10'], 8, 4)}"
            f"{num(m['doc_len'], 9, 1)}{num(m['q_len'], 7, 1)}{num(m['flops'], 8, 3)}"
        )
    return "\n".join(lines)
