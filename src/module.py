"""LightningModule: inference-free sparse retriever trained by distillation + masked FLOPS."""

import random
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from src.encoders import DocEncoder, IdfQueryEncoder
from src.losses import get_loss
from src.regularizers import masked_flops
from src.schedules import lambda_at, threshold_at


def distillation_loss(
    query_vecs: torch.Tensor,
    doc_vecs: torch.Tensor,
    teacher_scores: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    threshold: float | None,
    lam: float,
    term_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One step's loss: ranking loss on q . d against the teacher, plus lam x masked FLOPS.

    query_vecs (N, V), doc_vecs (N, G, V), teacher_scores (N, G). Returns the ranking loss's parts,
    "loss_flops", "loss" (what is optimised) and "mask" (N, G), the documents the FLOPS term saw.
    """
    scores = torch.einsum("nv,ngv->ng", query_vecs, doc_vecs)  # (N, G)
    parts = loss_fn(scores, teacher_scores)
    loss_flops, mask = masked_flops(doc_vecs, threshold, term_weights)
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
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
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
        out = distillation_loss(q, d, batch["teacher_scores"], self.loss_fn, threshold, lam, term_weights)
        mask = out.pop("mask")  # the rest are scalars: loss_rank (and its parts), loss_flops, loss

        doc_len = (d != 0).sum(-1).float()  # (N, G)
        self.log_dict(
            {
                **{f"train/{name}": value for name, value in out.items()},
                "train/lambda": lam,
                "train/masked_frac": 1.0 - mask.mean(),
            },
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
