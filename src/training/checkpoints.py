"""Checkpoints that survive being killed at any moment, and the choice of which one to resume from.

Every checkpoint is written atomically (temporary file, fsync, rename) with a `.sha256` beside it, written
after it: a checkpoint whose checksum is missing or differs was cut short or damaged, and is never loaded.
`StepCheckpoint` keeps the newest `keep` of them, so a corrupt newest one still leaves one to resume from.
"""

import hashlib
import io
import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.common.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)
PATTERN = re.compile(r"step=(\d+)\.ckpt$")


class CorruptCheckpoint(ValueError):
    """A checkpoint file does not match its recorded checksum (or has none); the message names it."""


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class AtomicCheckpointIO(CheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(Path(path), data)
        atomic_write_text(_checksum_file(Path(path)), hashlib.sha256(data).hexdigest() + "\n")  # last: "complete"

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        data = verified_bytes(Path(path))
        return torch.load(io.BytesIO(data), map_location=map_location or "cpu", weights_only=False)

    def remove_checkpoint(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)
        _checksum_file(Path(path)).unlink(missing_ok=True)


def verified_bytes(path: Path) -> bytes:
    checksum = _checksum_file(path)
    if not checksum.is_file():
        raise CorruptCheckpoint(f"{path}: no {checksum.name} beside it: the write did not finish")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != checksum.read_text().strip():
        raise CorruptCheckpoint(f"{path}: SHA-256 differs from {checksum.name}: the file is damaged")
    return data


def checkpoints(folder: Path) -> list[Path]:
    """The step checkpoints in `folder`, newest first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step=*.ckpt") if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid(folder: Path) -> Path | None:
    """The newest checkpoint whose checksum holds; damaged ones are renamed `*.corrupt` and named in a warning."""
    for path in checkpoints(folder):
        try:
            verified_bytes(path)
            return path
        except CorruptCheckpoint as err:
            log.warning("%s; resuming from an older checkpoint", err)
            path.rename(path.with_name(path.name + ".corrupt"))
    return None


class StepCheckpoint(L.Callback):
    """Saves `step=<N>.ckpt` every `every_n_steps` optimizer steps into `folder`, keeping the newest `keep`.

    `skip_when` (a callable) vetoes a save: the training guard uses it so a diverged state is never saved.
    """

    def __init__(self, folder: Path, every_n_steps: int, keep: int = 2, skip_when=lambda: False):
        self.folder, self.every_n_steps, self.keep, self.skip_when = Path(folder), every_n_steps, keep, skip_when
        self.last_saved = -1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step  # counts optimizer steps: with gradient accumulation, several batches share one
        if step % self.every_n_steps == 0:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM (a SLURM pre-emption or time-out, `scancel`, a scheduler's kill): Lightning finishes the step
        # in progress and stops with SIGTERMException on every rank. Saving that step now means the requeued
        # or rerun job loses nothing. Any other exception may have left a step half done: nothing is saved.
        if not isinstance(exception, SIGTERMException):
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if batches % trainer.accumulate_grad_batches:  # inside an accumulation window: resume from the last save
            return
        log.warning("SIGTERM: saving step %d before stopping", trainer.global_step)
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == 0 or step == self.last_saved or self.skip_when():
            return
        self.last_saved = step
        trainer.save_checkpoint(self.folder / f"step={step}.ckpt", weights_only=False)  # optimizer state too
        for old in checkpoints(self.folder)[self.keep :]:
            trainer.strategy.remove_checkpoint(old)


class SaveThenRequeue(L.Callback):
    """Defers a cluster's "time is up" signal to the end of the step in progress, so the step is saved first.

    submitit asks SLURM for `--signal=USR2@<signal_delay_s>` and requeues the job from its USR2 handler, exiting
    at once: mid-step, after the last periodic checkpoint (up to `checkpoint.every_n_steps` steps lost per
    requeue). During training this callback takes the signal instead: it asks Lightning to stop after the step
    (as a SIGTERM does, on every rank), `StepCheckpoint` saves that step, and then the handler it replaced runs
    (submitit: requeue, exit). Only a Python-level handler is deferred: without one (not under submitit) the
    signal's own action is left alone.
    """

    def __init__(self, signum: int = signal.SIGUSR2):
        self.signum = signum
        self._deferred: Any = None  # the handler taken over (submitit's), while training
        self._pending: tuple | None = None  # (signum, frame) of a signal that arrived

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        handler = signal.getsignal(self.signum)
        if callable(handler):
            self._deferred = handler
            signal.signal(self.signum, self._defer)

    def _defer(self, signum: int, frame: Any) -> None:
        log.warning("%s: stopping after this step to save it, then handing over", signal.Signals(signum).name)
        self._pending = (signum, frame)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM handling: stop after the step, on every rank

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        handler = self._release()  # (StepCheckpoint, an earlier callback, has saved the step by now)
        if handler is not None and self._pending is not None and isinstance(exception, SIGTERMException):
            handler(*self._pending)  # submitit: requeue this job, then sys.exit

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def _release(self) -> Any:
        """Gives the signal back to the handler taken over, and returns that handler (None if none was)."""
        handler, self._deferred = self._deferred, None
        if handler is not None:
            signal.signal(self.signum, handler)
        return handler
