"""LightningModule: inference-free sparse retriever trained by distillation + masked FLOPS."""

import random
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from src.encoders import DocEncoder, IdfQueryEncoder
from src.losses import get_loss
from src.regularizers import masked_flops
from src.schedules import lambda_at, threshold_at


def world_size() -> int:
    """Processes in the default group: 1 unless torch.distributed is initialised (DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns); same signature.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the sum, over all ranks, of the gradients on its rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))  # (W*N, ...)
        _all_gather_single(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # One all_reduce on every backend (gloo has no reduce_scatter); a reduce_scatter would move half the bytes.
        grad = grad.contiguous().clone()  # (W*N, ...)
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]  # (N, ...)


def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) on each of W ranks -> (W*N, ...), rank 0's rows first, identical on every rank; as is when W = 1.

    Differentiable: the backward sums, over all ranks, the gradient each rank's loss puts on this rank's rows
    (as torch.distributed.nn.functional.all_gather, deprecated, and Lightning's all_gather(sync_grads=True) do).
    Every rank needs the same N (the sampler gives every rank batches of one size).
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x)


def distillation_loss(
    query_vecs: torch.Tensor,
    doc_vecs: torch.Tensor,
    teacher_scores: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    threshold: float | None,
    lam: float,
    term_weights: torch.Tensor | None = None,
    all_doc_vecs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One step's loss: ranking loss on q . d against the teacher, plus lam x masked FLOPS.

    query_vecs (N, V), doc_vecs (N, G, V), teacher_scores (N, G). Returns the ranking loss's parts,
    "loss_flops", "loss" (what is optimised) and "mask", the documents the FLOPS term saw.

    `all_doc_vecs` (W*N, G, V): under data parallelism, the document vectors of all W ranks
    (`gather_across_ranks(doc_vecs)`); the FLOPS term is computed on them (mask (W*N, G)), the ranking
    loss on this rank's batch. Summed over ranks by all_gather's backward and averaged by DDP, the
    gradients are those of one process on the W batches together (DESIGN.md section 1).
    """
    scores = torch.einsum("nv,ngv->ng", query_vecs, doc_vecs)  # (N, G)
    parts = loss_fn(scores, teacher_scores)
    loss_flops, mask = masked_flops(doc_vecs if all_doc_vecs is None else all_doc_vecs, threshold, term_weights)
    return {**parts, "loss_flops": loss_flops, "loss": parts["loss_rank"] + lam * loss_flops, "mask": mask}


class SparseRetrieverModule(L.LightningModule):
    def __init__(self, doc_encoder: DocEncoder, query_encoder: IdfQueryEncoder, cfg: DictConfig):
        super().__init__()
        self.doc_encoder = doc_encoder
        self.query_encoder = query_encoder
        self.loss_fn = get_loss(cfg.loss.name)
        self.reg, self.mask, self.optim = cfg.reg, cfg.mask, cfg.optim

    # Exact resume: the RNG streams (dropout) continue where the checkpoint left them. Restored at train start,
    # after everything Lightning does between loading the checkpoint and the first resumed step.
    # Under DDP every rank calls this (trainer.save_checkpoint runs on all ranks; rank 0 writes the file), so
    # each rank's streams are gathered into it: a rank's dropout draws depend on its own batches' shapes.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        states = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }
        checkpoint["rng_states"] = states
        if world_size() > 1:
            per_rank = [None] * world_size()
            dist.all_gather_object(per_rank, states)
            checkpoint["rng_states_per_rank"] = per_rank

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        per_rank = checkpoint.get("rng_states_per_rank")
        rank = dist.get_rank() if world_size() > 1 else 0
        if per_rank is not None and len(per_rank) == world_size():
            self._rng_states = per_rank[rank]
        else:
            self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        states = getattr(self, "_rng_states", None)
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            np.random.set_state(states["numpy"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states = None

    def lambda_now(self) -> float:
        return lambda_at(self.global_step, self.reg.schedule, self.reg.lambda_d, self.reg.T)

    def threshold_now(self) -> float | None:
        return threshold_at(self.global_step, self.mask.schedule, self.mask.t, self.mask.t_start, self.mask.T)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        n, g = batch["teacher_scores"].shape
        q = self.query_encoder(batch["query_ids"], batch["query_mask"])  # (N, V)
        d = self.doc_encoder(batch["doc_ids"], batch["doc_mask"]).view(n, g, -1)  # (N, G, V)
        threshold, lam = self.threshold_now(), self.lambda_now()
        term_weights = self.query_encoder.idf.detach() if self.reg.idf_weighted else None
        # Data parallel (W ranks): masked FLOPS over the documents of all ranks, the ranking loss on this rank's.
        d_all = gather_across_ranks(d)  # (W*N, G, V); d itself when W = 1
        out = distillation_loss(q, d, batch["teacher_scores"], self.loss_fn, threshold, lam, term_weights, d_all)
        mask = out.pop("mask")  # (W*N, G); the rest are scalars: loss_rank (and its parts), loss_flops, loss

        # Logged values are of the global batch of W*N queries, identical on all ranks: loss_flops, masked_frac
        # and doc_len come from the gathered documents; the ranking parts (and so loss) are averaged over ranks.
        doc_len = (d_all.detach() != 0).sum(-1).float()  # (W*N, G)
        sync = world_size() > 1
        rank_parts = {f"train/{name}": value for name, value in out.items() if name != "loss_flops"}
        self.log_dict(rank_parts, prog_bar=False, batch_size=n, sync_dist=sync)
        self.log_dict(
            {"train/loss_flops": out["loss_flops"], "train/lambda": lam, "train/masked_frac": 1.0 - mask.mean()},
            prog_bar=False,
            batch_size=n,
        )
        if threshold is not None:  # plain FLOPS has no threshold to log
            self.log("train/threshold", float(threshold), batch_size=n)
        self.log("train/doc_len", doc_len.mean(), prog_bar=True, batch_size=n)  # the one number to watch
        return out["loss"]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total, warmup = self.trainer.max_steps, self.optim.warmup_steps

        def linear_warmup_decay(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
