"""The sweep files under sweeps/ and the offline runner `python -m src.sweep`."""

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.config import config_errors, validate
from src.experiments import sweep as sweep_module
from src.experiments.sweep import SweepError, build_points, grid, load_sweep, point_name, random_search, slurm_layout
from src.sweep import main
from tests.conftest import ROOT, compose_train

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
COMMAND = ["${env}", "python", "-m", "src.train", "${args_no_hyphens}"]
# A real but tiny run: 4 steps, evaluation on 10 queries x 100 documents.
TINY = [
    "debug=smoke",
    "trainer.max_steps=4",
    "optim.warmup_steps=1",
    "data.max_queries=64",  # the prepared set of test_train's in-process run: one set per session
    "eval.max_queries=10",
    "eval.max_docs=100",
    "logger=csv",
]


def write_sweep(folder: Path, parameters: dict, method: str = "grid", name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    body = {"name": name, "method": method, "parameters": parameters, "command": COMMAND}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def fake_train(script: str):
    """Replaces `python -m src.train ...` by a Python one-liner that gets the point's folder as argv[1]."""

    def command(point, extras=()):
        return [sys.executable, "-c", script, str(point.folder)]

    return command


WRITES_RESULTS = (
    "import json, pathlib, sys; pathlib.Path(sys.argv[1], 'results.json').write_text(json.dumps("
    "{'status': 'finished', 'eval': {'scifact': {'ndcg@10': 0.5, 'doc_len': 80.0}}}))"
)


# --- the sweep files ------------------------------------------------------------------------------------------


def test_the_issue_sweep_files_exist():
    assert {p.stem for p in SWEEP_FILES} >= {"threshold", "lambda", "activation", "frontier"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_is_a_wandb_sweep_whose_every_point_composes(path, tmp_path, data_dir):
    raw = yaml.safe_load(path.read_text())
    assert raw["command"][:5] == COMMAND  # W&B's agent passes key=value Hydra overrides to src.train
    assert raw["metric"] == {"name": "dev/scifact/ndcg@10", "goal": "maximize"}  # chosen on dev, never on test
    assert raw["name"] and raw["description"]
    sweep = load_sweep(path)  # parameters are real config keys, distributions supported
    points = build_points(sweep, tmp_path, count=4, seed=0)
    assert points
    for point, values in zip(points, _values(sweep, points), strict=True):
        assert list(point.overrides) == wandb_agent_args(values)  # the runner runs what the W&B agent would
        cfg = compose_train(*point.train_args(), f"paths.data_dir={data_dir}")
        if path.stem == "paper":  # needs the hub and BEIR-13: schema, types and ranges here, the rest where it runs
            assert config_errors(cfg) == []
        else:
            validate(cfg)
        assert Path(cfg.paths.output_dir) == tmp_path / sweep.name / point.name


def _values(sweep, points) -> list[dict]:
    """Each point's parameters as the W&B controller hands them to the agent: {key: value} in file order."""
    combos = grid(sweep) if sweep.method == "grid" else random_search(sweep, len(points), seed=0)
    return [{key: {**sweep.fixed, **combo}[key] for key in sweep.keys} for combo in combos]


def wandb_agent_args(values: dict) -> list[str]:
    """${args_no_hyphens} as wandb's own agent code renders it."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args_no_hyphens"]


def test_sweep_files_sweep_what_the_issue_asks():
    swept = {p.stem: load_sweep(p).swept for p in SWEEP_FILES}
    assert swept["threshold"]["mask.t"]["values"] == [25, 50, 100, 200]
    assert swept["lambda"]["reg.lambda_d"]["values"] == [0.0, 0.04, 0.4, 4.0]
    assert load_sweep(ROOT / "sweeps" / "lambda.yaml").fixed["mask.t"] == "null"  # plain FLOPS
    assert swept["activation"]["activation"]["values"] == ["log1", "log2", "log3"]
    assert set(swept["frontier"]) == {"activation", "mask.t", "reg.lambda_d"}


# --- points ---------------------------------------------------------------------------------------------------


def test_grid_order_overrides_and_point_names(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "activation": {"values": ["log1", "log2"]},
            "reg.lambda_d": {"value": 0.4},
            "mask.t": {"values": [50, "null"]},
        },
    )
    points = build_points(load_sweep(path), tmp_path / "out", ["trainer.max_steps=20"])
    assert [p.name for p in points] == [
        "activation=log1,mask.t=50",
        "activation=log1,mask.t=null",
        "activation=log2,mask.t=50",
        "activation=log2,mask.t=null",
    ]
    assert points[1].overrides == ("activation=log1", "reg.lambda_d=0.4", "mask.t=null", "trainer.max_steps=20")
    assert points[1].folder == tmp_path / "out" / "tiny" / "activation=log1,mask.t=null"
    assert points[1].train_args()[-1] == f'paths.output_dir="{points[1].folder}"'  # quoted: '=' and ','


def test_an_extra_replaces_a_fixed_parameter_and_may_not_touch_a_swept_one(tmp_path):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50, 100]}, "reg.lambda_d": {"value": 0.4}})
    sweep = load_sweep(path)
    assert build_points(sweep, tmp_path, ["reg.lambda_d=4.0"])[0].overrides == ("mask.t=50", "reg.lambda_d=4.0")
    with pytest.raises(SweepError, match=r"--extra: mask.t is swept"):
        build_points(sweep, tmp_path, ["mask.t=10"])


def test_point_names_are_filesystem_safe():
    assert point_name({"model.name_or_path": "naver/splade v3"}) == "model.name_or_path=naver_splade_v3"
    assert point_name({}) == "default"
    assert len(point_name({"x": "y" * 500})) <= 200


def test_random_search_is_seeded_and_draws_within_range(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "reg.lambda_d": {"distribution": "log_uniform_values", "min": 0.001, "max": 1.0},
            "optim.lr": {"min": 1e-5, "max": 1e-4},  # floats: uniform
            "mask.t": {"min": 10, "max": 300},  # integers: int_uniform
            "activation": {"values": ["log1", "log2"], "probabilities": [0.25, 0.75]},
            "seed": {"value": 3},
        },
        method="random",
    )
    sweep = load_sweep(path)
    first = random_search(sweep, 20, seed=7)
    assert first == random_search(sweep, 20, seed=7)
    assert first != random_search(sweep, 20, seed=8)
    assert len(first) == 20
    for values in first:
        assert isinstance(values["reg.lambda_d"], float) and 0.001 <= values["reg.lambda_d"] <= 1.0
        assert isinstance(values["optim.lr"], float) and 1e-5 <= values["optim.lr"] <= 1e-4
        assert isinstance(values["mask.t"], int) and 10 <= values["mask.t"] <= 300
        assert values["activation"] in ("log1", "log2")
        assert "seed" not in values  # fixed: in the overrides, not the name
    assert [p.name for p in build_points(sweep, tmp_path, count=5, seed=7)] == [point_name(v) for v in first[:5]]


def test_random_search_stops_at_the_size_of_a_small_space(tmp_path):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50, 100]}}, method="random")
    assert sorted(v["mask.t"] for v in random_search(load_sweep(path), 10, seed=0)) == [50, 100]


# --- bad sweep files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "method", "message"),
    [
        ({"mask.tt": {"values": [1]}}, "grid", r"parameter mask.tt: not a key .* \(did you mean mask.t\?\)"),
        ({"data.teacher.1.max_length": {"value": 9}}, "grid", r"parameter data.teacher.1.max_length: not a key"),
        ({"mask.t": {"distribution": "q_normal", "mu": 0}}, "random", r"parameter mask.t: unsupported keys \['mu'\]"),
        ({"mask.t": {"distribution": "normal"}}, "random", r"parameter mask.t: distribution 'normal' is not"),
        ({"mask.t": {"min": 1, "max": 9}}, "grid", r"parameter mask.t: grid search needs `values`"),
        ({"mask.t": {"value": None}}, "grid", r'parameter mask.t: null must be written as the string "null"'),
        ({"mask.t": {"values": [1]}}, "bayes", r"method: 'bayes' is not run offline"),
        ({"optim.lr": {"min": "1e-5", "max": 1.0e-4}}, "random", r"optim.lr: uniform needs .* write 1.0e-5"),
        ({"reg.lambda_d": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, "random", r"min > 0"),
    ],
)
def test_bad_sweep_file_names_the_file_and_parameter(tmp_path, parameters, method, message):
    path = write_sweep(tmp_path, parameters, method=method)
    with pytest.raises(SweepError, match=rf"^{path}: .*{message}"):
        load_sweep(path)


def test_bad_sweep_file_exits_2_with_the_message(tmp_path, capsys):
    path = write_sweep(tmp_path, {"mask.tt": {"values": [1]}})
    assert main([str(path), "--dry-run"]) == 2
    assert f"{path}: parameter mask.tt: not a key" in capsys.readouterr().err


def test_a_bad_value_fails_every_point_before_anything_runs(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, {"activation": {"values": ["log1", "lg2"]}})
    monkeypatch.setattr(sweep_module, "run_serial", lambda *a: pytest.fail("ran a point"))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "point activation=lg2: activation: 'lg2': not a known activation" in capsys.readouterr().err


# --- the runner, with a stand-in for src.train ----------------------------------------------------------------


def test_dry_run_prints_one_command_per_point_and_runs_nothing(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50, 100, 200]}, "reg.lambda_d": {"value": 0.4}})
    monkeypatch.setattr(sweep_module.subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    monkeypatch.setattr(sweep_module, "launch_hydra", lambda *a: pytest.fail("launched"))
    out = tmp_path / "out dir"  # a space: the lines must still be copy-pastable
    assert main([str(path), "--dry-run", "--out", str(out), "--extra", "trainer.max_steps=50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    argv = shlex.split(lines[1])
    assert argv[:4] == ["WANDB_RUN_GROUP=tiny", sys.executable, "-m", "src.train"]
    assert argv[4:] == [
        "mask.t=100",
        "reg.lambda_d=0.4",
        "trainer.max_steps=50",
        f'paths.output_dir="{out}/tiny/mask.t=100"',
    ]
    assert not out.exists()


def test_finished_points_are_skipped_and_the_rest_run(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50, 100]}})
    done = tmp_path / "out" / "tiny" / "mask.t=50"
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"status": "collapsed", "eval": {"scifact": {"ndcg@10": 0.01}}}))
    monkeypatch.setattr(sweep_module, "command", fake_train(WRITES_RESULTS))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("=== [") == 1 and "=== [1/1] mask.t=100" in out  # only the unfinished point ran
    rows = {r["point"]: r for r in json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())}
    assert rows["mask.t=50"] == {"point": "mask.t=50", "status": "skipped (done)", "ndcg@10": 0.01, "doc_len": None}
    assert rows["mask.t=100"] == {"point": "mask.t=100", "status": "finished", "ndcg@10": 0.5, "doc_len": 80.0}
    assert (tmp_path / "out" / "tiny" / "mask.t=100" / "output.log").is_file()


def test_a_failing_point_is_reported_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50, 100, 200]}})
    fails_at_100 = f"import sys; sys.exit(3) if sys.argv[1].endswith('=100') else exec({WRITES_RESULTS!r})"
    monkeypatch.setattr(sweep_module, "command", fake_train(fails_at_100))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 1
    table = capsys.readouterr().out.split("\npoint")[-1]
    assert [line.split()[:3] for line in table.strip().splitlines()[1:4]] == [
        ["mask.t=50", "finished", "0.5000"],
        ["mask.t=100", "failed", "(exit"],
        ["mask.t=200", "finished", "0.5000"],
    ]


def test_each_point_runs_in_its_sweep_group(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, {"mask.t": {"values": [50]}}, name="grouped")
    writes_group = (
        "import os, pathlib, sys; pathlib.Path(sys.argv[1], 'group').write_text(os.environ['WANDB_RUN_GROUP'])"
    )
    monkeypatch.setattr(sweep_module, "command", fake_train(writes_group))
    main([str(path), "--out", str(tmp_path)])
    assert (tmp_path / "grouped" / "mask.t=50" / "group").read_text() == "grouped"


def test_a_failed_hydra_launcher_job_is_reported_with_its_error():
    from hydra.core.utils import JobReturn, JobStatus

    failed_job = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("mask.t: bad\nmore"))
    assert sweep_module._job_failure(failed_job) == "failed (ValueError: mask.t: bad)"
    assert sweep_module._job_failure(JobReturn(status=JobStatus.COMPLETED, _return_value={})) is None


# --- real runs ------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_sweep(tmp_path, data_dir, cache_dir, monkeypatch) -> Path:
    """Two real points; the child processes find the data and the session's cache through the environment."""
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("L0_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "offline")
    fixed = {override.split("=")[0]: {"value": override.split("=")[1]} for override in TINY}
    return write_sweep(tmp_path, {"mask.t": {"values": [50, 100]}, **fixed})


def _assert_both_finished(out: Path) -> None:
    for name in ("mask.t=50", "mask.t=100"):
        results = json.loads((out / "tiny" / name / "results.json").read_text())
        assert results["status"] == "finished" and results["train"]["steps"] == 4
        assert results["config"]["mask_t"] == int(name.split("=")[1])


def test_real_two_point_sweep_runs_then_skips(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tiny_sweep), "--out", str(out)]) == 0
    _assert_both_finished(out)
    assert main([str(tiny_sweep), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("skipped (done)") == 2


@pytest.mark.slow
def test_real_two_point_sweep_through_submitit_local(tiny_sweep, tmp_path):
    """The issue's 'Scale-out': submitit's local mode (one subprocess per point) runs a two-point sweep."""
    out = tmp_path / "out"
    args = [
        str(tiny_sweep),
        "--out",
        str(out),
        "--launcher",
        "submitit_local",
        "--extra",
        "hydra.launcher.timeout_min=5",
    ]
    assert main(args) == 0
    _assert_both_finished(out)
    assert (out / "tiny" / "mask.t=50" / ".hydra" / "overrides.yaml").is_file()  # a Hydra job folder per point


FAKE_SLURM = Path(__file__).parent / "fake_slurm"  # sbatch, srun, sacct, scontrol: see fake_slurm.py


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """The fake SLURM first on PATH; yields its state folder (job ids, task states, requeue requests)."""
    state = tmp_path / "fake_slurm"
    state.mkdir()
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    yield state
    for pid in state.glob("*/runner.pid"):  # a job still running (the test failed): stop it and its tasks
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid.read_text()), signal.SIGKILL)


@pytest.mark.slow
def test_real_two_point_sweep_through_slurm_on_a_fake_cluster(tiny_sweep, tmp_path, fake_slurm):
    """--launcher slurm: submitit's real SlurmExecutor submits both points as one job array (sbatch), watches it
    (sacct) and collects the results; tests/fake_slurm runs the array tasks here, through srun, with the
    environment SLURM gives a task. The sbatch file carries conf/hydra/launcher/slurm.yaml."""
    from submitit.core.utils import DelayedSubmission

    out = tmp_path / "out"
    args = [str(tiny_sweep), "--out", str(out), "--launcher", "slurm", "--extra", "hydra.launcher.partition=fake"]
    assert main(args) == 0
    _assert_both_finished(out)
    (submission,) = (out / "tiny" / ".submitit").glob("*/*_submission.sh")  # one sbatch file for the array
    sbatch = {line.removeprefix("#SBATCH ") for line in submission.read_text().splitlines() if "#SBATCH" in line}
    assert {
        "--array=0-1%2",  # submitit writes min(points, array_parallelism: 32)
        "--partition=fake",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=240",
        "--signal=USR2@120",  # submitit's time-out warning: it requeues the job (max_num_timeout times)
        "--job-name=train",
        "--open-mode=append",  # a requeued job appends to its logs
    } <= sbatch
    assert not any(flag.startswith("--gpus") for flag in sbatch)  # the points train on trainer=cpu: no idle GPUs
    job_id = submission.name.split("_")[0]
    for _ in range(300):  # a task's result is in before its process exits: wait for the fake's runner to end
        if not (fake_slurm / job_id / "runner.pid").exists():
            break
        time.sleep(0.1)
    assert sorted(p.name for p in (fake_slurm / job_id).glob("*.state")) == ["0.state", "1.state"]
    assert {p.read_text() for p in (fake_slurm / job_id).glob("*.state")} == {"COMPLETED"}
    for task, name in enumerate(("mask.t=50", "mask.t=100")):  # the array follows the order of the points
        folder = out / "tiny" / ".submitit" / f"{job_id}_{task}"
        log = (folder / f"{job_id}_{task}_0_log.out").read_text()  # srun's --output
        assert f"JobEnvironment(job_id={job_id}_{task}, " in log and "Job completed successfully" in log
        delayed = DelayedSubmission.load(folder / f"{job_id}_{task}_submitted.pkl")
        assert hasattr(delayed.function, "checkpoint")  # submitit requeues only a checkpointable job ...
        assert (delayed._timeout_min, delayed._timeout_countdown) == (240, 10)  # ... up to max_num_timeout times
        results = json.loads((out / "tiny" / name / "results.json").read_text())
        assert results["config"]["mask_t"] == int(name.split("=")[1])
        assert results["config"]["resolved"]["trainer"]["accelerator"] == "cpu"  # whatever the job asked SLURM
    assert not (fake_slurm / "requeued").exists()


@pytest.mark.slow
def test_a_two_process_point_runs_as_two_srun_tasks_on_the_fake_cluster(tiny_sweep, tmp_path, fake_slurm):
    """Lightning's SLURM convention: src.sweep sets tasks_per_node = trainer.devices, and srun starts one process
    per device, which Lightning joins into one DDP run (here gloo on CPU)."""
    parameters = yaml.safe_load(tiny_sweep.read_text())["parameters"]
    one_point = write_sweep(tmp_path, {**parameters, "mask.t": {"values": [50]}}, name="ddp")
    out = tmp_path / "out"
    extras = ["trainer.devices=2", "trainer.strategy=ddp"]
    assert main([str(one_point), "--out", str(out), "--launcher", "slurm", "--extra", *extras]) == 0
    results = json.loads((out / "ddp" / "mask.t=50" / "results.json").read_text())
    assert results["status"] == "finished" and results["train"]["steps"] == 4
    (submission,) = (out / "ddp" / ".submitit").glob("*/*_submission.sh")  # one point: a plain job, no array
    assert "#SBATCH --ntasks-per-node=2" in submission.read_text() and "--array" not in submission.read_text()
    for rank in (0, 1):
        log = next((out / "ddp" / ".submitit").glob(f"*/*_{rank}_log.out")).read_text()
        assert f"global_rank={rank}(2)" in log and "MEMBER: " in log


def test_slurm_layout_follows_the_points_trainer_and_refuses_what_lightning_would(tmp_path):
    """The paper points (trainer=ddp, 8 devices) get 8 tasks and 8 GPUs per node; an --extra that contradicts
    them, or points that disagree, fail before anything is submitted."""
    paper = load_sweep(ROOT / "sweeps" / "paper.yaml")
    points = build_points(paper, tmp_path)
    layout = slurm_layout(points, [])
    assert sorted(layout) == [
        "hydra.launcher.gpus_per_node=8",
        "hydra.launcher.nodes=1",
        "hydra.launcher.tasks_per_node=8",
    ]
    assert slurm_layout(points, ["hydra.launcher.partition=gpu", "hydra.launcher.tasks_per_node=8"]) == [
        "hydra.launcher.gpus_per_node=8",
        "hydra.launcher.nodes=1",
    ]
    with pytest.raises(SweepError, match=r"hydra.launcher.tasks_per_node=1: the points' trainer config asks for 8"):
        slurm_layout(points, ["hydra.launcher.tasks_per_node=1"])
    tiny = load_sweep(write_sweep(tmp_path, {"trainer.devices": {"values": [1, 2]}, "debug": {"value": "smoke"}}))
    with pytest.raises(SweepError, match="points train on different trainer.devices"):
        slurm_layout(build_points(tiny, tmp_path), [])
