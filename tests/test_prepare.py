import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.config import ConfigError
from src.data import prepare as prepare_module
from src.data.beir import DataError
from src.data.groups import MANIFEST, PreparedSet
from src.data.module import DistillationDataModule
from src.data.prepare import prepare
from src.model.encoders import load_tokenizer
from src.teachers import combine
from tests.conftest import ROOT

TOY_TRIPLES = ROOT.parent / "shared" / "data" / "msmarco-toy" / "triples.tsv"


def compose_prepare(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "tools"), version_base="1.3"):
        return compose(config_name="prepare", overrides=list(overrides))


def test_minmax_normalisation_and_averaging_on_known_numbers():
    splade = torch.tensor([[10.0, 4.0], [7.0, 1.0]])  # batch min 1, max 10
    bm25 = torch.tensor([[2.0, 3.0], [0.0, 1.0]])  # batch min 0, max 3
    flat = torch.tensor([[5.0, 5.0], [5.0, 5.0]])  # no signal in this batch: normalises to 0
    splade_01 = torch.tensor([[1.0, 1 / 3], [2 / 3, 0.0]])
    bm25_01 = torch.tensor([[2 / 3, 1.0], [0.0, 1 / 3]])
    assert torch.allclose(combine({"splade": splade, "bm25": bm25}), (splade_01 + bm25_01) / 2)
    # weights 3, 1 and (default) 1 for the flat teacher: (3 * splade + bm25 + 0) / 5
    weighted = combine({"splade": splade, "bm25": bm25, "flat": flat}, weights={"splade": 3.0, "bm25": 1.0})
    assert torch.allclose(weighted, torch.tensor([[11 / 15, 0.4], [0.4, 1 / 15]]))
    assert torch.equal(combine({"splade": splade}, normalize="none"), splade)
    # per query: each row's own min and max (a flat row carries no signal)
    per_query = combine({"splade": splade, "flat": flat}, normalize="query")
    assert torch.allclose(per_query, torch.tensor([[1.0, 0.0], [1.0, 0.0]]) / 2)
    with pytest.raises(ValueError, match="normalize must be one of"):
        combine({"splade": splade}, normalize="zscore")


def test_minmax_over_a_larger_batch_through_reduce_range():
    """reduce_range swaps the batch's ranges for a larger batch's (DDP: all ranks'): the first row normalised with
    the ranges of both rows is the first row of the two-row batch's target, where its own ranges give another."""
    splade = torch.tensor([[10.0, 4.0], [7.0, 1.0]])
    bm25 = torch.tensor([[2.0, 3.0], [0.0, 1.0]])
    both = combine({"splade": splade, "bm25": bm25})  # (2, 2)
    seen = []

    def whole_batch_range(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((low, high))
        return torch.tensor([0.0, 1.0]), torch.tensor([3.0, 10.0])  # bm25's, splade's: sorted name order

    first = combine({"splade": splade[:1], "bm25": bm25[:1]}, reduce_range=whole_batch_range)  # (1, 2)
    assert torch.equal(first, both[:1])
    low, high = seen[0]  # the first row's own ranges, bm25 first
    assert torch.equal(low, torch.tensor([2.0, 4.0])) and torch.equal(high, torch.tensor([3.0, 10.0]))
    assert not torch.allclose(combine({"splade": splade[:1], "bm25": bm25[:1]}), both[:1])
    assert torch.equal(combine({"splade": splade}, normalize="none", reduce_range=whole_batch_range), splade)
    assert len(seen) == 1  # raw scores need no range


@pytest.fixture(scope="module")
def scifact_set(data_dir, tmp_path_factory) -> Path:
    """The first 48 scifact train queries (47 groups: one has too few unjudged BM25 candidates for G = 8) through
    both default teachers, in shards of 16 groups."""
    out = tmp_path_factory.mktemp("prepared") / "scifact"
    cfg = compose_prepare(
        "datasets=[scifact]", "max_queries=48", "shard_size=16", "batch_size=8", f"paths.output_dir={out}"
    )
    cfg.paths.data_dir = str(data_dir)
    return prepare(cfg)


def test_teachers_rank_the_known_positive_first_on_scifact_train(scifact_set, capsys):
    groups = list(PreparedSet(scifact_set))
    assert len(groups) == 47 and all(len(g.docs) == 8 for g in groups)
    for teacher in ("bm25", "minilm"):
        first = sum(max(g.scores[teacher][1:]) < g.scores[teacher][0] for g in groups) / len(groups)
        with capsys.disabled():
            print(f"\n{teacher} ranks the judged positive first of 8 for {first:.1%} of 47 scifact train groups")
        assert first > 0.5, f"{teacher} ranks the positive first for only {first:.0%}"
    manifest = json.loads((scifact_set / MANIFEST).read_text())
    assert manifest["teachers"] == ["bm25", "minilm"]
    assert manifest["counts"]["scifact"]["groups"] == 47
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 15]
    assert (scifact_set / "idf.json").is_file() and not (scifact_set / prepare_module.STATE).exists()


