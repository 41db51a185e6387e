"""`python -m src.export format=sentence-transformers`: the SparseEncoder folder scores real scifact queries and
documents as our own evaluation path does, for every activation it can express."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SparseEncoder
from torch import nn

from src.common.io import atomic_dir
from src.config import ConfigError
from src.data.beir import load_beir
from src.model.activations import LOG1P_COUNTS
from src.model.encoders import DocEncoder, compute_idf
from src.model.export import export
from src.model.formats import Retriever, export_model, export_sentence_transformers, load_retriever
from src.model.st_modules import Log1pSteps
from src.retrieval.engine import encode_documents
from src.retrieval.evaluation import query_vectors
from tests.conftest import compose_tool

RTOL = 1e-4


@pytest.fixture(scope="module")
def texts(data_dir) -> tuple[list[str], list[str]]:
    """8 real queries plus two edge cases, and 16 real documents: those judged for the queries, then the longest."""
    scifact = load_beir(data_dir, "scifact", "test")
    query_ids = list(scifact.queries)[:8]
    judged = [d for q in query_ids for d in scifact.qrels[q]]
    longest = sorted(scifact.doc_ids, key=lambda d: -len(scifact.corpus[d]))
    docs = [scifact.corpus[d] for d in dict.fromkeys(judged + longest)][:16]
    queries = [scifact.queries[q] for q in query_ids]
    queries.append("What does P53 do? p53 [SEP] [MASK] p53")  # case, repeats, special tokens typed as text
    queries.append(docs[-1])  # a real text far past 512 tokens: truncation of queries
    return queries, docs


@pytest.fixture(scope="module")
def splade_tiny(texts) -> tuple[Retriever, torch.Tensor]:
    """The bundled splade-tiny and an IDF whose special tokens weigh 5: ours weigh them 0, so must the export."""
    retriever = load_retriever(None)
    idf = compute_idf(texts[1], retriever.tokenizer)
    idf[retriever.tokenizer.all_special_ids] = 5.0
    return retriever, idf


def our_vectors(encoder: DocEncoder, tokenizer, idf: torch.Tensor, texts, max_length: int) -> tuple[np.ndarray, ...]:
    """(Q, V) query and (D, V) document vectors through evaluation's own encoders (src.retrieval.evaluation,
    src.retrieval.engine)."""
    queries, docs = texts
    q = query_vectors("inference_free", queries, tokenizer, idf=idf)  # (Q, V) CSR
    d = encode_documents(encoder, tokenizer, docs, max_length=max_length, progress=False)  # (D, V) CSR
    return q.toarray(), d.toarray()


def st_vectors(model: SparseEncoder, texts) -> tuple[np.ndarray, ...]:
    queries, docs = texts
    q = model.encode_query(queries, convert_to_sparse_tensor=False)  # (Q, V)
    d = model.encode_document(docs, convert_to_sparse_tensor=False)  # (D, V)
    return q.numpy(), d.numpy()


def scores(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) @ d.astype(np.float64).T  # (Q, D)


def max_relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


@pytest.mark.parametrize("activation", sorted(LOG1P_COUNTS))
def test_sparse_encoder_scores_equal_ours(activation, splade_tiny, texts, tmp_path):
    retriever, idf = splade_tiny
    tokenizer = retriever.tokenizer
    encoder = DocEncoder(retriever.doc_encoder.mlm, activation).eval()
    max_length = 128  # documents are cut on both sides alike; 512 (the default) costs 4x the time
    folder = export_sentence_transformers(encoder, tokenizer, idf, tmp_path / "st", max_length=max_length)
    needs_our_module = activation not in ("log1", "log2")  # SpladePooling does relu + 1 or 2 log1p itself
    if needs_our_module:
        with pytest.raises(ValueError, match="trust_remote_code"):
            SparseEncoder(str(folder), device="cpu")
    model = SparseEncoder(str(folder), device="cpu", trust_remote_code=needs_our_module)

    q_ours, d_ours = our_vectors(encoder, tokenizer, idf, texts, max_length)
    q_st, d_st = st_vectors(model, texts)
    ours, theirs = scores(q_ours, d_ours), scores(q_st, d_st)
    assert (ours > 0).mean() > 0.5  # real overlaps, not a matrix of zeros
    print(f"{activation}: max relative difference {max_relative_difference(ours, theirs):.2e}")
    np.testing.assert_allclose(theirs, ours, rtol=RTOL, atol=RTOL * np.abs(ours).max())
    # The query side exactly: special tokens 0 (their IDF is 5 here), repeats once, the long query cut where ours is.
    assert len(tokenizer(texts[0][-1], verbose=False)["input_ids"]) > 512
    np.testing.assert_array_equal(q_st, q_ours)

    document_route = model[0].sub_modules["document"]
    assert type(document_route[-1]).__name__ == ("Log1pSteps" if needs_our_module else "SpladePooling")
    if needs_our_module:  # loaded from the folder's own copy of src/model/st_modules.py, not from this project
        assert type(document_route[-1]).__module__.startswith("transformers_modules")
        assert (folder / "st_modules.py").read_text() == Path(inspect.getfile(Log1pSteps)).read_text()

    # The comparison can fail: without our log1p step (log3), or SpladePooling's second log1p (log2), it does.
    if activation in ("log2", "log3"):
        if activation == "log3":
            model[0].sub_modules["document"] = nn.Sequential(*list(document_route)[:-1])
        else:
            document_route[-1].activation_function = "relu"  # log1p once: log1
        d_wrong = model.encode_document(texts[1], convert_to_sparse_tensor=False).numpy()
        assert max_relative_difference(ours, scores(q_st, d_wrong)) > 100 * RTOL


@pytest.fixture
def run_dir(splade_tiny, tmp_path) -> Path:
    """A training run's output: model/ (log2, as l0_sparse.json says) beside results.json."""
    retriever, idf = splade_tiny
    run = tmp_path / "run"
    export_model(DocEncoder(retriever.doc_encoder.mlm, "log2"), retriever.tokenizer, idf, run / "model")
    (run / "results.json").write_text(json.dumps({"eval": {}}))
    return run


