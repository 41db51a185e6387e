"""`python -m src.export`: writes a model (a run directory, a model folder, a hub id) in one of the on-disk
formats of src/model/formats.py, with the IDF its queries use. The config is conf/tools/export.yaml."""

import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig

from src.common.io import atomic_dir, is_nonempty_dir
from src.config import ConfigError, check_activation, check_model, resolve_output_dir
from src.data.corpus import corpus_texts
from src.model.activations import LOG1P_COUNTS
from src.model.encoders import compute_idf, load_idf
from src.model.formats import (
    FORMATS,
    SPARSE_CONFIG,
    Retriever,
    export_model,
    export_sentence_transformers,
    load_retriever,
    model_folder,
    splade_pooling_plan,
)


def validate_export(cfg: DictConfig) -> None:
    """Everything that can be checked before a model loads, with the key in the message."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format: {cfg.format!r} is not one of {', '.join(FORMATS)}")
    if cfg.format == "sentence-transformers" and importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError(
            "format: sentence-transformers needs the package sentence-transformers>=6 (pip install -e '.[st]')"
        )
    if cfg.activation is not None:
        check_activation(cfg.activation)
    if cfg.prune_ratio is not None and not 0 <= cfg.prune_ratio < 1:
        raise ConfigError(f"prune_ratio: must be in [0, 1), got {cfg.prune_ratio}")
    if cfg.format == "sentence-transformers" and cfg.prune_ratio:
        raise ConfigError(f"prune_ratio: {_NO_PRUNING_IN_ST}")
    if not isinstance(cfg.max_length, int) or isinstance(cfg.max_length, bool) or cfg.max_length < 3:
        raise ConfigError(f"max_length: must be an integer >= 3, got {cfg.max_length!r}")
    check_model("model", cfg.model)
    if cfg.idf is not None and cfg.idf_corpus is not None:
        raise ConfigError("idf: set idf (a file) or idf_corpus (a corpus to compute it on), not both")
    if cfg.idf is not None and not Path(cfg.idf).is_file():
        raise ConfigError(f"idf: {cfg.idf} does not exist")
    if cfg.idf_corpus is not None:
        _idf_corpus(cfg)
    folder = model_folder(cfg.model)
    if cfg.idf is None and cfg.idf_corpus is None and not (folder and (Path(folder) / "idf.json").is_file()):
        raise ConfigError(
            f"idf: {folder or 'splade-tiny (bundled)'} has no idf.json; give idf=FILE (`python -m src.idf CORPUS` "
            "writes one) or idf_corpus=NAME_OR_PATH (a BEIR dataset under paths.data_dir or a corpus file)"
        )


_NO_PRUNING_IN_ST = (
    "a sentence-transformers folder cannot drop document weights below a ratio of the document's maximum (it has "
    "no such step); set prune_ratio=0 to export the unpruned vectors, or use format=opensearch"
)


def _idf_corpus(cfg: DictConfig) -> Path:
    """idf_corpus: an existing path (BEIR folder, corpus.jsonl, id<TAB>text file) or a dataset under paths.data_dir."""
    for path in (Path(cfg.idf_corpus), Path(cfg.paths.data_dir) / str(cfg.idf_corpus)):
        if path.is_file() or (path / "corpus.jsonl").is_file():
            return path.resolve()
    raise ConfigError(
        f"idf_corpus: {cfg.idf_corpus} is neither a corpus (a BEIR folder, a corpus.jsonl, an id<TAB>text file) "
        f"nor a dataset under {cfg.paths.data_dir} (paths.data_dir)"
    )


def _export_idf(cfg: DictConfig, retriever: Retriever) -> tuple[torch.Tensor, str]:
    """The IDF the exported queries use and where it came from: idf=, idf_corpus=, or the model's idf.json."""
    if cfg.idf is not None:
        return load_idf(Path(cfg.idf), retriever.tokenizer), str(cfg.idf)
    if cfg.idf_corpus is not None:
        corpus = _idf_corpus(cfg)
        return compute_idf(corpus_texts(corpus), retriever.tokenizer), f"IDF of {corpus}"
    return retriever.idf, f"{retriever.source}/idf.json"


def export(cfg: DictConfig) -> Path:
    """Writes the model in cfg.format to paths.output_dir, all or nothing (a temporary sibling folder renamed into
    place); returns the folder."""
    validate_export(cfg)
    out_dir = resolve_output_dir(cfg)
    if is_nonempty_dir(out_dir) and not cfg.overwrite:
        raise ConfigError(f"paths.output_dir: {out_dir} exists and is not empty; choose another or set overwrite=true")
    retriever = load_retriever(cfg.model, cfg.activation, cfg.prune_ratio)
    if cfg.format == "sentence-transformers" and retriever.prune_ratio > 0:
        raise ConfigError(
            f"prune_ratio: {retriever.source}/{SPARSE_CONFIG} sets {retriever.prune_ratio}, but {_NO_PRUNING_IN_ST}"
        )
    if cfg.format == "sentence-transformers" and retriever.doc_encoder.activation_name not in LOG1P_COUNTS:
        raise ConfigError(
            f"activation: {retriever.doc_encoder.activation_name!r} has no sentence-transformers form; "
            f"{', '.join(sorted(LOG1P_COUNTS))} have"
        )
    idf, idf_source = _export_idf(cfg, retriever)
    encoder, tokenizer = retriever.doc_encoder, retriever.tokenizer
    with atomic_dir(out_dir, replace=cfg.overwrite) as tmp:
        if cfg.format == "opensearch":
            export_model(encoder, tokenizer, idf, tmp, retriever.prune_ratio)
        else:
            export_sentence_transformers(encoder, tokenizer, idf, tmp, cfg.max_length)
    if cfg.format == "opensearch":
        how = f"python -m src.evaluate model={out_dir}"
    else:
        trust = ", trust_remote_code=True" if splade_pooling_plan(encoder.activation_name)[1] else ""
        how = f'SparseEncoder("{out_dir}"{trust}) (from sentence_transformers import SparseEncoder)'
    print(
        f"{cfg.format} export of {retriever.source} (activation {encoder.activation_name}, IDF: {idf_source}): "
        f"{out_dir}\nuse it: {how}",
        flush=True,
    )
    return out_dir
