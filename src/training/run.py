"""A training run (`train(cfg)`, what `python -m src.train` runs): train an inference-free sparse retriever, export it,
evaluate it on BEIR and write results.json."""

import json
import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from src.common.io import atomic_write_json, atomic_write_text
from src.config import ConfigError, per_device_batch_size, resolve_output_dir, validate
from src.data.beir import has_split, load_beir, subsample
from src.data.groups import PreparedSet
from src.data.module import DistillationDataModule
from src.data.prepare import SETTINGS, prepare, prepared_key
from src.model.encoders import DocEncoder, IdfQueryEncoder, load_idf, load_tokenizer, query_frequency
from src.model.formats import export_model, model_folder
from src.retrieval.evaluation import EvalSettings, evaluate_dataset, format_table
from src.training.checkpoints import AtomicCheckpointIO, SaveThenRequeue, StepCheckpoint, latest_valid
from src.training.guards import TrainingGuard
from src.training.module import SparseRetrieverModule
from src.training.progress import TrainingProgress

log = logging.getLogger(__name__)


def _run_config(cfg: DictConfig, train_set: PreparedSet) -> dict:
    """The `config` block of results.json: the knobs first, then the whole resolved config."""
    return {
        "activation": cfg.activation,
        "mask_t": cfg.mask.t,
        "lambda_d": cfg.reg.lambda_d,
        "T": cfg.reg.T,
        "model": cfg.model.name_or_path or "splade-tiny (bundled)",
        "seed": cfg.seed,
        "loss": cfg.loss.name,
        "group_size": train_set.group_size,
        "train_data": str(train_set.folder),
        "teachers": train_set.teachers,
        "max_steps": cfg.trainer.max_steps,
        "start_weight": cfg.posthoc.start_weight,
        "prune_ratio": cfg.posthoc.prune_ratio,
        "resolved": OmegaConf.to_container(cfg, resolve=True),
    }


def prepared_set(cfg: DictConfig) -> Path:
    """data.prepared, or the set the data keys describe: prepared into the cache on first use, then reused."""
    if cfg.data.prepared:
        return Path(cfg.data.prepared)
    renamed = {"seed": "mining_seed", "batch_size": "teacher_batch_size"}  # prepare's name -> data's
    settings = {key: cfg.data[renamed.get(key, key)] for key in SETTINGS if key != "student"}
    settings = OmegaConf.create(
        {
            **settings,
            "student": str(model_folder(cfg.model.name_or_path)) if cfg.model.name_or_path else None,
            "download": cfg.data.download,
            "paths": {"data_dir": cfg.paths.data_dir, "output_dir": None},
        }
    )
    key = prepared_key(settings)
    settings.paths.output_dir = str(Path(cfg.paths.cache_dir) / "prepared" / key)
    return prepare(settings, key)


def _datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, folder: Path) -> DistillationDataModule:
    return DistillationDataModule(
        tokenizer,
        prepared_dir=folder,
        batch_size=per_device_batch_size(cfg),
        max_length=cfg.model.max_length,
        query_max_length=cfg.model.query_max_length,
        num_workers=cfg.data.num_workers,
        bucket_by_length=cfg.data.bucket_by_length,
        seed=cfg.seed,
    )


