import gzip
import json
import logging
import pickle
from pathlib import Path

import pytest

from src.data import msmarco
from src.data.beir import DataError
from src.data.msmarco import (
    CE_TEACHER,
    ENSEMBLE_TEACHER,
    HUB_FILES,
    MAX_WARNINGS,
    ensemble_scores_candidates,
    fetch,
    hard_negatives_candidates,
    load_ce_scores,
    read_id_text_tsv,
    read_triples,
    triples_corpus,
)

TRIPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-toy" / "triples.tsv"
MOJIBAKE = "’".encode().decode("latin-1").encode()  # UTF-8 read as Latin-1, as MS MARCO stores apostrophes


def write_tsv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


def write_jsonl_gz(path: Path, rows: list[dict | str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return path


def write_pickle_gz(path: Path, obj: object) -> Path:
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


# --- triples -----------------------------------------------------------------------------------------------------


def test_real_triples_keep_every_byte_and_give_stable_ids():
    if not TRIPLES.is_file():
        pytest.fail(f"the MS MARCO toy triples are not at {TRIPLES}: put ../shared beside the repo")
    raw = TRIPLES.read_bytes()
    rows = [line.split(b"\t") for line in raw.split(b"\n") if line]
    candidates, counts = read_triples(TRIPLES)
    assert counts == {"lines": 100, "groups": 100, "blank_lines": 0}
    assert len(candidates) == len(rows) == 100
    for c, (query, positive, negative) in zip(candidates, rows, strict=True):
        assert (c.query.encode(), c.docs[0].encode(), c.docs[1].encode()) == (query, positive, negative)
        assert c.given_scores == {} and c.query_id.startswith("q") and all(d.startswith("d") for d in c.doc_ids)
    assert MOJIBAKE in raw and any(MOJIBAKE in d.encode() for c in candidates for d in c.docs)  # not "fixed"

    again, _ = read_triples(TRIPLES)
    assert [(c.query_id, c.doc_ids) for c in again] == [(c.query_id, c.doc_ids) for c in candidates]
    id_of = {}
    for c in candidates:
        for doc_id, text in zip(c.doc_ids, c.docs, strict=True):
            assert id_of.setdefault(text, doc_id) == doc_id  # one text, one id
    assert len(set(id_of.values())) == len(id_of)  # and one id, one text
    doc_ids = [d for c in candidates for d in c.doc_ids]
    assert len(set(doc_ids)) < len(doc_ids)  # the sample does repeat passages, so sharing was exercised
    assert triples_corpus(candidates) == list(id_of)  # unique texts, first-seen order


def test_triples_crlf_blank_lines_and_max_rows(tmp_path, caplog):
    path = tmp_path / "triples.tsv"
    path.write_bytes(b"q1\tp1\tn1\r\n" + b"\r\n" * 8 + b"q2\tp2\tn1\r\nq3\tp3\tn3\n")
    with caplog.at_level(logging.WARNING, logger="src.data.msmarco"):
        candidates, counts = read_triples(path)
    assert counts == {"lines": 11, "groups": 3, "blank_lines": 8}
    assert [c.docs for c in candidates] == [["p1", "n1"], ["p2", "n1"], ["p3", "n3"]]
    assert candidates[0].doc_ids[1] == candidates[1].doc_ids[1]
    assert "triples.tsv:2: blank line" in caplog.text
    assert len(caplog.records) == MAX_WARNINGS + 1 and "8 skipped as blank_lines in all" in caplog.text
    assert [c.query for c in read_triples(path, max_rows=2)[0]] == ["q1", "q2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"q\tp\tn\nq\tp\n", r"triples.tsv:2: expected 3 tab-separated fields \(query, positive, negative\), got 2"),
        (b"q\tp\tn\tx\n", r"triples.tsv:1: expected 3 tab-separated fields .*got 4"),
        (b"q\tp\tn\nq\t \tn\n", r"triples.tsv:2: empty field\(s\): positive"),
        (b"q\tp\tn\nq\tp\tn\nq\xff\tp\tn\n", r"triples.tsv:3: not valid UTF-8 \(byte 0xff at column 2\)"),
    ],
)
def test_bad_triples_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "triples.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_triples(path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "triples.tsv.gz"
    path.write_bytes(gzip.compress(b"q\tp\tn\n" * 1000)[:-40])
    with pytest.raises(DataError, match=r"triples.tsv.gz:\d+: damaged gzip data"):
        read_triples(path)


def test_id_text_tsv_keeps_only_the_asked_ids(tmp_path):
    path = write_tsv(tmp_path / "collection.tsv", [(1, "one"), (2, "two\twith a tab"), (3, "three")])
    assert read_id_text_tsv(path) == {"1": "one", "2": "two\twith a tab", "3": "three"}
    assert read_id_text_tsv(path, {"3", "9"}) == {"3": "three"}
    path.write_text("1\tone\n2 no tab\n")
    with pytest.raises(DataError, match=r"collection.tsv:2: expected `id<TAB>text`, found no tab"):
        read_id_text_tsv(path)


# --- sentence-transformers' hard negatives ---------------------------------------------------------------------

HARD_NEGATIVES = [
    {"qid": 1, "pos": [100, 101, 107], "neg": {"bm25": [102, 103, 101, 104], "tas-b": [105, 107, 106]}},
    {"qid": 2, "pos": [110], "neg": {"bm25": [111]}},  # the positive has no score
    {"qid": 3, "pos": [112], "neg": {"bm25": [113, 114]}},  # one scored negative
    "",
    {"qid": 4, "pos": [115], "neg": {"bm25": [116, 999]}},  # 999 is not in the collection
    {"qid": 5, "pos": [117], "neg": {"bm25": [118, 119]}},  # not in the queries file
    {"qid": 6, "pos": [120], "neg": {"bm25": [121, 122, 123, 124], "tas-b": [125, 126, 127]}},
    {"qid": 7, "pos": [130], "neg": {"bm25": [131, 132]}},  # no scores at all
]
CE_SCORES = {
    1: {100: 8.5, 101: 9.25, 102: 1.5, 103: 2.5, 104: 3.5, 105: 4.5, 106: 5.5},
    2: {111: 1.0},
    3: {112: 5.0, 113: 1.0},
    4: {115: 7.0, 116: 1.0, 999: 2.0},
    5: {117: 6.0, 118: 1.0, 119: 2.0},
    6: {120: 9.0, **{pid: pid / 100 for pid in range(121, 128)}},
}


@pytest.fixture
def marco(tmp_path) -> dict[str, Path]:
    """The official files' schemas, a few lines each."""
    return {
        "hard_negatives": write_jsonl_gz(tmp_path / "msmarco-hard-negatives.jsonl.gz", HARD_NEGATIVES),
        "ce_scores": write_pickle_gz(tmp_path / "cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz", CE_SCORES),
        "collection": write_tsv(
            tmp_path / "collection.tsv", [(pid, f"passage {pid}") for pid in [*range(100, 133), 500]]
        ),
        "queries": write_tsv(tmp_path / "queries.train.tsv", [(q, f"query {q}") for q in (1, 2, 3, 4, 6, 7, 99)]),
    }


def hard_negatives(marco: dict[str, Path], **kwargs):
    return hard_negatives_candidates(
        marco["hard_negatives"], marco["ce_scores"], marco["collection"], marco["queries"], **kwargs
    )


def test_hard_negative_groups_follow_the_rules(marco):
    candidates, counts = hard_negatives(marco, group_size=3)
    assert counts == {
        "queries": 7,
        "groups": 2,
        "blank_lines": 1,
        "queries_without_scored_positive": 2,  # queries 2 and 7
        "queries_with_too_few_negatives": 1,  # query 3
        "query_not_in_queries_file": 1,  # query 5
        "passage_not_in_collection": 1,  # query 4
    }
    assert [c.query_id for c in candidates] == ["1", "6"]
    for c in candidates:
        line = next(r for r in HARD_NEGATIVES if isinstance(r, dict) and r["qid"] == int(c.query_id))
        scored = CE_SCORES[line["qid"]]
        positive, *negatives = map(int, c.doc_ids)
        assert positive in line["pos"] and positive in scored
        assert len(set(negatives)) == 2 and all(n in scored and n not in line["pos"] for n in negatives)
        assert all(any(n in pids for pids in line["neg"].values()) for n in negatives)
        assert c.given_scores == {CE_TEACHER: [scored[int(d)] for d in c.doc_ids]}  # the file's numbers
        assert c.query == f"query {c.query_id}" and c.docs == [f"passage {d}" for d in c.doc_ids]


def test_hard_negatives_systems_top_k_and_seeds(marco):
    candidates, _ = hard_negatives(marco, group_size=3, systems=["bm25"], negatives_from_top=2)
    assert {c.query_id: sorted(c.doc_ids[1:]) for c in candidates} == {"1": ["102", "103"], "6": ["121", "122"]}

    first, _ = hard_negatives(marco, seed=3)
    assert hard_negatives(marco, seed=3)[0] == first  # deterministic for a seed
    groups = {tuple(c.doc_ids) for seed in range(10) for c in hard_negatives(marco, seed=seed)[0] if c.query_id == "6"}
    assert len(groups) > 1  # and the seed matters
    # A query's draw does not depend on the rest of the file: reading only its first two queries gives the same.
    head, counts = hard_negatives(marco, seed=3, max_queries=2)
    assert counts["queries"] == 2 and head == [c for c in first if c.query_id == "1"]
    with pytest.raises(DataError, match=r"no line has negatives from \['nope'\]; it has \['bm25', 'tas-b'\]"):
        hard_negatives(marco, systems=["nope"])


def test_hard_negatives_read_only_the_needed_texts(marco, monkeypatch):
    read = []

    def spy(path, keep=None):
        read.append(found := read_id_text_tsv(path, keep))
        return found

    monkeypatch.setattr(msmarco, "read_id_text_tsv", spy)
    candidates, _ = hard_negatives(marco, group_size=3)
    queries, passages = read
    assert set(queries) == {"1", "4", "6"}  # 5 was asked for too, but is not in the file
    used = {d for c in candidates for d in c.doc_ids}
    assert set(passages) == used | {"115", "116", "117", "118", "119"}  # 999 missing; 500 and the rest never kept


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": 1, "pos": [100], "neg": {"bm25": [', r"hn.jsonl.gz:2: not a valid JSON line"),
        ('{"qid": 1, "pos": [100]}', r"hn.jsonl.gz:2: missing field\(s\) neg"),
        ('{"qid": "1", "pos": [100], "neg": {}}', r'hn.jsonl.gz:2: expected "qid" an integer'),
    ],
)
def test_bad_hard_negative_lines_name_file_and_line(marco, tmp_path, line, message):
    marco["hard_negatives"] = write_jsonl_gz(tmp_path / "hn.jsonl.gz", [HARD_NEGATIVES[0], line])
    with pytest.raises(DataError, match=message):
        hard_negatives(marco)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_ce_scores_pickle_refuses_anything_but_dicts_ints_floats(tmp_path):
    assert load_ce_scores(write_pickle_gz(tmp_path / "ok.pkl.gz", CE_SCORES)) == CE_SCORES
    marker = tmp_path / "ran"
    bad = write_pickle_gz(tmp_path / "scores.pkl.gz", {1: {2: _Payload(marker)}})
    with pytest.raises(DataError, match=r"scores.pkl.gz: the pickle refers to pathlib.Path.touch; only dict, int"):
        load_ce_scores(bad)
    assert not marker.exists()  # refused before anything ran
    junk = tmp_path / "junk.pkl.gz"
    junk.write_bytes(gzip.compress(b"not a pickle"))
    with pytest.raises(DataError, match=r"junk.pkl.gz: not a readable \(gzipped\) pickle"):
        load_ce_scores(junk)


