"""BEIR evaluation of a sparse retriever: exact retrieval over the whole corpus, one code path for
training's final evaluation and `python -m src.evaluate` (`evaluate(cfg)`, at the end of this module)."""

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from src.common.distributed import broadcast_from_first, init_from_env, local_device, rank
from src.common.io import atomic_write_json, atomic_write_text
from src.config import (
    ConfigError,
    check_activation,
    check_datasets,
    check_head_precision,
    check_model,
    resolve_output_dir,
)
from src.data.beir import BeirDataset, load_beir, subsample
from src.model.encoders import DocEncoder, IdfQueryEncoder, compute_idf, load_idf
from src.model.formats import load_retriever
from src.retrieval.engine import efficiency, encode_documents, encode_queries, search
from src.retrieval.index import CorruptIndex, SparseIndex, corpus_fingerprint, fingerprint, model_fingerprint, prune
from src.retrieval.metrics import ranking_metrics

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


# --- python -m src.evaluate ----------------------------------------------------------------------------------


def validate_eval(cfg: DictConfig) -> None:
    """Everything that can be checked before a model loads, with the key in the message."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.activation is not None:
        check_activation(cfg.activation)
    if cfg.prune_ratio is not None and not 0 <= cfg.prune_ratio < 1:
        raise ConfigError(f"prune_ratio: must be in [0, 1), got {cfg.prune_ratio}")
    if cfg.idf is not None and not Path(cfg.idf).is_file():
        raise ConfigError(f"idf: {cfg.idf} does not exist")
    check_head_precision("head_precision", cfg.head_precision)
    eval_device(cfg.device)
    check_model("model", cfg.model)
    check_datasets("datasets", cfg.paths.data_dir, cfg.datasets, cfg.download)


def eval_device(name: str) -> torch.device:
    """device: auto (this process's GPU when there is one, else the CPU), or a torch device name."""
    if name == "auto":
        return local_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device: {name!r} is not auto or a torch device name such as cpu or cuda:0") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} asked for, but torch sees no CUDA device here")
    return device


def evaluate(cfg: DictConfig) -> dict:
    """Evaluates, writes results.json and runs/<dataset>.trec; returns the results ({} on ranks other than 0
    when launched on several processes, e.g. by torchrun)."""
    validate_eval(cfg)
    init_from_env()
    first = rank() == 0
    output_dir = resolve_output_dir(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    needs_model = cfg.mode in ("inference_free", "siamese")
    retriever = load_retriever(cfg.model, cfg.activation, cfg.prune_ratio, cfg.head_precision) if needs_model else None
    if retriever is not None:
        retriever.doc_encoder.to(eval_device(cfg.device))
    settings = EvalSettings(
        max_length=cfg.max_length,
        query_max_length=cfg.query_max_length,
        tokens_per_batch=cfg.tokens_per_batch,
        top_k=cfg.top_k,
        bf16=cfg.bf16,
        cache_dir=Path(cfg.paths.cache_dir) if cfg.cache else None,
    )
    evals, idf_sources = {}, {}
    for name in cfg.datasets:
        dataset = load_beir(cfg.paths.data_dir, name, cfg.split, cfg.download)
        dataset = subsample(dataset, cfg.max_queries, cfg.max_docs)
        idf = None
        if cfg.mode == "inference_free" and first:  # queries are rank 0's alone: no other rank needs the IDF
            idf, idf_sources[name] = _query_idf(cfg, retriever, dataset)
        evals[name], run = evaluate_dataset(
            dataset,
            cfg.mode,
            settings,
            encoder=retriever.doc_encoder if retriever else None,
            tokenizer=retriever.tokenizer if retriever else None,
            idf=idf,
            prune_ratio=retriever.prune_ratio if retriever else 0.0,
            teachers=OmegaConf.to_container(cfg.teachers, resolve=True) if cfg.mode == "teachers" else None,
        )
        if not first:  # another rank's share of the encoding is done; rank 0 scores
            continue
        write_trec_run(output_dir / "runs" / f"{name}.trec", run, tag=f"l0-sparse-{cfg.mode}")

    if not first:
        return {}
    results = {
        "config": {
            "model": retriever.source if retriever else None,
            **({"teachers": [t.get("name") or t["kind"] for t in cfg.teachers]} if cfg.mode == "teachers" else {}),
            "mode": cfg.mode,
            "activation": retriever.doc_encoder.activation_name if retriever else None,
            "prune_ratio": retriever.prune_ratio if retriever else None,
            "idf": idf_sources or None,
            "max_length": cfg.max_length,
            "split": cfg.split,
            "resolved": OmegaConf.to_container(cfg, resolve=True),
        },
        "eval": evals,
    }
    atomic_write_json(output_dir / "results.json", results)
    print(
        f"\nl0-sparse eval: model={results['config']['model'] or '-'} mode={cfg.mode}\n{format_table(evals)}\n"
        f"results: {output_dir / 'results.json'}",
        flush=True,
    )
    return results


def _query_idf(cfg: DictConfig, retriever, dataset) -> tuple[torch.Tensor, str]:
    """The IDF for inference-free queries and where it came from: idf=, the model's idf.json, or the corpus."""
    if cfg.idf is not None:
        return load_idf(Path(cfg.idf), retriever.tokenizer), str(cfg.idf)
    if retriever.idf is not None:
        return retriever.idf, f"{retriever.source}/idf.json"
    return compute_idf(dataset.corpus.values(), retriever.tokenizer), f"{dataset.name} corpus"
