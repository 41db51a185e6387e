"""Data parallelism gives what one process gives: the teacher targets normalised over the global batch, the
masked FLOPS over the documents of all ranks, the ranking loss per rank, and after DDP's gradient averaging the
gradients of one process on the whole batch. Real splade-tiny, two CPU processes over gloo."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from src.common.distributed import gather_across_ranks, global_sum, world_size
from src.data.module import LengthBucketSampler
from src.model.encoders import DocEncoder
from src.model.losses import get_loss
from src.retrieval.evaluation import evaluate
from src.teachers import combine
from src.training.module import distillation_loss, distillation_target
from tests.conftest import ROOT, compose_tool

WORLD, N, G, DOC_LEN, VOCAB = 2, 3, 2, 24, 30522
LAMBDA = 0.5  # large, so the FLOPS term weighs in the gradients as much as the ranking loss


def _batch() -> dict[str, torch.Tensor]:
    """The concatenated batch of WORLD ranks: WORLD*N queries x G documents of random tokens, ragged lengths."""
    gen = torch.Generator().manual_seed(0)
    docs = torch.randint(1000, 29000, (WORLD * N * G, DOC_LEN), generator=gen)
    lengths = torch.randint(6, DOC_LEN + 1, (WORLD * N * G,), generator=gen)
    doc_mask = (torch.arange(DOC_LEN) < lengths[:, None]).long()
    docs[:, 0] = 101  # [CLS]
    query = torch.zeros(WORLD * N, VOCAB)  # inference-free queries: IDF weights on a few terms
    terms = docs.view(WORLD * N, G, DOC_LEN)[:, :, 1:5].reshape(WORLD * N, -1)  # terms of its own documents
    query.scatter_(1, terms, torch.rand(terms.shape, generator=gen) * 5)
    teacher = torch.rand(WORLD * N, G, generator=gen) * 20
    return {"doc_ids": docs * doc_mask, "doc_mask": doc_mask, "query": query, "teacher": teacher}


def _encoder() -> DocEncoder:
    return DocEncoder.from_pretrained(None, "log1", head_precision="fp32").eval()  # eval: no dropout


def _loss(encoder: DocEncoder, batch: dict, rows: slice, threshold: float | None, gather: bool) -> dict:
    """The loss of queries `rows` of the batch, as training_step computes it."""
    docs = slice(rows.start * G, rows.stop * G)
    d = encoder(batch["doc_ids"][docs], batch["doc_mask"][docs]).view(-1, G, VOCAB)  # (N, G, V)
    d_all = gather_across_ranks(d) if gather else None
    # The default loss: KL with the student's scale fitted on the global batch (summed over ranks).
    loss = get_loss("kl", student_scale="fit", reduce=global_sum if gather else None)
    return distillation_loss(
        batch["query"][rows], d, batch["teacher"][rows], loss, threshold, LAMBDA, all_doc_vecs=d_all
    )


def _rank(rank: int, port: int, threshold: float, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        encoder, batch = _encoder(), _batch()
        assert world_size() == WORLD
        parts = _loss(encoder, batch, slice(rank * N, (rank + 1) * N), threshold, gather=True)
        parts["loss"].backward()
        grads = {}
        for name, p in encoder.named_parameters():  # what DDP does: average the gradients over ranks
            if p.grad is not None:
                dist.all_reduce(p.grad)
                grads[name] = p.grad / WORLD
        with torch.no_grad():
            local = _loss(encoder, batch, slice(rank * N, (rank + 1) * N), threshold, gather=False)
        scalars = {k: v.detach() for k, v in parts.items() if k != "mask"}
        torch.save(
            {"parts": scalars, "mask": parts["mask"], "local_flops": local["loss_flops"], "grads": grads},
            out / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_flops_and_averaged_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    encoder, batch = _encoder(), _batch()
    with torch.no_grad():  # a threshold between the documents' lengths, so the mask keeps some and drops some
        doc_len = (encoder(batch["doc_ids"], batch["doc_mask"]) != 0).sum(-1).float()
    threshold = float(doc_len.median())
    whole = _loss(encoder, batch, slice(0, WORLD * N), threshold, gather=False)
    whole["loss"].backward()
    reference = {name: p.grad for name, p in encoder.named_parameters() if p.grad is not None}
    assert 0 < whole["mask"].mean() < 1

    mp.spawn(_rank, args=(_free_port(), threshold, tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for r in ranks:  # the FLOPS term, its mask and the student's fitted scale are the global batch's, on every rank
        torch.testing.assert_close(r["parts"]["loss_flops"], whole["loss_flops"], rtol=1e-5, atol=0)
        torch.testing.assert_close(r["parts"]["student_scale"], whole["student_scale"], rtol=1e-5, atol=0)
        assert torch.equal(r["mask"], whole["mask"])
    # Without the gather, each rank's FLOPS (mean over its own N) is another number: the test can fail.
    for r in ranks:
        assert abs(r["local_flops"] / whole["loss_flops"] - 1) > 1e-3
    gathered = [float(r["parts"]["loss_flops"]) for r in ranks]
    ungathered = [float(r["local_flops"]) for r in ranks]
    print(f"FLOPS: one process {float(whole['loss_flops'].detach()):.6g}, gathered {gathered}, ungathered {ungathered}")
    mean_rank = sum(r["parts"]["loss_rank"] for r in ranks) / WORLD  # what train/loss_rank logs (sync_dist)
    torch.testing.assert_close(mean_rank, whole["loss_rank"], rtol=1e-5, atol=0)
    mean_loss = sum(r["parts"]["loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, whole["loss"], rtol=1e-5, atol=0)

    grads = ranks[0]["grads"]
    assert grads.keys() == reference.keys()
    scale = max(g.abs().max() for g in reference.values())
    worst = max(float((grads[k] - reference[k]).abs().max()) for k in reference)
    print(f"max |grad difference| {worst:.3g}, relative to the largest gradient {worst / scale:.3g}")
    assert worst <= 1e-5 * scale
    # And per tensor (relative to its norm), so a small tensor's error is not hidden by a large one's scale.
    relative = {k: float((grads[k] - reference[k]).norm() / reference[k].norm().clamp_min(1e-30)) for k in reference}
    # (Tensors whose gradient is zero in exact arithmetic, e.g. attention key biases, hold only rounding noise.)
    relative = {k: e for k, e in relative.items() if float(reference[k].norm()) > 1e-6 * float(scale)}
    name = max(relative, key=relative.get)
    print(f"worst of {len(relative)} tensors {name}: |grad difference| / |grad| = {relative[name]:.3g}")
    assert relative[name] <= 1e-4
    for k in reference:  # DDP leaves every rank with the same averaged gradients
        assert torch.equal(ranks[1]["grads"][k], grads[k])


TEACHERS = ("splade", "bm25", "ce")
TARGET = {"normalize": "minmax", "weights": {"splade": 2.0, "bm25": 1.0, "ce": 0.5}, "scale": 20.0}


def _teacher_scores() -> torch.Tensor:
    """Raw (T, WORLD*N, G) scores of the concatenated batch, each teacher on its own scale and each rank's half
    with its own min and max; "ce" is flat within rank 1's half, but not over the whole batch."""
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(len(TEACHERS), WORLD * N, G, generator=gen)  # (T, W*N, G)
    raw *= torch.tensor([30.0, 12.0, 5.0])[:, None, None]
    raw[:, N:] = raw[:, N:] * 0.5 + 4.0  # rank 1's half: a narrower range, shifted
    raw[2, N:] = 2.5
    return raw


