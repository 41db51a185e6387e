"""Training progress: step counter, loss, doc_len and ETA, as a live bar on a terminal and as periodic log lines
when the output goes to a file (CI logs, SLURM's slurm-<id>.out), where a redrawn bar would be unreadable."""

import logging
import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class TrainingProgress(L.Callback):
    """Replaces Lightning's epoch-based bar (its runs are step-bounded, so its epoch counter reads "0/-2")."""

    def __init__(self, every_s: float = 30.0, stream: TextIO | None = None):
        self.every_s = every_s  # seconds between log lines when not on a terminal
        self.stream = stream
        self.bar: tqdm | None = None

    def _stream(self) -> TextIO:
        return self.stream or sys.stderr

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.first_step = trainer.global_step  # > 0 when resumed: the ETA counts only the steps run here
        self.started = self.logged = time.perf_counter()
        if self._stream().isatty():
            self.bar = tqdm(
                total=trainer.max_steps, initial=self.first_step, desc="training", unit="step", file=self._stream()
            )

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if not trainer.is_global_zero:
            return
        step, total = trainer.global_step, trainer.max_steps
        metrics = trainer.callback_metrics
        loss, doc_len = (float(metrics.get(key, math.nan)) for key in ("train/loss", "train/doc_len"))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", doc_len=f"{doc_len:.1f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        # The first step (how long a step takes), then every `every_s` seconds, and the last step.
        if step - self.first_step != 1 and now - self.logged < self.every_s and step < total:
            return
        self.logged = now
        per_step = (now - self.started) / max(1, step - self.first_step)
        log.info(
            "step %d/%d  loss %.4f  doc_len %.1f  %.2f s/step  elapsed %s  ETA %s",
            step, total, loss, doc_len, per_step, _duration(now - self.started), _duration(per_step * (total - step)),
        )  # fmt: skip

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
