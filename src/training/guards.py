"""Stops a run that collapsed or diverged, with a clear message and a status for results.json.

- collapsed: `train/doc_len` (mean non-zeros per document in the batch) stayed below `doc_len_floor` for
  `patience` consecutive steps: the FLOPS loss emptied the representations (DESIGN.md's failure signature).
- diverged: the loss or any trained weight became NaN or infinite. The state is not checkpointed from then on,
  so the last checkpoint is the last good one.
"""

import logging
import math
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


class TrainingGuard(L.Callback):
    def __init__(self, doc_len_floor: float | None, patience: int, check_finite: bool = True):
        self.doc_len_floor, self.patience, self.check_finite = doc_len_floor, patience, check_finite
        self.status, self.reason = "finished", ""
        self.steps_below = 0

    def stopped(self) -> bool:
        return self.status != "finished"

    def _stop(self, trainer: L.Trainer, status: str, reason: str) -> None:
        self.status, self.reason = status, reason
        log.error("stopping at step %d: %s", trainer.global_step, reason)
        trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
        if self.stopped():
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad_loss = self.check_finite and loss is not None and not bool(torch.isfinite(loss).all())
        if self.check_finite and trainer.world_size > 1:  # the local loss differs by rank: all ranks stop together
            bad_loss = trainer.strategy.reduce_boolean_decision(bad_loss, all=False)
        if bad_loss:
            return self._stop(trainer, "diverged", "the loss is NaN or infinite (diverged)")
        if self.check_finite:
            bad = next((n for n, p in module.named_parameters() if not torch.isfinite(p).all()), None)
            if bad is not None:
                return self._stop(trainer, "diverged", f"weight {bad} holds NaN or inf (diverged)")
        doc_len = trainer.callback_metrics.get("train/doc_len")
        if self.doc_len_floor is None or doc_len is None or math.isnan(float(doc_len)):
            return
        self.steps_below = self.steps_below + 1 if float(doc_len) < self.doc_len_floor else 0
        if self.steps_below >= self.patience:
            self._stop(
                trainer,
                "collapsed",
                f"train/doc_len stayed below {self.doc_len_floor} for {self.patience} steps (now {float(doc_len):.3g}):"
                " the representations collapsed; lower reg.lambda_d or set an l0 mask (mask.t)",
            )
