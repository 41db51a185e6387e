"""Teachers from any Hugging Face model, with `transformers` alone: a cross-encoder reads each (query,
document) pair jointly; a bi-encoder embeds queries and documents apart and compares the vectors.

Both tokenise everything up front, then run batches of similar lengths (little padding) and put the
scores back in order; padding is masked, so a score does not depend on the batch it ran in.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from huggingface_hub import is_offline_mode
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from src.model.encoders import resolve_model
from src.model.heads import PRECISIONS, native_bf16

POOLINGS = ("cls", "mean")
SIMILARITIES = ("dot", "cos")

Row = dict[str, list[int]]  # one tokenised text or pair, unpadded


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def teacher_dtype(precision: str = "auto", device: str | None = None) -> str:
    """What a teacher with these options computes in here, "bf16" or "fp32". "auto" takes bf16 where it is
    native (CPUs with AVX512-BF16 or AMX, GPUs with bf16): all-MiniLM-L6-v2 then embeds 256-token scifact
    abstracts 1.8x faster on an AVX512-BF16 EPYC (42.7 vs 23.2 docs/s) with cosines within 3e-5 of fp32's."""
    if precision not in PRECISIONS:
        raise ValueError(f"teacher precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(_device(device)) else "fp32"
    return precision


def _autocast(dtype: str, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def _load(
    kind: str, model: str | None, loader: Callable[[str], PreTrainedModel]
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    if model is None:
        raise ValueError(f"a {kind} teacher needs `model` (a hub id or a local folder)")
    source = resolve_model(model)  # a bundled copy of a known hub id, offline
    try:
        return AutoTokenizer.from_pretrained(source), loader(source).eval()
    except OSError as err:  # transformers raises OSError for an unknown folder and for an unreachable hub alike
        hub = "HF_HUB_OFFLINE is set" if is_offline_mode() else "not reached"
        raise FileNotFoundError(
            f"{kind} teacher: cannot load {model!r}: it needs the Hugging Face hub ({hub}) "
            "or a local folder with its config, weights and tokenizer"
        ) from err


def _rows(encoding: BatchEncoding) -> list[Row]:
    """A batch encoding without padding, split into one row per text."""
    return [dict(zip(encoding.keys(), values, strict=True)) for values in zip(*encoding.values(), strict=True)]


def _batches(
    tokenizer: PreTrainedTokenizerBase, rows: list[Row], batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], BatchEncoding]]:
    """(indices, padded batch) pairs, longest rows first: similar lengths pad little, and a batch that
    does not fit in memory fails at once."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]), reverse=True)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield indices, tokenizer.pad([rows[i] for i in indices], return_tensors="pt").to(device)


def _encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_length: int) -> list[Row]:
    """Truncates the document only, so the query stays whole. A query that alone overflows `max_length`
    makes the tokenizer reject that; only such pairs fall back to longest_first."""

    def encode(chunk: list[tuple[str, str]], truncation: str) -> list[Row]:
        queries, docs = zip(*chunk, strict=True)
        return _rows(tokenizer(list(queries), list(docs), truncation=truncation, max_length=max_length))

    try:
        return encode(pairs, "only_second")
    except Exception:  # the Rust tokenizers raise a bare Exception ("Truncation error: ...")
        rows = []
        for pair in pairs:  # one by one, so a pair's tokens do not depend on the others in the call
            try:
                rows += encode([pair], "only_second")
            except Exception:
                rows += encode([pair], "longest_first")
        return rows


class CrossEncoderTeacher:
    """s(q, d) = one logit of a sequence classifier on "[CLS] q [SEP] d [SEP]" (MS MARCO cross-encoders)."""

    def __init__(
        self,
        model: str | None,
        max_length: int = 512,
        batch_size: int = 32,
        device: str | None = None,
        label: int | None = None,  # which logit is the score when there are several; default: the last
        precision: str = "auto",  # auto | fp32 | bf16 (teacher_dtype)
    ):
        self.tokenizer, self.model = _load("cross_encoder", model, AutoModelForSequenceClassification.from_pretrained)
        self.device = _device(device)
        self.dtype = teacher_dtype(precision, device)
        self.model.to(self.device)
        num_labels = self.model.config.num_labels
        # 2-label MS MARCO cross-encoders put "relevant" last (label 1), so the last logit is the default.
        self.label = num_labels - 1 if label is None else label
        if not 0 <= self.label < num_labels:
            raise ValueError(f"label must be in 0..{num_labels - 1} for {model!r}, got {label}")
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        n, g = len(docs), len(docs[0])
        pairs = [(q, d) for q, group in zip(queries, docs, strict=True) for d in group]
        rows = _encode_pairs(self.tokenizer, pairs, self.max_length)
        scores = torch.empty(n * g)
        for indices, batch in _batches(self.tokenizer, rows, self.batch_size, self.device):
            with _autocast(self.dtype, self.device):
                logits = self.model(**batch).logits  # (B, num_labels)
            scores[indices] = logits[:, self.label].float().cpu()
        return scores.view(n, g)  # (N, G)


class BiEncoderTeacher:
    """s(q, d) = e(q) . e(d), or their cosine; e = the CLS vector or the masked mean of the last hidden states.

    Covers models that are a transformer plus pooling (TAS-B: cls + dot; many sentence-transformers
    models: mean + cos), not those with further layers (Dense) on top.
    """

    def __init__(
        self,
        model: str | None,
        pooling: str = "cls",
        similarity: str = "dot",
        query_prefix: str = "",  # e.g. "query: " for E5
        doc_prefix: str = "",
        max_length: int = 512,
        query_max_length: int = 64,
        batch_size: int = 32,
        device: str | None = None,
        corpus: Sequence[str] | None = None,  # the source's documents: score_corpus ranks them all
        precision: str = "auto",  # auto | fp32 | bf16 (teacher_dtype)
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.tokenizer, self.model = _load("bi_encoder", model, AutoModel.from_pretrained)
        self.device = _device(device)
        self.dtype = teacher_dtype(precision, device)
        self.model.to(self.device)
        self.pooling, self.similarity = pooling, similarity
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix
        self.max_length, self.query_max_length, self.batch_size = max_length, query_max_length, batch_size
        self._docs: dict[str, torch.Tensor] = {}  # document text -> its embedding (`precompute`)
        self.corpus = list(corpus) if corpus is not None else None

    @torch.inference_mode()
    def embed(self, texts: list[str], max_length: int, progress: bool = False) -> torch.Tensor:
        """(T, H) float32 on the CPU, unit length under cosine similarity."""
        rows = _rows(self.tokenizer(texts, truncation=True, max_length=max_length))
        order, parts = [], []
        batches = _batches(self.tokenizer, rows, self.batch_size, self.device)
        bar = tqdm(total=len(texts), desc="bi-encoder teacher", unit="doc", disable=not progress, mininterval=2)
        for indices, batch in batches:
            bar.update(len(indices))
            with _autocast(self.dtype, self.device):
                hidden = self.model(**batch).last_hidden_state.float()  # (B, L, H)
            if self.pooling == "cls":
                pooled = hidden[:, 0]  # (B, H)
            else:
                mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            if self.similarity == "cos":
                pooled = F.normalize(pooled, dim=-1)
            order += indices
            parts.append(pooled.cpu())
        bar.close()
        return torch.cat(parts)[torch.tensor(order).argsort()]  # back in the order of `texts`

    def precompute(self, docs: list[str]) -> None:
        """Embeds these documents once, in one fixed order, for `score` and `score_corpus` to look up.

        Each document of a source then has one embedding whichever group asks for it: embedded per group batch,
        its float rounding would depend on the batch (GEMM shapes; ~1e-7), and a resumed prepare could differ
        from an uninterrupted one in a stored score's last digit."""
        new = list(dict.fromkeys(t for t in docs if t not in self._docs))
        if new:
            vectors = self.embed([self.doc_prefix + t for t in new], self.max_length, progress=len(new) > 1000)
            self._docs.update(zip(new, vectors, strict=True))

    def _doc_vectors(self, docs: list[str]) -> torch.Tensor:
        self.precompute(docs)  # a no-op for documents precomputed before
        return torch.stack([self._docs[t] for t in docs])  # (D, H)

    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        n, g = len(docs), len(docs[0])
        q = self.embed([self.query_prefix + t for t in queries], self.query_max_length)  # (N, H)
        d = self._doc_vectors([t for group in docs for t in group]).view(n, g, -1)  # (N, G, H)
        return torch.einsum("nh,ngh->ng", q, d)  # (N, G)

    def score_corpus(self, queries: list[str]) -> torch.Tensor:
        """(Q, D) scores against every document of the corpus it was built with (for mining negatives)."""
        if self.corpus is None:
            raise ValueError("bi_encoder teacher: score_corpus needs the corpus it was built with")
        q = self.embed([self.query_prefix + t for t in queries], self.query_max_length)  # (Q, H)
        return q @ self._doc_vectors(self.corpus).T  # (Q, D)
