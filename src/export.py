"""The on-disk model format: a plain Hugging Face masked-LM folder plus idf.json (token -> weight), the layout
of OpenSearch's inference-free sparse models, plus l0_sparse.json with what the folder alone cannot say."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from src.encoders import DocEncoder, load_idf, load_tokenizer, save_idf
from src.io import atomic_write_json

log = logging.getLogger(__name__)
SPARSE_CONFIG = "l0_sparse.json"
DEFAULT_ACTIVATION = "log1"  # what SPLADE and OpenSearch's doc models use when a folder does not say


@dataclass
class Retriever:
    """A document encoder with what inference-free retrieval needs beside it."""

    doc_encoder: DocEncoder
    tokenizer: PreTrainedTokenizerBase
    idf: torch.Tensor | None  # (V,); None when the source has no idf.json
    prune_ratio: float
    source: str  # what was loaded, for results.json


def export_model(
    doc_encoder: DocEncoder,
    tokenizer: PreTrainedTokenizerBase,
    idf: torch.Tensor,
    out_dir: Path,
    prune_ratio: float = 0.0,
) -> Path:
    """Writes config + weights + tokenizer + idf.json + l0_sparse.json into out_dir.

    prune_ratio > 0 makes every reader drop document weights below prune_ratio x that document's
    maximum, as OpenSearch does at ingestion; the weights themselves are unchanged.
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    out_dir = Path(out_dir)
    doc_encoder.mlm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_idf(idf, tokenizer, out_dir / "idf.json")
    atomic_write_json(out_dir / SPARSE_CONFIG, {"activation": doc_encoder.activation_name, "prune_ratio": prune_ratio})
    return out_dir


def model_folder(source: str | None) -> str | None:
    """A training run directory -> its model/ folder; a model folder, hub id or None -> itself."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if (path / "results.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{source} is a folder, but neither a run directory (results.json + model/) "
            "nor a model folder (config.json)"
        )
    if not path.is_dir() and str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such folder")
    return str(path) if path.is_dir() else str(source)


def load_retriever(
    source: str | None,
    activation: str | None = None,
    prune_ratio: float | None = None,
    head_precision: str = "auto",
) -> Retriever:
    """Loads a run directory, an exported folder, a hub id, or (None) the bundled splade-tiny.

    activation and prune_ratio override the folder's l0_sparse.json; without either, log1 and 0.
    """
    folder = model_folder(source)
    settings = {}
    if folder is not None and (Path(folder) / SPARSE_CONFIG).is_file():
        settings = json.loads((Path(folder) / SPARSE_CONFIG).read_text())
    activation = activation or settings.get("activation", DEFAULT_ACTIVATION)
    prune_ratio = settings.get("prune_ratio", 0.0) if prune_ratio is None else prune_ratio
    tokenizer = load_tokenizer(folder)
    idf = None
    if folder is not None and (Path(folder) / "idf.json").is_file():
        idf = load_idf(Path(folder) / "idf.json", tokenizer)
    encoder = DocEncoder.from_pretrained(folder, activation, head_precision).eval()
    return Retriever(encoder, tokenizer, idf, float(prune_ratio), folder or "splade-tiny (bundled)")
