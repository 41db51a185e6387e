"""The on-disk model formats: written by training and `python -m src.export` (src/model/export.py), read by every
entry point (`load_retriever`).

- opensearch (ours, and what every entry point reads back): a plain Hugging Face masked-LM folder plus idf.json
  (token -> weight), the layout of OpenSearch's inference-free sparse models, plus l0_sparse.json with what the
  folder alone cannot say.
- sentence-transformers: a SparseEncoder folder (`export_sentence_transformers`) giving the same query and
  document vectors through `encode_query` / `encode_document`.

    python -m src.export model=RUN_DIR format=sentence-transformers paths.output_dir=DIR
"""

import inspect
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.common.io import atomic_write_json
from src.model.activations import LOG1P_COUNTS
from src.model.encoders import DocEncoder, load_idf, load_tokenizer, save_idf

log = logging.getLogger(__name__)
SPARSE_CONFIG = "l0_sparse.json"
DEFAULT_ACTIVATION = "log1"  # what SPLADE and OpenSearch's doc models use when a folder does not say
FORMATS = ("opensearch", "sentence-transformers")
# Inference-free queries are cut here, [CLS] and [SEP] included (src.retrieval.engine.encode_queries).
QUERY_MAX_LENGTH = 512


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


# --- sentence-transformers ------------------------------------------------------------------------------------


def splade_pooling_plan(activation: str) -> tuple[str, int]:
    """Our activation as sentence-transformers builds it: SpladePooling's activation_function, which applies relu
    and then log1p once ("relu") or twice ("log1p_relu"), and the log1p steps our Log1pSteps adds after it
    (negative: expm1 steps, which undo SpladePooling's log1p for plain relu)."""
    if activation not in LOG1P_COUNTS:
        raise ValueError(
            f"activation={activation!r} has no sentence-transformers form (relu followed by N log1p: "
            f"{', '.join(sorted(LOG1P_COUNTS))})"
        )
    applied = 2 if LOG1P_COUNTS[activation] >= 2 else 1  # the closest SpladePooling gets on its own
    return ("log1p_relu" if applied == 2 else "relu"), LOG1P_COUNTS[activation] - applied


def export_sentence_transformers(
    doc_encoder: DocEncoder,
    tokenizer: PreTrainedTokenizerBase,
    idf: torch.Tensor,
    out_dir: Path,
    max_length: int = 512,
    query_max_length: int = QUERY_MAX_LENGTH,
) -> Path:
    """Writes a sentence-transformers SparseEncoder folder into out_dir whose encode_query / encode_document give
    our query and document vectors (dot product: our score).

    Its one module is a Router, sentence-transformers' inference-free layout: the "query" route a
    SparseStaticEmbedding holding the IDF, the "document" route Transformer (fill-mask) + SpladePooling (max),
    plus our Log1pSteps (src/model/st_modules.py, copied into the folder) for relu, log3 and log4. log1 and log2 load
    with `SparseEncoder(out_dir)`; the others need `trust_remote_code=True`.
    """
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import Router, SparseStaticEmbedding, SpladePooling, Transformer

    from src.model.st_modules import Log1pSteps

    pooling, steps = splade_pooling_plan(doc_encoder.activation_name)
    vocab_size = doc_encoder.vocab_size
    if idf.shape != (vocab_size,):
        raise ValueError(f"idf has shape {tuple(idf.shape)}, the encoder's vocabulary {vocab_size}")
    out_dir = Path(out_dir)
    # sentence-transformers weighs every token it sees, special ones included; ours weigh 0 (IdfQueryEncoder).
    weight = idf.detach().float().cpu().clone()  # (V,)
    weight[tokenizer.all_special_ids] = 0.0
    with tempfile.TemporaryDirectory(prefix="l0-sparse-st-") as scratch:  # Transformer loads from a folder
        doc_encoder.mlm.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        document = [
            Transformer(scratch, transformer_task="fill-mask", max_seq_length=max_length),
            SpladePooling(pooling_strategy="max", activation_function=pooling, embedding_dimension=vocab_size),
        ]
        if steps:
            document.append(Log1pSteps(steps))
        # SparseStaticEmbedding tokenises without [CLS] and [SEP] (ours adds them, weighing 0, within
        # query_max_length): the same words survive truncation when its own tokenizer stops that many earlier.
        content_length = query_max_length - tokenizer.num_special_tokens_to_add(pair=False)
        query_tokenizer = AutoTokenizer.from_pretrained(scratch, model_max_length=content_length)
        query = SparseStaticEmbedding(query_tokenizer, weight=weight, frozen=True)
        router = Router.for_query_document(query_modules=[query], document_modules=document)
        SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu").save(str(out_dir))
    if steps:
        _ship_module_code(out_dir, Router.config_file_name, Log1pSteps)
    return out_dir


def _ship_module_code(folder: Path, router_config: str, module: type) -> None:
    """Copies the file of our module into the folder and names it there by that file (`st_modules.Log1pSteps`), as
    sentence-transformers does for remote code: the folder then loads (trust_remote_code=True) without this
    project installed."""
    source = Path(inspect.getfile(module))
    shutil.copyfile(source, folder / source.name)
    config = json.loads((folder / router_config).read_text())
    ours = f"{module.__module__}.{module.__name__}"
    config["types"] = {k: f"{source.stem}.{module.__name__}" if v == ours else v for k, v in config["types"].items()}
    atomic_write_json(folder / router_config, config)
