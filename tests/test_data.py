import random

import pytest
import torch

from src.data.beir import DataError, held_out_queries, load_beir, load_corpus, load_qrels, subsample
from src.data.mining import ensemble_ranker, mine_groups


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


def test_scifact_dev_is_a_fixed_fifth_of_train_held_out_and_nfcorpus_keeps_its_own(data_dir):
    train, dev = load_beir(data_dir, "scifact", "train"), load_beir(data_dir, "scifact", "dev")
    assert (len(train.qrels), len(dev.qrels)) == (647, 162)  # 809 train queries: 20% held out
    assert not set(train.qrels) & set(dev.qrels)
    full = load_qrels(data_dir / "scifact" / "qrels" / "train.tsv")
    assert {**train.qrels, **dev.qrels} == full  # together exactly the train split, judgements untouched
    assert set(dev.qrels) == held_out_queries(list(full)) == held_out_queries(sorted(full, reverse=True))
    assert set(dev.queries) == set(dev.qrels) and len(dev.corpus) == 5183
    nf_dev = load_beir(data_dir, "nfcorpus", "dev")  # has qrels/dev.tsv: used as it is, train untouched
    assert len(nf_dev.qrels) == 324 and len(load_beir(data_dir, "nfcorpus", "train").qrels) == 2590
    with pytest.raises(FileNotFoundError, match=r"splits: test, train, dev \(held out of train\)"):
        load_beir(data_dir, "scifact", "validation")


def test_mined_groups_have_judged_positive_and_unjudged_negatives(data_dir):
    train = load_beir(data_dir, "scifact", "train")
    groups, counts = mine_groups(train, group_size=3, negatives_from_top=50, seed=1)
    assert counts["groups"] == len(groups) == 647
    for g in groups:
        assert len(g.doc_ids) == 3 and train.qrels[g.query_id].get(g.doc_ids[0], 0) > 0
        assert not any(d in train.qrels[g.query_id] for d in g.doc_ids[1:])
        assert g.docs == [train.corpus[d] for d in g.doc_ids] and g.query == train.queries[g.query_id]
    assert mine_groups(train, group_size=3, negatives_from_top=50, seed=1)[0] == groups  # deterministic


def test_ensemble_ranker_normalises_each_scorer_per_query_over_the_corpus(data_dir):
    """Two scorers on different scales: each is min-max normalised per query over the whole corpus, then summed;
    a scorer alone ranks as itself, and mined negatives come from the ensemble's top."""
    dataset = subsample(load_beir(data_dir, "scifact", "train"), 4, 60)
    qids, n = list(dataset.qrels), len(dataset.doc_ids)
    gen = torch.Generator().manual_seed(0)
    big, small = torch.rand(4, n, generator=gen) * 100, torch.rand(4, n, generator=gen)  # (Q, D) each

    row = {dataset.queries[q]: i for i, q in enumerate(qids)}

    def scorer(table: torch.Tensor):
        return lambda texts: table[[row[t] for t in texts]]  # (len(texts), D)

    alone = ensemble_ranker([scorer(big)])(dataset, qids, 5)
    assert alone == {q: [dataset.doc_ids[i] for i in big[k].topk(5).indices] for k, q in enumerate(qids)}
    both = ensemble_ranker([scorer(big), scorer(small)], chunk=3)(dataset, qids, 5)

    def unit(t: torch.Tensor) -> torch.Tensor:
        return (t - t.amin(1, keepdim=True)) / (t.amax(1, keepdim=True) - t.amin(1, keepdim=True))

    expected = unit(big) + unit(small)
    assert both == {q: [dataset.doc_ids[i] for i in expected[k].topk(5).indices] for k, q in enumerate(qids)}
    assert both != alone
    ranker = ensemble_ranker([scorer(big), scorer(small)])
    groups, _ = mine_groups(dataset, 3, 5, seed=0, ranker=ranker)
    ranked = ranker(dataset, qids, n)
    for g in groups:  # negatives: from the ensemble's 5 best documents not judged for the query
        assert set(g.doc_ids[1:]) <= set([d for d in ranked[g.query_id] if d not in dataset.qrels[g.query_id]][:5])


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


def test_lightning_advances_the_samplers_epoch():
    """Lightning's epoch-start hook reaches a batch sampler only through its `sampler` attribute: a sampler it
    missed served every epoch the first one's order, and a run resumed before an epoch boundary differed."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    from src.data.module import LengthBucketSampler

    sampler = LengthBucketSampler(40, batch_size=8, seed=3)
    first = list(sampler)
    _set_sampler_epoch(DataLoader(range(40), batch_sampler=sampler), 1)
    assert sampler.epoch == 1 and list(sampler) != first


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


def test_collator_passes_raw_teacher_scores_and_one_process_gets_the_per_batch_minmax_target():
    from src.data.groups import GroupRecord
    from src.data.module import GroupCollator
    from src.model.encoders import load_tokenizer
    from src.training.module import distillation_target

    scores = [  # three teachers on their own scales; "flat" carries no signal in this batch
        {"splade": [14.5, 9.25], "bm25": [31.0, 12.5], "flat": [1.0, 1.0]},
        {"splade": [11.0, 12.75], "bm25": [8.0, 17.25], "flat": [1.0, 1.0]},
        {"splade": [7.5, 3.0], "bm25": [22.0, 19.5], "flat": [1.0, 1.0]},
    ]
    records = [
        GroupRecord(f"q{i}", f"query {i}", ["d1", "d2"], ["first doc", "second doc"], s) for i, s in enumerate(scores)
    ]
    batch = GroupCollator(load_tokenizer(None), max_length=16, query_max_length=8)(records)
    assert batch["teacher_names"] == ("splade", "bm25", "flat")  # the records' order
    raw = batch["teacher_scores"]
    assert raw.dtype == torch.float32 and raw.shape == (3, 3, 2)  # (T, N, G)
    assert torch.equal(raw[1], torch.tensor([s["bm25"] for s in scores]))
    assert batch["query_ids"].shape[0] == 3 and batch["doc_ids"].shape[0] == 6

    # One process: what the collator computed before, bit for bit (each teacher min-max over the batch, the
    # weighted mean summed in the records' order, times scale), so single-process runs keep their numbers.
    weights = {"splade": 3.0, "bm25": 1.5}
    total = 3.0 + 1.5 + 1.0
    expected = None
    for name, s in zip(batch["teacher_names"], raw, strict=True):  # s: (N, G)
        s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else torch.zeros_like(s)
        term = s * (weights.get(name, 1.0) / total)
        expected = term if expected is None else expected + term
    target = distillation_target(raw, batch["teacher_names"], "minmax", weights, scale=20.0)  # (N, G)
    assert torch.equal(target, expected * 20.0)
    torch.testing.assert_close(distillation_target(raw, batch["teacher_names"], "none", None, 2.0), raw.mean(0) * 2)
