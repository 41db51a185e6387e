"""Every kind in src.teachers.KINDS keeps the protocol that src.data.prepare and evaluation rely on: `score` gives
(N, G) finite float32 scores, and a kind with `score_corpus` ranks the whole corpus it was built with, (Q, D).

A new kind is covered by adding it to KINDS; one that needs a model gets one in `models` (no hub here: a bundled
model or a local stand-in)."""

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from src.model.encoders import bundled_model_path
from src.teachers import KINDS, TeacherSpec, build_teacher

CORPUS = [
    "Vitamin D deficiency is linked to a higher risk of several cancers.",
    "Regular exercise lowers blood pressure in adults.",
    "The mitochondria produce most of the cell's energy.",
    "Sunlight lets the skin make vitamin D.",
    "Antibiotics do not work against viral infections.",
    "Blood pressure rises with salt intake in some people.",
]
QUERIES = ["vitamin D and cancer", "what lowers blood pressure"]
GROUPS = [[CORPUS[0], CORPUS[3], CORPUS[2]], [CORPUS[1], CORPUS[5], CORPUS[4]]]  # (N=2, G=3), positive first


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Kinds that need a model: the bundled MiniLM (the default config's bi-encoder), and a cross-encoder on
    splade-tiny's body (a random one-logit head)."""
    folder = tmp_path_factory.mktemp("teachers") / "cross_encoder"
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(bundled_model_path(), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_path()).save_pretrained(folder)
    return {"cross_encoder": str(folder), "bi_encoder": "sentence-transformers/all-MiniLM-L6-v2"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_scores_groups_and_ranks_its_corpus(kind, models):
    spec = {"kind": kind, **({"model": models[kind]} if kind in models else {})}
    teacher = build_teacher(TeacherSpec.from_config(spec, "teachers[0]"), CORPUS)
    if hasattr(teacher, "precompute"):
        teacher.precompute([d for group in GROUPS for d in group])
    scores = teacher.score(QUERIES, GROUPS)
    assert scores.shape == (len(GROUPS), len(GROUPS[0])) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    if hasattr(teacher, "score_corpus"):
        ranked = teacher.score_corpus(QUERIES)
        assert ranked.shape == (len(QUERIES), len(CORPUS)) and torch.isfinite(ranked).all()
