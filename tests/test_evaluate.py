"""Standalone evaluation, export, the on-disk index and the query CLI, on real scifact data."""

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import src.retrieval.evaluation as evaluation
from src.config import ConfigError
from src.data.beir import load_beir, subsample
from src.model.encoders import DocEncoder, compute_idf, load_tokenizer
from src.model.formats import export_model, load_retriever
from src.retrieval.evaluation import EvalSettings, evaluate, evaluate_dataset
from src.retrieval.index import SparseIndex, prune
from src.retrieval.index_folder import IndexSearcher
from src.search import main as search_main
from tests.conftest import compose_tool

SMALL = ("max_queries=20", "max_docs=300", "max_length=128")


@pytest.fixture(scope="module")
def small_scifact(data_dir):
    return subsample(load_beir(data_dir, "scifact", "test"), 20, 300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_scifact):
    """splade-tiny with log2 and the corpus IDF, exported as a model folder."""
    tokenizer = load_tokenizer(None)
    encoder = DocEncoder.from_pretrained(None, "log2").eval()
    idf = compute_idf(small_scifact.corpus.values(), tokenizer)
    folder = export_model(encoder, tokenizer, idf, tmp_path_factory.mktemp("export") / "model")
    return folder, encoder, tokenizer, idf


def test_inference_free_score_is_idf_json_dot_document_vector(exported, small_scifact):
    folder, encoder, tokenizer, _ = exported
    idf_json = json.loads((folder / "idf.json").read_text())
    qid = next(iter(small_scifact.qrels))
    settings = EvalSettings(max_length=128, progress=False)
    _, run = evaluate_dataset(
        small_scifact, "inference_free", settings, encoder, tokenizer, load_retriever(str(folder)).idf
    )
    doc_id, score = max(run[qid].items(), key=lambda kv: kv[1])
    doc = tokenizer([small_scifact.corpus[doc_id]], truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        doc_vec = encoder(doc["input_ids"], doc["attention_mask"])[0]  # (V,)
    # By hand: each distinct non-special query token once, its idf.json weight times the document weight.
    tokens = set(tokenizer.tokenize(small_scifact.queries[qid])) - set(tokenizer.all_special_tokens)
    expected = sum(idf_json[t] * doc_vec[tokenizer.convert_tokens_to_ids(t)].item() for t in tokens)
    assert score == pytest.approx(expected, rel=1e-5)


def test_exported_folder_round_trips_to_the_same_metrics(exported, small_scifact, data_dir, tmp_path):
    folder, encoder, tokenizer, idf = exported
    before, _ = evaluate_dataset(
        small_scifact, "inference_free", EvalSettings(max_length=128, progress=False), encoder, tokenizer, idf
    )
    cfg = compose_tool(
        "evaluate",
        f"model={folder}",
        "datasets=[scifact]",
        "mode=inference_free",
        *SMALL,
        "cache=false",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    after = evaluate(cfg)
    assert after["config"]["activation"] == "log2"  # read back from l0_sparse.json
    for metric in ("ndcg@10", "recall@100", "mrr@10", "flops", "doc_len", "q_len"):
        assert after["eval"]["scifact"][metric] == pytest.approx(before[metric], abs=1e-6), metric
    trec = (tmp_path / "runs" / "scifact.trec").read_text().splitlines()
    assert trec[0].split()[1:4:2] == ["Q0", "1"] and len({line.split()[0] for line in trec}) == 20


def test_a_document_with_the_query_id_is_excluded_end_to_end(tmp_path):
    data = tmp_path / "beir" / "selfmatch"
    (data / "qrels").mkdir(parents=True)
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "vitamin d and cancer risk"}) + "\n")
    docs = [("q1", "vitamin d and cancer risk"), ("d1", "vitamin d lowers cancer risk"), ("d2", "heart disease")]
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    cfg = compose_tool(
        "evaluate",
        "datasets=[selfmatch]",
        "cache=false",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.data_dir={tmp_path / 'beir'}",
    )
    results = evaluate(cfg)
    run = (tmp_path / "out" / "runs" / "selfmatch.trec").read_text().split("\n")
    ranked = [line.split()[2] for line in run if line]
    assert "q1" not in ranked and ranked[0] == "d1"  # the identical text would otherwise rank first
    assert results["eval"]["selfmatch"]["ndcg@10"] == pytest.approx(1.0)