def test_run_dir_exports_through_the_command(run_dir, texts, tmp_path):
    out = tmp_path / "st"
    cfg = compose_tool("export", f"model={run_dir}", "format=sentence-transformers", f"paths.output_dir={out}")
    assert export(cfg) == out
    ours = load_retriever(str(run_dir))
    assert ours.doc_encoder.activation_name == "log2"
    few = (texts[0], texts[1][:2] + texts[1][-2:])  # the two longest documents: cut at the default 512 tokens
    expected = scores(*our_vectors(ours.doc_encoder, ours.tokenizer, ours.idf, few, 512))
    theirs = scores(*st_vectors(SparseEncoder(str(out), device="cpu"), few))
    print(f"run dir, log2, 512 tokens: max relative difference {max_relative_difference(expected, theirs):.2e}")
    np.testing.assert_allclose(theirs, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "st"]  # no temporary folder left behind

    # opensearch is the default format: our own folder, read back as it was.
    plain = export(compose_tool("export", f"model={run_dir}", f"paths.output_dir={tmp_path / 'plain'}"))
    again = load_retriever(str(plain))
    assert again.doc_encoder.activation_name == "log2"
    torch.testing.assert_close(again.idf, ours.idf)

    # A filled folder is replaced only when asked.
    with pytest.raises(ConfigError, match=r"^paths\.output_dir: .* not empty"):
        export(cfg)
    cfg.overwrite = True
    assert export(cfg) == out and (out / "router_config.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["format=onnx"], "format"),
        (["format=sentence-transformers", "prune_ratio=0.3"], "prune_ratio"),
        (["activation=log9"], "activation"),
        ([], "idf"),  # the bundled splade-tiny has no idf.json
        (["idf_corpus=no-such-dataset"], "idf_corpus"),
    ],
)
def test_bad_config_names_its_key(overrides, key, tmp_path):
    cfg = compose_tool("export", *overrides, f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        export(cfg)
    assert not (tmp_path / "out").exists()


def test_pruned_model_is_refused_for_sentence_transformers(splade_tiny, tmp_path):
    retriever, idf = splade_tiny
    folder = export_model(retriever.doc_encoder, retriever.tokenizer, idf, tmp_path / "pruned", prune_ratio=0.3)
    cfg = compose_tool(
        "export", f"model={folder}", "format=sentence-transformers", f"paths.output_dir={tmp_path / 'out'}"
    )
    with pytest.raises(ConfigError, match=r"^prune_ratio: .*l0_sparse.json sets 0.3"):
        export(cfg)
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_the_previous_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, replace=True) as tmp:
        (tmp / "new").write_text("half")
        raise RuntimeError("the export failed midway")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in target.iterdir()] == ["old"]
    with pytest.raises(FileExistsError), atomic_dir(target):
        pass
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and [p.name for p in target.iterdir()] == ["new"]
