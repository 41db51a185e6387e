"""Teachers score (query, document) pairs for distillation; `combine` merges several into one target.

A teacher is built from a spec (a config dict): `kind` picks the class from `KINDS`, `name` is how its
scores are keyed on disk (default: the kind, or the model id). Kinds:

- `splade`: Siamese SPLADE, queries and documents through one MLM encoder (default: splade-tiny);
- `bm25`: Lucene BM25 with the statistics of the source's corpus;
- `cross_encoder`, `bi_encoder`: any Hugging Face model id or folder (where a hub or the files are at hand);
- `labels`: the judgements: 1 for the judged positive (slot 0), 0 for the negatives (never judged for the query).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


class Teacher(Protocol):
    """Teachers may also have `precompute(docs)` (called with every document of a source before it is scored) and
    `score_corpus(queries) -> (Q, D)`: scores against every document of the corpus they were built with, in its
    order (such teachers can mine negatives: `src.data.mining.ensemble_ranker`)."""

    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        """queries: N texts; docs: N lists of G texts. Returns raw scores, (N, G) float32."""
        ...


@dataclass(frozen=True)
class TeacherSpec:
    kind: str
    name: str
    model: str | None = None  # a hub id or folder; null: the kind's default
    options: dict = field(default_factory=dict)  # the rest of the spec, passed to the teacher's class

    @classmethod
    def from_config(cls, spec: dict, key: str) -> "TeacherSpec":
        """`key` (e.g. "teachers[1]") names the config entry in errors."""
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in KINDS:
            raise ValueError(f"{key}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        model = spec.pop("model", None)
        name = spec.pop("name", None) or model or kind
        return cls(kind, str(name), model, spec)


def build_teacher(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    """`corpus`: the texts of the source's corpus, for teachers with corpus statistics (BM25)."""
    return KINDS[spec.kind](spec, corpus)


def _splade(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    from src.teachers.splade import SpladeTeacher

    return SpladeTeacher(spec.model, **spec.options)


def _bm25(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    from src.teachers.bm25 import BM25Teacher

    return BM25Teacher(corpus, **spec.options)


def _cross_encoder(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    from src.teachers.hf import CrossEncoderTeacher

    return CrossEncoderTeacher(spec.model, **spec.options)


def _bi_encoder(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    from src.teachers.hf import BiEncoderTeacher

    return BiEncoderTeacher(spec.model, corpus=corpus, **spec.options)


def _labels(spec: TeacherSpec, corpus: Sequence[str]) -> Teacher:
    return LabelsTeacher()


class LabelsTeacher:
    """The labels as a teacher: every source puts its judged positive in slot 0 and unjudged negatives after it."""

    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        scores = torch.zeros(len(docs), len(docs[0]))  # (N, G)
        scores[:, 0] = 1.0
        return scores


KINDS = {
    "splade": _splade,
    "bm25": _bm25,
    "cross_encoder": _cross_encoder,
    "bi_encoder": _bi_encoder,
    "labels": _labels,
}
# Built once per source: corpus statistics (bm25), or each document embedded once, in one order (bi_encoder's
# `precompute`), so a score never depends on which other documents shared its batch.
PER_SOURCE = {"bm25", "bi_encoder"}
# Hugging Face models, which take `precision` (auto | fp32 | bf16: src.teachers.hf.teacher_dtype).
HF_KINDS = {"cross_encoder", "bi_encoder"}


NORMALISATIONS = ("minmax", "query", "none")


def combine(
    scores: dict[str, torch.Tensor],
    normalize: str = "minmax",
    weights: dict[str, float] | None = None,
    reduce_range: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """One target from several teachers' (N, G) scores of a batch: each teacher min-max normalised (so teachers
    on different scales weigh alike), then the weighted mean. `normalize`: "minmax" over the whole batch, "query"
    over each query's G documents, "none" keeps the raw scores.

    A teacher whose scores are all equal in the batch (the query) carries no ranking signal: it normalises to 0.
    weights: teacher -> weight (default 1 each); they are divided by their sum.
    reduce_range: maps the teachers' (T,) minima and (T,) maxima over these scores to those over a larger batch
    (under data parallelism, the global batch of all ranks: `src.common.distributed.global_range`); they come in sorted
    name order, so processes holding the teachers in different orders still agree. None: this batch's own.
    """
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALISATIONS)}, got {normalize!r}")
    weights = weights or {}
    total = sum(weights.get(name, 1.0) for name in scores)
    if normalize == "minmax":
        names = sorted(scores)
        low = torch.stack([scores[name].min() for name in names])  # (T,)
        high = torch.stack([scores[name].max() for name in names])  # (T,)
        if reduce_range is not None:
            low, high = reduce_range(low, high)
        ranges = {name: (low[i], high[i]) for i, name in enumerate(names)}
    target = None
    for name, s in scores.items():  # s: (N, G); summed in the order given, as the targets' rounding depends on it
        if normalize == "minmax":
            low, high = ranges[name]
            # torch.where, not `if high > low`: no wait for the device (0/0 in a flat teacher's branch is dropped).
            s = torch.where(high > low, (s - low) / (high - low), 0.0)
        elif normalize == "query":
            low, high = s.amin(1, keepdim=True), s.amax(1, keepdim=True)  # (N, 1) each
            s = torch.where(high > low, (s - low) / (high - low), 0.0)
        term = s * (weights.get(name, 1.0) / total)
        target = term if target is None else target + term
    return target  # (N, G)