def test_second_evaluation_reads_the_cache_and_a_corrupt_entry_is_rebuilt(small_scifact, tmp_path, monkeypatch):
    tokenizer = load_tokenizer(None)
    encoder = DocEncoder.from_pretrained(None, "log1").eval()
    settings = EvalSettings(max_length=64, progress=False, cache_dir=tmp_path)
    first = evaluation.encode_corpus(encoder, tokenizer, small_scifact, settings)
    (entry,) = (tmp_path / "encoded").iterdir()
    calls = []
    real_encode = evaluation.encode_documents
    monkeypatch.setattr(evaluation, "encode_documents", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    again = evaluation.encode_corpus(encoder, tokenizer, small_scifact, settings)
    assert calls == [] and (again.matrix != first.matrix).nnz == 0
    data = np.load(entry / "data.npy")
    np.save(entry / "data.npy", data * 2)  # silent corruption: right shape, wrong numbers
    rebuilt = evaluation.encode_corpus(encoder, tokenizer, small_scifact, settings)
    assert calls == [1] and (rebuilt.matrix != first.matrix).nnz == 0
    assert (SparseIndex.load(entry).matrix != first.matrix).nnz == 0  # and the entry is whole again


def test_prune_drops_weights_below_a_ratio_of_each_documents_max():
    # ratio 0.25: row 0 keeps weights >= 1.0, row 1 keeps weights >= 0.05
    matrix = sp.csr_matrix(np.array([[4.0, 1.0, 0.5, 0.0], [0.2, 0.0, 0.1, 0.04]], dtype=np.float32))
    pruned = prune(matrix, 0.25)
    np.testing.assert_allclose(pruned.toarray(), [[4.0, 1.0, 0.0, 0.0], [0.2, 0.0, 0.1, 0.0]])
    assert pruned.nnz == 4
    assert (prune(matrix, 0.0) != matrix).nnz == 0


def test_prune_ratio_from_the_export_shortens_documents(exported, small_scifact, tmp_path):
    _, encoder, tokenizer, idf = exported
    pruned_folder = export_model(encoder, tokenizer, idf, tmp_path / "pruned", prune_ratio=0.3)
    retriever = load_retriever(str(pruned_folder))
    assert retriever.prune_ratio == 0.3
    settings = EvalSettings(max_length=128, progress=False)
    full, _ = evaluate_dataset(small_scifact, "inference_free", settings, encoder, tokenizer, idf)
    pruned, _ = evaluate_dataset(
        small_scifact,
        "inference_free",
        settings,
        retriever.doc_encoder,
        retriever.tokenizer,
        retriever.idf,
        prune_ratio=retriever.prune_ratio,
    )
    assert pruned["doc_len"] < 0.8 * full["doc_len"] and pruned["flops"] < full["flops"]


def test_index_folder_answers_typed_queries_with_matching_terms(exported, data_dir, tmp_path, capsys):
    from src.retrieval.index_folder import build_index

    folder, *_ = exported
    cfg = compose_tool(
        "index",
        f"model={folder}",
        "dataset=scifact",
        "max_length=64",
        "max_docs=500",
        "cache=false",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    index_dir = build_index(cfg)
    searcher = IndexSearcher(tmp_path)
    hits = searcher.explain("vitamin D deficiency and cancer", top_k=5)
    assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
    for hit in hits:  # the score is exactly the sum of the shown contributions
        assert hit["score"] == pytest.approx(sum(q * d for _, q, d in hit["terms"]), rel=1e-5)
        assert {t for t, _, _ in hit["terms"]} <= {"vitamin", "d", "deficiency", "and", "cancer"}
    search_main([str(index_dir), "vitamin D deficiency and cancer", "-k", "2"])
    out = capsys.readouterr().out
    assert "vitamin" in out and hits[0]["doc_id"] in out


def test_bad_evaluate_config_names_the_key(tmp_path):
    for override, key in [
        ("mode=dense", "mode"),
        ("prune_ratio=1.5", "prune_ratio"),
        ("model=./no/such/dir", "model: ./no/such/dir: no such folder"),
        ("activation=log9", "activation"),
    ]:
        with pytest.raises(ConfigError, match=key):
            evaluate(compose_tool("evaluate", override, f"paths.output_dir={tmp_path}"))


def test_bm25_mode_needs_no_model(tmp_path, data_dir):
    cfg = compose_tool(
        "evaluate", "mode=bm25", "datasets=[scifact]", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"
    )
    results = evaluate(cfg)
    assert results["eval"]["scifact"]["ndcg@10"] == pytest.approx(0.665, abs=0.03)  # BEIR's published BM25
    assert results["config"]["model"] is None and results["eval"]["scifact"]["flops"] is None


def test_beir_defects_are_kept_as_beir_scores_them_and_warned_once(data_dir, tmp_path, caplog):
    """Qrels naming documents missing from the corpus (ArguAna's test qrels have 5) stay relevant and unretrievable;
    a judged query without text retrieves nothing. The figures equal pytrec_eval's on the same run and qrels
    (textless queries counted as 0, as `trec_eval -c` counts a judged query missing from the run)."""
    import pytrec_eval

    scifact = subsample(load_beir(data_dir, "scifact", "test"), 12, 200)
    data = tmp_path / "beir" / "defects"
    (data / "qrels").mkdir(parents=True)
    docs = "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in scifact.corpus.items())
    (data / "corpus.jsonl").write_text(docs)
    qids = list(scifact.queries)
    textless, unlisted = qids[0], qids[1]  # "text": "" in queries.jsonl / no line in queries.jsonl at all
    queries = {**scifact.queries, textless: ""}
    del queries[unlisted]
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    qrels = {q: dict(judged) for q, judged in scifact.qrels.items()}
    for q in qids[2:5]:  # three relevant documents the corpus lacks
        qrels[q][f"missing-{q}"] = 1
    rows = [f"{q}\t{d}\t{grade}" for q, judged in qrels.items() for d, grade in judged.items()]
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")

    cfg = compose_tool(
        "evaluate", "datasets=[defects]", "cache=false", "max_length=128",
        f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'beir'}",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ours = evaluate(cfg)["eval"]["defects"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("3 lines name doc ids not in corpus.jsonl" in m and "missing-" in m for m in warned) == 1, warned
    assert sum("2 judged queries have no text" in m for m in warned) == 1, warned
    assert len(warned) == 2, warned  # nothing else, and the absent query is not warned about twice
    assert ours["num_queries"] == 12

    run: dict[str, dict[str, float]] = {}
    for line in (tmp_path / "out" / "runs" / "defects.trec").read_text().splitlines():
        qid, _, doc_id, _, score, _ = line.split()
        run.setdefault(qid, {})[doc_id] = float(score)
    assert textless not in run and unlisted not in run  # they retrieved nothing
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    for ours_key, theirs_key in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100")):
        theirs = sum(per_query[q][theirs_key] for q in per_query) / len(qrels)
        assert ours[ours_key] == pytest.approx(theirs, abs=1e-5), ours_key
    # the missing documents count: with them dropped from the qrels, Recall@100 would be higher
    assert ours["recall@100"] < sum(
        pytrec_eval.RelevanceEvaluator(scifact.qrels, {"recall.100"}).evaluate(run)[q]["recall_100"] for q in run
    ) / len(qrels)