def test_killed_prepare_resumes_to_byte_identical_output(data_dir, scifact_set, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    cfg = compose_prepare(
        "datasets=[scifact]", "max_queries=48", "shard_size=16", "batch_size=8", f"paths.output_dir={out}"
    )
    cfg.paths.data_dir = str(data_dir)
    written = []
    real_write = prepare_module.write_shard

    def crash_after_two(path, records):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(Path(path).name)
        return real_write(path, records)

    monkeypatch.setattr(prepare_module, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert not (out / MANIFEST).exists() and len(list(out.glob("*.jsonl"))) == 2

    scored = []
    real_score = prepare_module._score_shard

    def count_scoring(chunk, *args):
        scored.append(len(chunk))
        return real_score(chunk, *args)

    monkeypatch.setattr(prepare_module, "write_shard", real_write)
    monkeypatch.setattr(prepare_module, "_score_shard", count_scoring)
    prepare(cfg)
    assert scored == [15], "the resumed run scored more than the missing shard"
    names = sorted(p.name for p in scifact_set.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (scifact_set / name).read_bytes(), f"{name} differs after resuming"
    prepare(cfg)  # complete: nothing to do
    assert scored == [15]


def test_prepared_folder_refuses_other_settings(data_dir, scifact_set):
    cfg = compose_prepare("datasets=[scifact]", "max_queries=47", f"paths.output_dir={scifact_set}")
    cfg.paths.data_dir = str(data_dir)
    with pytest.raises(ConfigError, match="paths.output_dir: .* other settings"):
        prepare(cfg)


def _beir(tmp_path: Path, corpus: str, queries: str, qrels: str) -> Path:
    folder = tmp_path / "beir" / "tiny"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus)
    (folder / "queries.jsonl").write_text(queries)
    (folder / "qrels" / "train.tsv").write_text(qrels)
    return folder.parent


DOCS = "".join(
    json.dumps({"_id": f"d{i}", "title": "", "text": f"cells protein {'growth ' * i}signal {i}"}) + "\n"
    for i in range(1, 6)
)
QUERIES = '{"_id": "q1", "text": "protein growth signal"}\n{"_id": "q2", "text": "cells"}\n'


def _prepare_tiny(data_dir: Path, out: Path, *overrides: str) -> Path:
    cfg = compose_prepare(
        "datasets=[tiny]", "teachers=[{kind: bm25, name: bm25}]", f"paths.output_dir={out}", *overrides
    )
    cfg.paths.data_dir = str(data_dir)
    return prepare(cfg)


@pytest.mark.parametrize(
    ("corpus", "queries", "message"),
    [
        (DOCS + '{"_id": "d9", "text": \n', QUERIES, r"corpus.jsonl:6: not valid JSON"),
        ('{"_id": "d1", "title": "no text"}\n', QUERIES, r"corpus.jsonl:1: missing field\(s\) text"),
        ("", QUERIES, r"corpus.jsonl: the corpus is empty"),
        (DOCS, '{"_id": "q1"}\n', r"queries.jsonl:1: missing field\(s\) text"),
    ],
)
def test_bad_beir_input_names_file_and_line(tmp_path, corpus, queries, message):
    data_dir = _beir(tmp_path, corpus, queries, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match=message):
        _prepare_tiny(data_dir, tmp_path / "out")


def test_unknown_qrels_ids_and_short_groups_are_counted_and_named(tmp_path, caplog):
    qrels = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq9\td1\t1\r\nq2\td77\t1\r\nq2\td2\t1\r\n"
    data_dir = _beir(tmp_path, DOCS, QUERIES, qrels)
    with caplog.at_level(logging.WARNING):
        out = _prepare_tiny(data_dir, tmp_path / "out", "group_size=5")
    assert "train.tsv: 1 lines name query ids not in queries.jsonl (first: 'q9' (line 3)); lines skipped" in caplog.text
    assert "train.tsv: 1 lines name doc ids not in corpus.jsonl (first: 'd77' (line 4)); lines skipped" in caplog.text
    counts = json.loads((out / MANIFEST).read_text())["counts"]["tiny"]
    # q1 has the 4 other documents as candidates (G-1 = 4); q2's query term "cells" is in every document too,
    # but d2 is judged, so q2 has 4 candidates as well; with group_size=6 both would be too short.
    assert counts == {
        "qrels_unknown_query": 1,
        "qrels_unknown_doc": 1,
        "queries_judged": 2,
        "queries_without_positive": 0,
        "queries_with_too_few_negatives": 0,
        "groups": 2,
    }
    shutil.rmtree(out)
    short = json.loads((_prepare_tiny(data_dir, out, "group_size=6") / MANIFEST).read_text())["counts"]["tiny"]
    assert short["queries_with_too_few_negatives"] == 2 and short["groups"] == 0


def test_prepared_set_detects_edited_shards_and_bad_lines(scifact_set, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(scifact_set, copy)
    shard = next(copy.glob("*-00001.jsonl"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"00001.jsonl: SHA-256 differs"):
        PreparedSet(copy)
    shutil.copytree(scifact_set, tmp_path / "bad", dirs_exist_ok=True)
    bad = tmp_path / "bad"
    lines = (bad / "scifact-00000.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = b'{"query_id": "x", "query": "q", "doc_ids": ["a", "b"], "docs": ["a", "b"]}\n'
    (bad / "scifact-00000.jsonl").write_bytes(b"".join(lines))
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["shards"][0]["sha256"] = prepare_module.sha256_file(bad / "scifact-00000.jsonl")
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"scifact-00000.jsonl:3: missing field\(s\) scores"):
        PreparedSet(bad)[2]


def test_toy_msmarco_triples_scored_by_a_local_teacher(tmp_path):
    cfg = compose_prepare(
        "datasets=[]",
        f"triples=[{TOY_TRIPLES}]",
        "teachers=[{kind: bm25, name: bm25}]",
        "group_size=2",
        f"paths.output_dir={tmp_path}",
    )
    out = prepare(cfg)
    groups = list(PreparedSet(out))
    assert len(groups) == 100 and set(groups[0].scores) == {"bm25"}
    first = sum(g.scores["bm25"][0] > g.scores["bm25"][1] for g in groups) / len(groups)
    assert first > 0.5, f"BM25 ranks the MS MARCO positive first for only {first:.0%} of the toy triples"


def test_msmarco_hard_negatives_through_prepare_with_a_local_teacher_too(tmp_path):
    """The paper-scale converter end to end on fixtures in the published schema: the published cross-encoder
    scores travel as a teacher of their own, next to a local one."""
    from tests.test_msmarco import CE_SCORES, HARD_NEGATIVES, write_jsonl_gz, write_pickle_gz, write_tsv

    files = {
        "hard_negatives": write_jsonl_gz(tmp_path / "hn.jsonl.gz", HARD_NEGATIVES),
        "ce_scores": write_pickle_gz(tmp_path / "ce.pkl.gz", CE_SCORES),
        "collection": write_tsv(tmp_path / "collection.tsv", [(pid, f"passage {pid}") for pid in range(100, 133)]),
        "queries": write_tsv(tmp_path / "queries.tsv", [(q, f"query {q}") for q in (1, 2, 3, 4, 6, 7)]),
    }
    overrides = [f"data.msmarco.{key}={path}" for key, path in files.items()]
    cfg = compose_prepare(
        "data=msmarco", "teachers=[{kind: bm25, name: bm25}]", f"paths.output_dir={tmp_path / 'out'}", *overrides
    )
    groups = list(PreparedSet(prepare(cfg)))
    assert groups and all(set(g.scores) == {"bm25", "cross-encoder/ms-marco-MiniLM-L-6-v2"} for g in groups)
    for g in groups:
        qid, pids = int(g.query_id), [int(d) for d in g.doc_ids]
        assert g.scores["cross-encoder/ms-marco-MiniLM-L-6-v2"] == [CE_SCORES[qid][p] for p in pids]
        assert g.docs == [f"passage {p}" for p in pids]


def test_msmarco_offline_without_files_names_the_key(tmp_path):
    cfg = compose_prepare("data=msmarco", f"paths.output_dir={tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"msmarco\.hard_negatives"):
        prepare(cfg)


def test_idf_cli_on_a_beir_folder_and_a_tsv_equals_the_prepared_sets(data_dir, scifact_set, tmp_path):
    from src.data.beir import load_corpus
    from src.idf import main as idf_main

    idf_main([str(data_dir / "scifact"), "--out", str(tmp_path / "idf.json")])
    assert (tmp_path / "idf.json").read_bytes() == (scifact_set / "idf.json").read_bytes()
    corpus = load_corpus(data_dir / "scifact" / "corpus.jsonl")
    (tmp_path / "collection.tsv").write_text("".join(f"{i}\t{t}\n" for i, t in corpus.items()))
    idf_main([str(tmp_path / "collection.tsv"), "--out", str(tmp_path / "idf_tsv.json")])
    assert (tmp_path / "idf_tsv.json").read_bytes() == (scifact_set / "idf.json").read_bytes()


def test_dataloader_workers_serve_the_same_batches_as_the_main_process(scifact_set):
    """data.num_workers > 0 (the GPU configs' data loading): forked workers read the shards the main process
    already opened (for the length buckets), and must still each read their own lines."""
    tokenizer = load_tokenizer(None)

    def batches(num_workers: int) -> list[dict]:
        data = DistillationDataModule(tokenizer, scifact_set, 4, 64, 16, num_workers=num_workers, seed=3)
        data.setup("fit")
        return list(data.train_dataloader())

    alone, workers = batches(0), batches(2)
    assert len(alone) == len(workers) == 11  # 47 groups, 4 a batch (the last, partial one dropped)
    for a, b in zip(alone, workers, strict=True):
        assert a["teacher_names"] == b["teacher_names"]
        for key in ("query_ids", "doc_ids", "teacher_scores"):
            assert torch.equal(a[key], b[key]), key
