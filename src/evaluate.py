"""Evaluate any model on BEIR, standalone: `python -m src.evaluate model=RUN_DIR datasets=[scifact,nfcorpus]`.

On several GPUs: `torchrun --nproc_per_node 8 -m src.evaluate model=RUN_DIR paths.output_dir=DIR ...`: the
ranks share each corpus's encoding, rank 0 searches, scores and writes the results."""

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from src.config import (
    ConfigError,
    check_activation,
    check_datasets,
    check_head_precision,
    check_model,
    resolve_output_dir,
)
from src.data.beir import load_beir, subsample
from src.common.distributed import init_from_env, local_device, rank
from src.model.encoders import compute_idf, load_idf
from src.retrieval.evaluation import MODES, EvalSettings, evaluate_dataset, format_table, write_trec_run
from src.export import load_retriever
from src.common.io import atomic_write_json

log = logging.getLogger(__name__)


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


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
