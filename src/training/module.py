"""LightningModule: inference-free sparse retriever trained by distillation + masked FLOPS."""

import random
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.common.distributed import all_gather_objects, gather_across_ranks, global_range, global_sum, rank, world_size
from src.model.encoders import DocEncoder, IdfQueryEncoder
from src.model.losses import get_loss
from src.model.regularizers import masked_flops
from src.model.schedules import lambda_at, threshold_at
from src.teachers import combine


def distillation_loss(
    query_vecs: torch.Tensor,
    doc_vecs: torch.Tensor,
    teacher_scores: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    threshold: float | None,
    lam: float,
    term_weights: torch.Tensor | None = None,
    all_doc_vecs: torch.Tensor | None = None,
    in_batch: bool = False,
) -> dict[str, torch.Tensor]:
    """One step's loss: ranking loss on q . d against the teacher, plus lam x masked FLOPS.

    query_vecs (N, V), doc_vecs (N, G, V), teacher_scores (N, G). Returns the ranking loss's parts,
    "loss_flops", "loss" (what is optimised) and "mask", the documents the FLOPS term saw.

    `in_batch`: each query is also scored against the other queries' (N-1)*G documents of this batch, after its
    own G; they get the target of its own lowest-scored document (judged for another query, they are taken to be
    no better than its hardest negative). The ranking loss then runs over N*G documents per query.

    `all_doc_vecs` (W*N, G, V): under data parallelism, the document vectors of all W ranks
    (`gather_across_ranks(doc_vecs)`); the FLOPS term is computed on them (mask (W*N, G)), the ranking
    loss on this rank's batch. Summed over ranks by all_gather's backward and averaged by DDP, the
    gradients are those of one process on the W batches together (DESIGN.md section 1).
    """
    if in_batch:
        scores, teacher_scores = _with_in_batch_documents(query_vecs, doc_vecs, teacher_scores)  # (N, N*G) each
    else:
        scores = torch.einsum("nv,ngv->ng", query_vecs, doc_vecs)  # (N, G)
    parts = loss_fn(scores, teacher_scores)
    loss_flops, mask = masked_flops(doc_vecs if all_doc_vecs is None else all_doc_vecs, threshold, term_weights)
    return {**parts, "loss_flops": loss_flops, "loss": parts["loss_rank"] + lam * loss_flops, "mask": mask}


def _with_in_batch_documents(
    query_vecs: torch.Tensor, doc_vecs: torch.Tensor, teacher_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every query against every document of the batch, its own G first (the positive stays in column
    0), and the targets: its own teacher scores, then its lowest one for each other query's document."""
    n, g, _ = doc_vecs.shape
    all_scores = query_vecs @ doc_vecs.flatten(0, 1).T  # (N, N*G)
    own = torch.arange(n, device=doc_vecs.device).unsqueeze(1) * g + torch.arange(g, device=doc_vecs.device)  # (N, G)
    others = torch.ones(n, n * g, dtype=torch.bool, device=doc_vecs.device)
    others[torch.arange(n).unsqueeze(1), own] = False
    columns = torch.cat([own, others.nonzero()[:, 1].view(n, (n - 1) * g)], dim=1)  # (N, N*G)
    floor = teacher_scores.min(dim=1, keepdim=True).values.expand(n, (n - 1) * g)  # (N, (N-1)*G)
    return all_scores.gather(1, columns), torch.cat([teacher_scores, floor], dim=1)


@torch.no_grad()
def distillation_target(
    teacher_scores: torch.Tensor,
    teacher_names: Sequence[str],
    normalize: str = "minmax",
    weights: dict[str, float] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """This rank's raw (T, N, G) teacher scores (the collator's, teachers named in that order) -> the (N, G) target:
    each teacher min-max normalised over the global batch (the W*N groups of all ranks: one all_reduce of the
    ranges; this batch alone when W = 1), the weighted mean (`src.teachers.combine`), times `scale`.
    So the target of a group does not depend on the number of ranks the global batch is split over."""
    scores = dict(zip(teacher_names, teacher_scores.unbind(0), strict=True))  # name -> (N, G)
    return combine(scores, normalize, weights, reduce_range=global_range) * scale  # (N, G)


class SparseRetrieverModule(L.LightningModule):
    def __init__(
        self,
        doc_encoder: DocEncoder,
        query_encoder: IdfQueryEncoder,
        cfg: DictConfig,
        query_frequency: torch.Tensor | None = None,
    ):
        """query_frequency (V,): the fraction of training queries holding each term (reg.term_weights)."""
        super().__init__()
        self.doc_encoder = doc_encoder
        self.query_encoder = query_encoder
        # The student's scale is fitted on the global batch: the same on every rank, whatever the number of ranks.
        self.loss_fn = get_loss(cfg.loss.name, cfg.loss.student_scale, reduce=global_sum)
        self.in_batch = cfg.loss.in_batch
        self.reg, self.mask, self.optim = cfg.reg, cfg.mask, cfg.optim
        # masked_flops squares each term's weighted mean: square roots, so a term's share is linear in its weight.
        weights = {"idf": lambda: query_encoder.idf.detach(), "query_frequency": lambda: query_frequency}
        chosen = weights[cfg.reg.term_weights]() if cfg.reg.term_weights else None
        self.register_buffer(
            "flops_term_weights", None if chosen is None else chosen.clamp(min=0).sqrt(), persistent=False
        )
        self.seed = cfg.seed
        targets = cfg.data.teacher_scores  # how distillation_target combines the teachers
        weights = OmegaConf.to_container(targets.weights) if targets.weights else None
        self.target_settings = {"normalize": targets.normalize, "weights": weights, "scale": targets.scale}

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
            checkpoint["rng_states_per_rank"] = all_gather_objects(states)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank is not None and len(per_rank) == world_size():
            self._rng_states = per_rank[rank()]
        else:
            self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        states = getattr(self, "_rng_states", None)
        if not states and rank() > 0:
            # Every rank was seeded alike (seed_everything(seed)); DDP copies rank 0's weights anyway, but each
            # rank's dropout should draw its own masks. Rank 0 keeps the stream a single process has.
            torch.manual_seed(int(np.random.SeedSequence([self.seed, rank()]).generate_state(1)[0]))
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

    def training_step(self, batch: dict[str, torch.Tensor | tuple[str, ...]], batch_idx: int) -> torch.Tensor:
        teacher = distillation_target(batch["teacher_scores"], batch["teacher_names"], **self.target_settings)  # (N, G)
        n, g = teacher.shape
        q = self.query_encoder(batch["query_ids"], batch["query_mask"])  # (N, V)
        d = self.doc_encoder(batch["doc_ids"], batch["doc_mask"]).view(n, g, -1)  # (N, G, V)
        threshold, lam = self.threshold_now(), self.lambda_now()
        term_weights = self.flops_term_weights
        # Data parallel (W ranks): masked FLOPS over the documents of all ranks, the ranking loss on this rank's.
        d_all = gather_across_ranks(d)  # (W*N, G, V); d itself when W = 1
        out = distillation_loss(q, d, teacher, self.loss_fn, threshold, lam, term_weights, d_all, self.in_batch)
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
