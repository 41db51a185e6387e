"""Reliability of training runs: exact resume after SIGKILL, checksummed checkpoints, collapse and NaN guards,
determinism. Real splade-tiny on real scifact, as `debug=smoke` runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.config import ConfigError
from src.training import module as module_mod
from src.training.checkpoints import AtomicCheckpointIO, CorruptCheckpoint, checkpoints, latest_valid
from src.training.run import train
from tests.conftest import ROOT, compose_train

SMOKE = ["debug=smoke", "seed=7", "trainer.max_steps=20"]


def _metrics(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    return {"status": results["status"], "eval": results["eval"], "train": {**results["train"], "wall_s": None}}


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_metrics_and_weights(tmp_path, cli_env):
    """The issue's command: killed with SIGKILL once its first checkpoint is complete, then rerun with resume=DIR."""
    env = cli_env
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # 8 steps, a checkpoint every 2: killed between its first checkpoint and its end; a small evaluation
    shorter = ["trainer.max_steps=8", "checkpoint.every_n_steps=2", "eval.max_queries=20", "eval.max_docs=300"]
    cmd = [sys.executable, "-m", "src.train", *SMOKE, *shorter]
    done = subprocess.run([*cmd, f"paths.output_dir={whole}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen([*cmd, f"paths.output_dir={killed}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((killed / "checkpoints").glob("*.ckpt.sha256")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    first = checkpoints(killed / "checkpoints")[-1].name

    resumed = subprocess.run(
        [*cmd, f"paths.output_dir={killed}", f"resume={killed}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout and first != "step=8.ckpt"
    assert _metrics(killed) == _metrics(whole)
    assert (killed / "model" / "model.safetensors").read_bytes() == (whole / "model" / "model.safetensors").read_bytes()


SMALL = ["eval.max_queries=20", "eval.max_docs=300", "logger=csv", "trainer.max_steps=8", "data.max_queries=64"]


def _small_run(data_dir: Path, cache_dir: Path, output_dir: Path, *overrides: str) -> dict:
    paths = [f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}", f"paths.output_dir={output_dir}"]
    return train(compose_train(*SMOKE[:2], *SMALL, *paths, *overrides))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir, cache_dir) -> Path:
    """An uninterrupted 8-step run, the reference of the tests below."""
    folder = tmp_path_factory.mktemp("reference")
    _small_run(data_dir, cache_dir, folder)
    return folder


def test_same_seed_same_results_and_a_finished_dir_is_left_alone(
    reference_run, tmp_path, data_dir, cache_dir, monkeypatch
):
    _small_run(data_dir, cache_dir, tmp_path / "b")
    assert _metrics(tmp_path / "b") == _metrics(reference_run)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run dir was trained again")

    monkeypatch.setattr(module_mod, "distillation_loss", no_training)
    again = _small_run(data_dir, cache_dir, tmp_path / "b")
    assert again == json.loads((tmp_path / "b" / "results.json").read_text())
    with pytest.raises(ConfigError, match=r"paths.output_dir: .* another config \(differs in seed\)"):
        _small_run(data_dir, cache_dir, tmp_path / "b", "seed=8")


def _interrupted_by_sigterm(monkeypatch, run, batch: int, signum: int = signal.SIGTERM) -> None:
    """Calls run() with a signal (SIGTERM, as SLURM or scancel sends it) arriving during training batch `batch`
    (1-based); Lightning finishes that batch and stops with SIGTERMException (a SystemExit)."""
    real_loss, calls = module_mod.distillation_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == batch:
            os.kill(os.getpid(), signum)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(module_mod, "distillation_loss", loss)
    with pytest.raises(SystemExit):
        run()
    monkeypatch.setattr(module_mod, "distillation_loss", real_loss)


def _same_weights(a: Path, b: Path) -> bool:
    return (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_sigterm_saves_the_step_in_progress_and_the_rerun_resumes_from_it(
    reference_run, tmp_path, data_dir, cache_dir, monkeypatch
):
    """SIGTERM during step 3: step=3.ckpt is saved although checkpoints are every 5 steps, and rerunning the
    command continues from it exactly."""
    _interrupted_by_sigterm(monkeypatch, lambda: _small_run(data_dir, cache_dir, tmp_path), batch=3)
    assert [p.name for p in checkpoints(tmp_path / "checkpoints")] == ["step=3.ckpt"]
    assert not (tmp_path / "results.json").exists()
    _small_run(data_dir, cache_dir, tmp_path)
    assert _metrics(tmp_path) == _metrics(reference_run) and _same_weights(tmp_path, reference_run)


def test_submitits_time_out_signal_is_deferred_until_the_step_is_saved(tmp_path, data_dir, cache_dir, monkeypatch):
    """Under submitit, SLURM's USR2 before the time limit makes submitit requeue the job and exit at once. During
    training the signal waits for the end of the step in progress: step=3.ckpt is saved, then submitit's handler
    runs (here a stand-in that records the call and exits as submitit does), and it is in place again after."""
    calls = []

    def submitit_requeue(signum, frame):  # submitit's checkpoint_and_try_requeue: requeue, then sys.exit(-1)
        calls.append(sorted(p.name for p in checkpoints(tmp_path / "checkpoints")))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        _interrupted_by_sigterm(
            monkeypatch, lambda: _small_run(data_dir, cache_dir, tmp_path), batch=3, signum=signal.SIGUSR2
        )
        assert calls == [["step=3.ckpt"]]  # called once, after the step was saved
        assert signal.getsignal(signal.SIGUSR2) is submitit_requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_with_gradient_accumulation_saves_whole_steps_and_resumes_exactly(
    tmp_path, data_dir, cache_dir, monkeypatch
):
    """trainer.accumulate_grad_batches=2: a SIGTERM during the 4th batch (the end of step 2) saves step=2.ckpt;
    the data order resumes at batch 4 and the result equals an uninterrupted run's."""
    steps = ["trainer.max_steps=4", "+trainer.accumulate_grad_batches=2", "optim.warmup_steps=1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _small_run(data_dir, cache_dir, whole, *steps)
    _interrupted_by_sigterm(monkeypatch, lambda: _small_run(data_dir, cache_dir, cut, *steps), batch=4)
    assert [p.name for p in checkpoints(cut / "checkpoints")] == ["step=2.ckpt"]
    _small_run(data_dir, cache_dir, cut, *steps)
    assert _metrics(cut) == _metrics(whole) and _same_weights(cut, whole)


def test_damaged_checkpoints_are_detected_and_the_previous_one_used(tmp_path):
    io = AtomicCheckpointIO()
    for step in (5, 10, 15):
        io.save_checkpoint({"step": step, "w": torch.arange(4.0) * step}, tmp_path / f"step={step}.ckpt")
    newest = tmp_path / "step=15.ckpt"
    newest.write_bytes(newest.read_bytes()[:-10])  # cut short after its checksum was written
    (tmp_path / "step=10.ckpt.sha256").unlink()  # killed between the checkpoint and its checksum
    with pytest.raises(CorruptCheckpoint, match=r"step=15\.ckpt: SHA-256 differs"):
        io.load_checkpoint(newest)
    assert latest_valid(tmp_path) == tmp_path / "step=5.ckpt"
    assert (tmp_path / "step=15.ckpt.corrupt").exists() and (tmp_path / "step=10.ckpt.corrupt").exists()
    assert io.load_checkpoint(tmp_path / "step=5.ckpt")["step"] == 5


GUARDED = ["data.max_queries=64", "trainer.max_steps=8", "eval.max_queries=10", "eval.max_docs=100", "logger=csv"]


def _guarded_run(tmp_path: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> dict:
    paths = [f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}"]
    return train(compose_train(*SMOKE[:2], *GUARDED, "checkpoint.every_n_steps=2", *paths, *overrides))


def test_collapse_guard_stops_a_run_forced_to_collapse(tmp_path, data_dir, cache_dir):
    """Plain FLOPS (no mask) at a huge lambda from the first step empties the documents."""
    results = _guarded_run(
        tmp_path, data_dir, cache_dir, "mask.t=null", "reg.term_weights=null", "reg.lambda_d=1000",
        "reg.schedule=constant", "optim.lr=0.01", "guard.doc_len_floor=1.0", "guard.patience=2",
    )  # fmt: skip
    assert results["status"] == "collapsed" and "train/doc_len stayed below 1.0" in results["reason"]
    assert results["train"]["steps"] < 8 and results["train"]["doc_len"] < 1.0
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "collapsed"
    assert results["eval"]["scifact"]["doc_len"] < 1.0  # evaluated as it is: the table shows the collapse


def test_nan_guard_stops_a_diverged_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, cache_dir, monkeypatch):
    real_loss = module_mod.distillation_loss
    calls = []

    def nan_from_step_5(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(module_mod, "distillation_loss", nan_from_step_5)
    results = _guarded_run(tmp_path, data_dir, cache_dir)
    assert results["status"] == "diverged" and "nan" in results["reason"].lower()
    assert results["eval"] == {} and not (tmp_path / "model").exists()
    saved = [p.name for p in checkpoints(tmp_path / "checkpoints")]
    assert saved == ["step=4.ckpt", "step=2.ckpt"]  # none after the NaN step