def _target_rank(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        raw = _teacher_scores()[:, rank * N : (rank + 1) * N]  # (T, N, G): this rank's half
        names = TEACHERS
        if rank == 1:  # another rank may hold the teachers in another order (its first record's)
            raw, names = raw.flip(0), names[::-1]
        target = distillation_target(raw, names, **TARGET)  # (N, G)
        # What the collator used to compute: each teacher normalised over this rank's half only.
        per_rank = combine(dict(zip(names, raw, strict=True)), TARGET["normalize"], TARGET["weights"]) * TARGET["scale"]
        torch.save({"target": target, "per_rank": per_rank}, out / f"target{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_teacher_targets_are_normalised_over_the_global_batch(tmp_path):
    """Two ranks, each with half of a batch of raw teacher scores: their targets are those of one process on the
    whole batch (min and max of each teacher all-reduced), where per-rank normalisation gives other numbers."""
    whole = distillation_target(_teacher_scores(), TEACHERS, **TARGET)  # (W*N, G), one process
    mp.spawn(_target_rank, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"target{r}.pt") for r in range(WORLD)]
    assert torch.equal(ranks[0]["target"], whole[:N])
    # Rank 1 sums its teachers in another order: the same ranges, only the sum's rounding may differ.
    torch.testing.assert_close(ranks[1]["target"], whole[N:], rtol=1e-6, atol=1e-5)
    # Normalised per rank, the targets are other numbers: the test can fail.
    per_rank = [float((r["per_rank"] - whole[i * N : (i + 1) * N]).abs().max()) for i, r in enumerate(ranks)]
    print(f"max |target difference| with per-rank normalisation (scale {TARGET['scale']}): {per_rank}")
    assert min(per_rank) > 0.5


@pytest.mark.parametrize("lengths", [None, [(7 * i) % 200 + 20 for i in range(100)]])
def test_ranks_share_each_global_batch_of_the_one_process_order(lengths):
    """W ranks x batch B: the W local batches of each step are the one-process batch of size W*B, disjoint."""

    def sampler(batch_size: int, **kwargs) -> LengthBucketSampler:
        return LengthBucketSampler(100, batch_size, seed=5, lengths=lengths, pool_batches=2, **kwargs)

    one = list(sampler(8))
    shards = [sampler(4, num_replicas=2, rank=r) for r in (0, 1)]
    served = [list(s) for s in shards]
    assert len(shards[0]) == len(shards[1]) == len(one) == 12
    for step, batch in enumerate(one):
        a, b = served[0][step], served[1][step]
        assert len(a) == len(b) == 4 and not set(a) & set(b) and sorted(a + b) == sorted(batch)
    for r in (0, 1):  # resumed at a step, each rank continues its own share
        assert list(sampler(4, num_replicas=2, rank=r, start_batch=5)) == served[r][5:]
    with pytest.raises(ValueError, match="rank"):
        LengthBucketSampler(100, 4, seed=5, num_replicas=2, rank=2)


@pytest.mark.slow
def test_two_process_ddp_run_trains_and_rank_zero_alone_writes_results(tmp_path, cli_env):
    """`trainer.devices=2 trainer.strategy=ddp` on CPU: Lightning relaunches the command for rank 1. Then the run,
    cut back to its step-2 checkpoint, is resumed under DDP: the same weights, bit for bit."""
    env = cli_env
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "debug=smoke",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=2",
        "checkpoint.keep=3",
        "optim.warmup_steps=1",
        "data.max_queries=64",
        "eval.max_queries=10",
        "eval.max_docs=100",
        "num_threads=1",
        "logger=csv",
        f"paths.output_dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["train"]["steps"] == 4
    assert results["eval"]["scifact"]["num_queries"] == 10
    assert [p.relative_to(out) for p in out.rglob("results.json")] == [Path("results.json")]
    assert [p.relative_to(out) for p in out.rglob("model.safetensors")] == [Path("model/model.safetensors")]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == ["step=2.ckpt", "step=4.ckpt"]
    checkpoint = torch.load(out / "checkpoints" / "step=4.ckpt", weights_only=False)
    assert len(checkpoint["rng_states_per_rank"]) == 2  # each rank's dropout stream, for an exact resume
    # The two ranks shared the evaluation corpus's encoding: one process evaluating the exported model gives
    # the same metrics.
    alone = evaluate(
        compose_tool(
            "evaluate",
            f"model={out / 'model'}",
            "max_queries=10",
            "max_docs=100",
            "max_length=256",  # debug=smoke's eval.max_length
            "cache=false",
            "num_threads=1",
            f"paths.output_dir={tmp_path / 'alone'}",
            f"paths.data_dir={env['DATA_DIR']}",
        )
    )
    for metric, value in results["eval"]["scifact"].items():
        assert alone["eval"]["scifact"][metric] == pytest.approx(value, abs=1e-6), metric

    weights = (out / "model" / "model.safetensors").read_bytes()
    for done in ("results.json", "model", "checkpoints/step=4.ckpt", "checkpoints/step=4.ckpt.sha256"):
        shutil.rmtree(out / done) if (out / done).is_dir() else (out / done).unlink()
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    again = json.loads((out / "results.json").read_text())
    assert (again["train"]["steps"], again["eval"]) == (4, results["eval"])
    assert (out / "model" / "model.safetensors").read_bytes() == weights