# --- Hofstätter et al.'s BERT_CAT ensemble scores -----------------------------------------------------------------


def test_ensemble_scores_give_pairs_with_the_files_scores(marco, tmp_path, caplog):
    scores = tmp_path / "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv"
    scores.write_text(
        "12.5\t-3.25\t1\t100\t101\n"
        "10.0\t2\t1\t100\t102\n"
        "8\t1\t5\t103\t104\n"  # query 5 is not in the queries file
        "\n"
        "7\t0.5\t4\t105\t999\n"  # passage 999 is not in the collection
        "9\t1\t6\t106\t107\r\n"
    )
    candidates, counts = ensemble_scores_candidates(scores, marco["collection"], marco["queries"])
    assert counts == {
        "lines": 6,
        "groups": 3,
        "queries": 2,
        "lines_beyond_max_queries": 0,
        "blank_lines": 1,
        "query_not_in_queries_file": 1,
        "passage_not_in_collection": 1,
    }
    assert [(c.query_id, c.doc_ids, c.given_scores) for c in candidates] == [
        ("1", ["100", "101"], {ENSEMBLE_TEACHER: [12.5, -3.25]}),
        ("1", ["100", "102"], {ENSEMBLE_TEACHER: [10.0, 2.0]}),
        ("6", ["106", "107"], {ENSEMBLE_TEACHER: [9.0, 1.0]}),
    ]
    assert candidates[0].query == "query 1" and candidates[0].docs == ["passage 100", "passage 101"]
    assert "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv:3: query 5 is not in" in caplog.text

    head, counts = ensemble_scores_candidates(scores, marco["collection"], marco["queries"], max_queries=2)
    assert [c.query_id for c in head] == ["1", "1"]  # the first two queries are 1 and 5
    assert (counts["lines_beyond_max_queries"], counts["query_not_in_queries_file"]) == (2, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1.0\t2.0\t1\t100", r"scores.tsv:2: expected 5 tab-separated fields \(pos_score, neg_score, .*got 4"),
        ("1.0\tabc\t1\t100\t101", r"scores.tsv:2: score 'abc' is not a number"),
        ("nan\t1\t1\t100\t101", r"scores.tsv:2: score 'nan' is not finite"),
    ],
)
def test_bad_ensemble_lines_name_file_and_line(marco, tmp_path, line, message):
    scores = tmp_path / "scores.tsv"
    scores.write_text(f"1\t2\t1\t100\t101\n{line}\n")
    with pytest.raises(DataError, match=message):
        ensemble_scores_candidates(scores, marco["collection"], marco["queries"])


# --- the hub -------------------------------------------------------------------------------------------------------


def test_fetch_offline_names_the_config_key(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    repo_id, filename = HUB_FILES["msmarco.ce_scores"]
    with pytest.raises(FileNotFoundError, match=r"sentence-transformers/msmarco-hard-negatives.*HF_HUB_OFFLINE=1") as e:
        fetch(repo_id, filename, "msmarco.ce_scores")
    assert "set msmarco.ce_scores to the local file" in str(e.value) and filename in str(e.value)