def train(cfg: DictConfig) -> dict:
    """Trains, evaluates, saves the model and writes results.json; returns its content.

    Data parallel (trainer.devices > 1, strategy ddp): every rank runs this, trains and helps encode the
    evaluation corpora; only global rank 0 exports, searches, scores and writes results.json. The other ranks
    return {}."""
    validate(cfg)  # fails on bad keys and missing data before any model is loaded
    if cfg.resume:
        cfg.paths.output_dir = cfg.resume
    output_dir = resolve_output_dir(cfg)
    finished = _check_run_dir(cfg, output_dir)
    if finished is not None:
        return finished
    checkpoint = latest_valid(output_dir / "checkpoints")
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    elif cfg.resume:
        raise ConfigError(f"resume: {output_dir} has no complete checkpoint under checkpoints/ to resume from")
    L.seed_everything(cfg.seed, workers=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    model_source = model_folder(cfg.model.name_or_path)  # a run directory continues from its model/
    tokenizer = load_tokenizer(model_source)
    folder = prepared_set(cfg)
    datamodule = _datamodule(cfg, tokenizer, folder)
    datamodule.setup("fit")

    # IDF of the training corpora (the prepared set's idf.json) or query.idf, frozen unless query.idf_trainable.
    idf = load_idf(Path(cfg.query.idf or folder / "idf.json"), tokenizer)
    doc_encoder = DocEncoder.from_pretrained(model_source, cfg.activation, cfg.model.head_precision, cfg.model.dropout)
    if not cfg.model.train_vocabulary:
        doc_encoder.freeze_vocabulary()
    if cfg.model.compile:
        doc_encoder.compile_body()
    query_encoder = IdfQueryEncoder(idf, tokenizer.all_special_ids, trainable=cfg.query.idf_trainable)
    frequency = None
    if cfg.reg.term_weights == "query_frequency":  # of the training queries, as the query encoder tokenises them
        queries = (group.query for group in datamodule.train_set)
        frequency = query_frequency(queries, tokenizer, cfg.model.query_max_length)
    module = SparseRetrieverModule(doc_encoder, query_encoder, cfg, frequency)

    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    # Every run keeps its per-step metrics in metrics/metrics.csv too: the notebook and the report read them there.
    history = CSVLogger(save_dir=str(output_dir), name="", version="metrics")
    loggers = [logger, history] if logger and not isinstance(logger, CSVLogger) else [logger or history]
    guard = TrainingGuard(cfg.guard.doc_len_floor, cfg.guard.patience, cfg.guard.check_finite)
    saver = StepCheckpoint(output_dir / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep, guard.stopped)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers,
        default_root_dir=str(output_dir),
        # The guard first: a diverged step is never checkpointed. The saver before the requeue: saved, then requeued.
        callbacks=[guard, saver, SaveThenRequeue(), TrainingProgress()],
        plugins=[AtomicCheckpointIO()],
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning cannot see that the datamodule's sampler resumes mid-epoch (state_dict / load_state_dict).
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    train_wall = time.perf_counter() - start
    first = trainer.global_rank == 0
    if cfg.posthoc.start_weight and guard.status != "diverged":
        start_model = DocEncoder.from_pretrained(model_source, cfg.activation, cfg.model.head_precision)
        doc_encoder.merge_with(start_model, cfg.posthoc.start_weight)

    evals, dev = {}, {}
    if guard.status != "diverged":  # NaN weights: nothing worth exporting or evaluating; checkpoints keep the last good
        if first:
            idf = query_encoder.idf.detach()
            export_model(doc_encoder, tokenizer, idf, output_dir / "model", cfg.posthoc.prune_ratio)
        doc_encoder.to(trainer.strategy.root_device)  # Lightning's teardown left the model on the CPU
        # Every rank evaluates: under DDP the ranks share the corpus encoding and rank 0 searches and scores.
        evals = {
            name: _evaluate(cfg, name, cfg.eval.split, doc_encoder, query_encoder, tokenizer)
            for name in cfg.eval.datasets
        }
        if cfg.eval.dev_split:  # for choosing settings; the corpora are encoded once (cache)
            with_dev = [d for d in cfg.eval.datasets if has_split(cfg.paths.data_dir, d, cfg.eval.dev_split)]
            if len(with_dev) < len(cfg.eval.datasets):  # e.g. trec-covid: test qrels only
                log.info(
                    "no %s split, not scored on it: %s",
                    cfg.eval.dev_split,
                    sorted(set(cfg.eval.datasets) - set(with_dev)),
                )
            dev = {
                name: _evaluate(cfg, name, cfg.eval.dev_split, doc_encoder, query_encoder, tokenizer)
                for name in with_dev
            }
    if not first:  # DDP: the other ranks are done; rank 0 writes the results
        return {}
    results = {
        "status": guard.status,  # finished | collapsed | diverged
        **({"reason": guard.reason} if guard.stopped() else {}),
        "config": _run_config(cfg, datamodule.train_set),
        "train": {
            "steps": trainer.global_step,
            "doc_len": float(trainer.callback_metrics.get("train/doc_len", float("nan"))),
            "wall_s": round(train_wall, 1),
        },
        "eval": evals,
        **({"dev": dev} if dev else {}),
    }
    atomic_write_json(output_dir / "results.json", results)
    if logger:
        summary = {f"val/{ds}/{metric}": value for ds, block in evals.items() for metric, value in block.items()}
        summary |= {f"dev/{ds}/{metric}": value for ds, block in dev.items() for metric, value in block.items()}
        summary["eff/flops"] = sum(b["flops"] for b in evals.values()) / max(1, len(evals))
        summary["eff/doc_len"] = sum(b["doc_len"] for b in evals.values()) / max(1, len(evals))
        logger.log_metrics(summary, step=trainer.global_step)
        logger.finalize("success" if not guard.stopped() else guard.status)
        if hasattr(logger.experiment, "finish"):  # close the W&B run so the offline folder is complete
            logger.experiment.finish()
    _print_summary(results, output_dir)
    return results


def _check_run_dir(cfg: DictConfig, output_dir: Path) -> dict | None:
    """A run dir belongs to one config: the first start records it; a restart (to resume) must match it.
    Returns the results of a run that already finished there, so rerunning its command does nothing."""
    output_dir.mkdir(parents=True, exist_ok=True)
    recorded = output_dir / "run_config.yaml"
    current = OmegaConf.to_container(cfg, resolve=True)
    for key in ("resume", "num_threads"):  # neither changes what the run computes
        current.pop(key)
    current["paths"].pop("output_dir")  # the folder itself
    if recorded.is_file():
        before = OmegaConf.to_container(OmegaConf.load(recorded))
        changed = sorted(_differences(before, current))
        if changed:
            raise ConfigError(
                f"paths.output_dir: {output_dir} holds a run with another config (differs in {', '.join(changed)}); "
                "rerun with the same settings to resume it, or choose another folder"
            )
        if (output_dir / "results.json").is_file():
            log.info("%s already finished; its results.json stands", output_dir)
            return json.loads((output_dir / "results.json").read_text())
    else:
        atomic_write_text(recorded, OmegaConf.to_yaml(OmegaConf.create(current)))
    return None


def _differences(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _evaluate(
    cfg: DictConfig, name: str, split: str, doc_encoder: DocEncoder, query_encoder: IdfQueryEncoder, tokenizer
) -> dict[str, float | int | None] | None:
    test = load_beir(cfg.paths.data_dir, name, split, cfg.data.download)
    test = subsample(test, cfg.eval.max_queries, cfg.eval.max_docs)
    settings = EvalSettings(
        max_length=cfg.eval.max_length,
        top_k=cfg.eval.top_k,
        bf16=cfg.eval.bf16,
        cache_dir=Path(cfg.paths.cache_dir),
    )
    idf = query_encoder.idf.detach().cpu()
    metrics, _ = evaluate_dataset(
        test, "inference_free", settings, doc_encoder, tokenizer, idf, prune_ratio=cfg.posthoc.prune_ratio
    )
    return metrics  # None on DDP ranks other than 0


def _print_summary(results: dict, output_dir: Path) -> None:
    c = results["config"]
    lines = [
        f"\nl0-sparse run: activation={c['activation']} mask.t={c['mask_t']} reg.lambda_d={c['lambda_d']} "
        f"steps={results['train']['steps']} ({results['train']['wall_s']} s)",
        f"{c['resolved']['eval']['split']} split (the reported figures):",
        format_table(results["eval"]),
    ]
    if "dev" in results:
        lines += [f"{c['resolved']['eval']['dev_split']} split (to choose settings on):", format_table(results["dev"])]
    print("\n".join([*lines, f"results: {output_dir / 'results.json'}"]), flush=True)
