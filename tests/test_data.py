import random

import pytest

from src.data.beir import DataError, load_beir, load_corpus, load_qrels, subsample
from src.data.mining import mine_groups


def test_real_scifact_splits_load_with_crlf_qrels(data_dir):
    assert (data_dir / "scifact" / "qrels" / "test.tsv").read_bytes().count(b"\r\n") > 300
    test = load_beir(data_dir, "scifact", "test")
    assert (len(test.corpus), len(test.queries), sum(map(len, test.qrels.values()))) == (5183, 300, 339)
    assert all(not d.endswith("\r") for judged in test.qrels.values() for d in judged)


def test_subsample_keeps_judged_documents(data_dir):
    small = subsample(load_beir(data_dir, "scifact", "test"), 50, 1000)
    assert len(small.queries) == 50 and len(small.corpus) == 1000
    assert all(d in small.corpus for judged in small.qrels.values() for d in judged)


def test_bad_lines_name_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid JSON"):
        load_corpus(corpus)
    corpus.write_text('{"_id": "1", "title": "no text"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: missing field\(s\) text"):
        load_corpus(corpus)
    qrels = tmp_path / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\r\n")
    with pytest.raises(DataError, match=r"test.tsv:3: expected 3 tab-separated fields"):
        load_qrels(qrels)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nosuchset.*corpus.jsonl does not exist.*DATA_DIR"):
        load_beir(tmp_path, "nosuchset", "test")


def test_mined_groups_have_judged_positive_and_unjudged_negatives(data_dir):
    train = load_beir(data_dir, "scifact", "train")
    groups, counts = mine_groups(train, group_size=3, negatives_from_top=50, seed=1)
    assert counts["groups"] == len(groups) == 809
    for g in groups:
        assert len(g.doc_ids) == 3 and train.qrels[g.query_id].get(g.doc_ids[0], 0) > 0
        assert not any(d in train.qrels[g.query_id] for d in g.doc_ids[1:])
        assert g.docs == [train.corpus[d] for d in g.doc_ids] and g.query == train.queries[g.query_id]
    assert mine_groups(train, group_size=3, negatives_from_top=50, seed=1)[0] == groups  # deterministic


def test_length_buckets_cover_each_group_once_and_cut_padding():
    from src.data.module import LengthBucketSampler

    gen = random.Random(0)
    lengths = [gen.randint(20, 256) for _ in range(1000)]
    sampler = LengthBucketSampler(1000, batch_size=8, seed=3, lengths=lengths)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 125 and all(len(b) == 8 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == list(LengthBucketSampler(1000, batch_size=8, seed=3, lengths=lengths))  # same seed, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    unbucketed = [list(range(i, i + 8)) for i in range(0, 1000, 8)]
    assert padding(batches) < 0.1 * padding(unbucketed)


@pytest.mark.parametrize("lengths", [None, [random.Random(1).randint(20, 256) for _ in range(100)]])
def test_sampler_resumed_at_any_batch_continues_the_same_order(lengths):
    from src.data.module import LengthBucketSampler

    def run(sampler: LengthBucketSampler, epochs: range) -> list[list[int]]:
        served = []
        for epoch in epochs:
            sampler.set_epoch(epoch)
            served += list(sampler)
        return served

    whole = run(LengthBucketSampler(100, 8, seed=5, lengths=lengths), range(3))  # 12 batches per epoch
    assert len(whole) == 36 and sorted(i for b in whole[:12] for i in b) == sorted(
        set(i for b in whole[:12] for i in b)
    )
    for done in (0, 5, 12, 19):
        resumed = LengthBucketSampler(100, 8, seed=5, lengths=lengths, start_batch=done)
        first = list(resumed)  # before Lightning's set_epoch: the resumed epoch
        rest = run(resumed, range(done // 12 + 1, 3))
        assert first + rest == whole[done:], f"resumed after {done} batches"
