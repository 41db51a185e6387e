"""Run a W&B sweep file without a W&B server: `python -m src.sweep sweeps/threshold.yaml`.

The files under sweeps/ are Weights & Biases sweep configs (`wandb sweep` + `wandb agent` run them where a server
is reachable). Their `command` hands `${args_no_hyphens}` (`key=value` per parameter) to `python -m src.train`, so
every parameter is a dotted Hydra key (`mask.t`, `reg.lambda_d`) or a config group (`activation`, `experiment`).
This runner reads the same file, expands its points and runs each one as

    python -m src.train <key=value ...> [--extra overrides] paths.output_dir=<out>/<sweep name>/<point name>

where the point name renders the swept values (`activation=log2,mask.t=100`; fixed `value:` parameters are left
out). Values are rendered as the W&B agent renders them (`f"{key}={value}"`), so both run the same overrides.

- method `grid`: the cartesian product, the first parameter varying slowest (as Hydra's multirun).
- method `random`: `--count` draws (default: the file's `run_cap`) from a `random.Random(--seed)`, duplicates
  redrawn. Supported distributions: `value` (constant), `values` (categorical, optional `probabilities`),
  `uniform` and `log_uniform_values` (floats in [min, max], 6 significant digits) and `int_uniform` (integers in
  [min, max]); `distribution:` may be left out where W&B infers it (`values`, `value`, or int / float min-max).
- A point folder holding results.json is finished and skipped; a killed sweep reruns and continues (src.train
  resumes an unfinished point from its newest checkpoint). A failing point is reported and the rest still run.
- `--launcher serial` runs one `python -m src.train` process per point in turn; `joblib`, `submitit_local` and
  `slurm` hand the remaining points to that Hydra launcher plugin, one job per point (see `launch_hydra`).
"""

import argparse
import difflib
import hashlib
import itertools
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
METHODS = ("grid", "random")
DISTRIBUTIONS = ("constant", "categorical", "uniform", "log_uniform_values", "int_uniform")
SPEC_KEYS = frozenset({"value", "values", "probabilities", "distribution", "min", "max"})
TOP_LEVEL_KEYS = frozenset(
    {"name", "description", "program", "method", "metric", "parameters", "command", "project", "entity"}
    | {"early_terminate", "run_cap"}
)
LAUNCHERS = ("serial", "joblib", "submitit_local", "slurm")
# --launcher -> hydra/launcher option. `slurm` is the project's conf/hydra/launcher/slurm.yaml when it exists
# (partition, GPUs, requeue on time-out), else submitit's plain defaults.
HYDRA_LAUNCHERS = {"joblib": "joblib", "submitit_local": "submitit_local", "slurm": "submitit_slurm"}
SIGNIFICANT_DIGITS = 6  # drawn floats: short, stable names and overrides
MAX_NAME = 200  # folder names stay under the usual 255-byte limit
STATUS_WIDTH = 40  # longer statuses (a failure's message) are cut in the table and printed in full below it


class SweepError(ValueError):
    """A sweep file or option is wrong; the message names the file and the parameter."""


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    method: str
    keys: tuple[str, ...]  # every parameter, in file order
    fixed: dict[str, Any]  # key -> value (`value:` parameters)
    swept: dict[str, dict]  # key -> normalised spec {"distribution": ..., ...}
    run_cap: int | None


@dataclass(frozen=True)
class Point:
    name: str
    overrides: tuple[str, ...]  # parameters and task extras, in file order, without the output folder
    folder: Path

    def train_args(self, hydra_extras: Sequence[str] = ()) -> list[str]:
        return [*self.overrides, *hydra_extras, f"paths.output_dir={hydra_quote(str(self.folder))}"]


# --- the sweep file -------------------------------------------------------------------------------------------


def load_sweep(path: Path) -> Sweep:
    """Reads and checks a sweep file: method, command, every parameter's key and distribution."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: must be a mapping with `method` and `parameters`, got {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown top-level keys {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepError(f"{path}: method: {method!r} is not run offline; supported: {', '.join(METHODS)}")
    _check_command(path, raw.get("command"))
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: parameters: must be a non-empty mapping of dotted config keys")
    fixed, swept = {}, {}
    for key, spec in params.items():
        _check_key(path, key)
        normal = _parse_spec(path, key, spec, method)
        if normal["distribution"] == "constant":
            fixed[key] = normal["value"]
        else:
            swept[key] = normal
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise SweepError(f"{path}: run_cap: must be an integer >= 1, got {run_cap!r}")
    name = safe_name(str(raw.get("name") or path.stem))
    return Sweep(path, name, method, tuple(params), fixed, swept, run_cap)


def _check_command(path: Path, command: Any) -> None:
    """The W&B agent must hand the parameters to src.train as Hydra overrides (key=value, no hyphens)."""
    if command is None:
        raise SweepError(f"{path}: command: missing; use [${{env}}, python, -m, src.train, ${{args_no_hyphens}}]")
    if not isinstance(command, list) or "${args_no_hyphens}" not in command or "src.train" not in command:
        raise SweepError(
            f"{path}: command: must run `python -m src.train ${{args_no_hyphens}}` (Hydra overrides), got {command!r}"
        )


def _check_key(path: Path, key: Any) -> None:
    """A parameter is a key the training config declares (mask.t), an item of a list it declares (Hydra indexes
    lists: data.teachers.1.max_length), or a config group (experiment, debug)."""
    from src.config import known_keys  # reads conf/ only; imported here so `--help` stays fast

    if not isinstance(key, str):
        raise SweepError(f"{path}: parameter {key!r}: must be a dotted config key such as mask.t")
    if key in known_keys(CONF_DIR) or key in config_groups():
        return
    item = re.match(r"(.+?)\.\d+(\.|$)", key)  # data.teachers.1.max_length: a field of a list's item
    if item and item.group(1) in known_keys(CONF_DIR):
        return
    close = difflib.get_close_matches(key, sorted(known_keys(CONF_DIR) | config_groups()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SweepError(f"{path}: parameter {key}: not a key of the training config (conf/train.yaml){hint}")


def config_groups() -> frozenset[str]:
    """The config groups of conf/ (model, data, experiment, ...), which a parameter may choose an option of."""
    from src.config import OTHER_CONFIG_TREES

    skip = {*OTHER_CONFIG_TREES, "hydra"}  # conf/hydra/ holds launcher options, not training config
    return frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in skip)


def _parse_spec(path: Path, key: str, spec: Any, method: str) -> dict:
    """One parameter's spec as {"distribution": ..., "value" | "values" [, "probabilities"] | "min", "max"}."""
    where = f"{path}: parameter {key}"
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: must be a mapping such as {{values: [...]}} or {{value: ...}}, got {spec!r}")
    if "parameters" in spec:
        raise SweepError(f"{where}: nested parameters are not supported; write dotted keys ({key}.<name>)")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SweepError(f"{where}: unsupported keys {unknown}; supported: {sorted(SPEC_KEYS)}")
    dist = spec.get("distribution") or _inferred(spec)
    if dist not in DISTRIBUTIONS:
        raise SweepError(
            f"{where}: distribution {dist!r} is not supported offline; supported: {', '.join(DISTRIBUTIONS)}"
        )
    if method == "grid" and dist not in ("constant", "categorical"):
        raise SweepError(f"{where}: grid search needs `values` or `value`, got distribution {dist} (method: random)")
    if dist == "constant":
        return {"distribution": dist, "value": _checked_value(where, spec.get("value"), "value" in spec)}
    if dist == "categorical":
        return _categorical(where, spec)
    return _numeric(where, dist, spec)


def _inferred(spec: dict) -> str | None:
    """W&B's rule when `distribution` is left out."""
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


def _checked_value(where: str, value: Any, present: bool = True) -> Any:
    if not present:
        raise SweepError(f"{where}: `value` missing")
    if value is None:  # the agent would pass the Python text `key=None`, which Hydra reads as the string 'None'
        raise SweepError(f'{where}: null must be written as the string "null" (so W&B passes key=null to Hydra)')
    return value


def _categorical(where: str, spec: dict) -> dict:
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: values: must be a non-empty list, got {values!r}")
    values = [_checked_value(where, v) for v in values]
    normal = {"distribution": "categorical", "values": values}
    probabilities = spec.get("probabilities")
    if probabilities is not None:
        ok = isinstance(probabilities, list) and len(probabilities) == len(values)
        ok = ok and all(isinstance(p, int | float) and p >= 0 for p in probabilities)
        if not ok or not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6):
            raise SweepError(f"{where}: probabilities: must be {len(values)} numbers >= 0 summing to 1")
        normal["probabilities"] = probabilities
    return normal


def _numeric(where: str, dist: str, spec: dict) -> dict:
    low, high = spec.get("min"), spec.get("max")
    kind = int if dist == "int_uniform" else int | float
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in (low, high)) or low > high:
        hint = "; YAML reads 1e-5 as text, write 1.0e-5" if any(isinstance(v, str) for v in (low, high)) else ""
        raise SweepError(
            f"{where}: {dist} needs min <= max, both {'integers' if kind is int else 'numbers'}, "
            f"got min {low!r}, max {high!r}{hint}"
        )
    if dist == "log_uniform_values" and low <= 0:
        raise SweepError(f"{where}: log_uniform_values needs min > 0, got {low}")
    return {"distribution": dist, "min": low, "max": high}


# --- points ---------------------------------------------------------------------------------------------------


def grid(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the swept values, the first parameter varying slowest."""
    keys, values = list(sweep.swept), [spec["values"] for spec in sweep.swept.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def draw(spec: dict, rng: random.Random) -> Any:
    dist = spec["distribution"]
    if dist == "categorical":
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    if dist == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if dist == "uniform":
        value = rng.uniform(spec["min"], spec["max"])
    else:  # log_uniform_values
        value = math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), spec["min"]), spec["max"])


def random_search(sweep: Sweep, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct draws; fewer when the space has fewer points (every parameter categorical)."""
    rng = random.Random(seed)
    points: dict[str, dict] = {}
    for _ in range(100 * count):  # redraw duplicates, but never loop forever on a small space
        if len(points) == count:
            break
        values = {key: draw(spec, rng) for key, spec in sweep.swept.items()}
        points.setdefault(point_name(values), values)
    return list(points.values())


def safe_name(text: str) -> str:
    """A folder name: characters outside [A-Za-z0-9._=,+@-] become '_', long names end in a short hash."""
    name = re.sub(r"[^A-Za-z0-9._=,+@-]", "_", text).strip(".") or "_"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def point_name(values: dict[str, Any]) -> str:
    """`activation=log2,mask.t=100`: the swept values in file order; 'default' when nothing is swept."""
    return safe_name(",".join(f"{key}={value}" for key, value in values.items())) if values else "default"


def split_extras(extras: Sequence[str]) -> tuple[list[str], list[str]]:
    """(task overrides, hydra.* overrides): a Hydra launcher takes the second kind once, for the whole sweep."""
    task, hydra = [], []
    for extra in extras:
        if "=" not in extra:
            raise SweepError(f"--extra {extra!r}: must be key=value (a Hydra override)")
        key = extra.split("=", 1)[0].lstrip("+~")
        (hydra if key == "hydra" or key.startswith(("hydra.", "hydra/")) else task).append(extra)
    return task, hydra


def build_points(sweep: Sweep, out: Path, extras: Sequence[str] = (), count: int | None = None, seed: int = 0):
    """The sweep's points, each with its overrides (parameters, then task extras) and folder."""
    task_extras, _ = split_extras(extras)
    extra_keys = {e.split("=", 1)[0].lstrip("+~") for e in task_extras}
    clash = sorted(extra_keys & set(sweep.swept))
    if clash:
        raise SweepError(f"--extra: {', '.join(clash)} is swept by {sweep.path}; it cannot be fixed as well")
    if sweep.method == "grid":
        combos = grid(sweep)
    else:
        count = count or sweep.run_cap
        if not count or count < 1:
            raise SweepError(f"{sweep.path}: method random needs --count N (or run_cap in the file)")
        combos = random_search(sweep, count, seed)
    points = []
    for values in combos:
        name = point_name(values)
        chosen = {**sweep.fixed, **values}
        params = [f"{key}={chosen[key]}" for key in sweep.keys if key not in extra_keys]  # an extra wins
        points.append(Point(name, (*params, *task_extras), Path(out) / sweep.name / name))
    names = [p.name for p in points]
    if len(set(names)) < len(names):
        raise SweepError(f"{sweep.path}: two points share a folder name; make the swept values distinct")
    return points


def hydra_quote(text: str) -> str:
    """A Hydra override value quoted, so '=' and ',' in a point's folder are not read as syntax."""
    for quote in ('"', "'"):
        if quote not in text:
            return f"{quote}{text}{quote}"
    raise SweepError(f"{text}: a folder name with both kinds of quotes cannot be passed to Hydra")


def command(point: Point, extras: Sequence[str] = ()) -> list[str]:
    _, hydra_extras = split_extras(extras)
    return [sys.executable, "-m", "src.train", *point.train_args(hydra_extras)]


def check_points(sweep: Sweep, points: Sequence[Point]) -> None:
    """Composes and validates every point before anything runs: a bad value fails the sweep in seconds."""
    from hydra import compose, initialize_config_dir

    from src.config import ConfigError, validate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for point in points:
            try:
                validate(compose(config_name="train", overrides=point.train_args()))
            except Exception as err:  # hydra's composition errors and ConfigError alike
                kind = "" if isinstance(err, ConfigError) else f"{type(err).__name__}: "
                raise SweepError(f"{sweep.path}: point {point.name}: {kind}{err}") from None


# --- running --------------------------------------------------------------------------------------------------


def is_done(point: Point) -> bool:
    return (point.folder / "results.json").is_file()


def run_serial(points: Sequence[Point], extras: Sequence[str], group: str) -> dict[str, str]:
    """One `python -m src.train` process per point, its output shown and kept in <point>/output.log."""
    env = {**os.environ, "WANDB_RUN_GROUP": group}  # the offline W&B runs of one sweep form one group
    failures = {}
    for i, point in enumerate(points, 1):
        print(f"\n=== [{i}/{len(points)}] {point.name}", flush=True)
        point.folder.mkdir(parents=True, exist_ok=True)
        code = _tee(command(point, extras), env, point.folder / "output.log")
        if code != 0:
            failures[point.name] = f"failed (exit {code})" if code > 0 else f"failed (signal {-code})"
    return failures


def _tee(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sink.write(line)
        return proc.wait()


def _train_job(group: str, cfg: Any) -> dict:
    """The task function each Hydra launcher job runs (in a worker process or a SLURM job)."""
    from src.training.run import train

    os.environ["WANDB_RUN_GROUP"] = group
    return train(cfg)


def launcher_option(launcher: str) -> str:
    if launcher == "slurm" and (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").is_file():
        return "slurm"
    return HYDRA_LAUNCHERS[launcher]


def launch_hydra(
    sweep: Sweep, points: Sequence[Point], launcher: str, extras: Sequence[str], jobs: int | None
) -> dict[str, str]:
    """Hands the points to a Hydra launcher plugin as a sweeper would: `Launcher.launch(job_overrides, 0)` with one
    list of overrides per point (Hydra's own sweeper can only hand over a cartesian product of comma lists, which
    cannot leave out finished points or express a random search). Each job runs train(cfg) in
    <out>/<sweep>/<point>, which is also the job's Hydra folder (hydra.sweep.dir / hydra.sweep.subdir)."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    _, hydra_extras = split_extras(extras)
    sweep_dir = points[0].folder.parent
    master = [f"hydra/launcher={launcher_option(launcher)}", f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}"]
    master += [f"hydra.launcher.n_jobs={jobs}"] if jobs else []
    jobs_overrides = [[*p.train_args(), f"hydra.sweep.subdir={hydra_quote(p.name)}"] for p in points]
    if launcher != "slurm":  # on a cluster the first job should mine it, not the login node (see README)
        prepare_first(points)
    else:
        hydra_extras += slurm_layout(points, hydra_extras)
    os.environ["WANDB_RUN_GROUP"] = sweep.name  # workers inherit it; _train_job sets it again where they do not
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        config = hydra.compose_config("train", [*master, *hydra_extras], run_mode=RunMode.MULTIRUN)
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(config))
        task = partial(_train_job, sweep.name)
        plugin = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=task, config=config)
        try:
            returns = plugin.launch(jobs_overrides, initial_job_idx=0)
        except Exception as err:  # e.g. submitit: a job killed from outside; the folders still tell the rest
            # The plugin waits for the jobs in order and gives up at the first that left no result: the later
            # ones may still be running (on a cluster) or have failed; a rerun collects or resumes them.
            print(f"{launcher} launcher stopped waiting: {type(err).__name__}: {err}", file=sys.stderr)
            reason = f"not finished ({type(err).__name__} from the launcher; rerun the sweep to collect or resume)"
            return {p.name: reason for p in points if not is_done(p)}
    return {p.name: reason for p, ret in zip(points, returns, strict=True) if (reason := _job_failure(ret))}


def slurm_layout(points: Sequence[Point], hydra_extras: Sequence[str]) -> list[str]:
    """The hydra.launcher overrides that give every SLURM job the processes its points train with (Lightning's
    SLURM convention, which refuses to start otherwise): tasks_per_node = trainer.devices, gpus_per_node the
    same on GPUs (none asked for on CPUs), nodes = trainer.num_nodes. One job array serves the whole sweep, so
    its points must agree; a value given with --extra must match too. devices=auto leaves both as configured."""
    from hydra import compose, initialize_config_dir

    layouts = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for point in points:
            trainer = compose(config_name="train", overrides=point.train_args()).trainer
            devices = str(trainer.devices) if isinstance(trainer.devices, int) else None
            gpus = devices if trainer.accelerator in ("gpu", "cuda") else "null"
            layouts.add(
                (("tasks_per_node", devices), ("gpus_per_node", gpus), ("nodes", str(trainer.get("num_nodes", 1))))
            )
    if len(layouts) > 1:
        raise SweepError(
            "--launcher slurm: one job array serves the sweep, but its points train on different "
            f"trainer.devices / accelerator / num_nodes: {sorted(map(dict, layouts), key=str)}; split the sweep"
        )
    given = {e.split("=", 1)[0].removeprefix("hydra.launcher."): e.split("=", 1)[1] for e in hydra_extras}
    overrides = []
    for key, value in layouts.pop():
        if value is None:
            continue
        if key in given and value != given[key]:
            raise SweepError(
                f"--extra hydra.launcher.{key}={given[key]}: the points' trainer config asks for {value} "
                "(one SLURM task per device, trainer.num_nodes nodes); drop the override or make it match"
            )
        if key not in given:
            overrides.append(f"hydra.launcher.{key}={value}")
    return overrides


def prepare_first(points: Sequence[Point]) -> None:
    """Builds each distinct training set once, before parallel jobs start: on a cold cache they would all mine the
    same set into one folder at once, and src.prepare refuses a folder another process is filling."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from src.training.run import prepared_set

    seen = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for point in points:
            cfg = compose(config_name="train", overrides=point.train_args())
            settings = json.dumps(
                [OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model")]
                + [cfg.paths.data_dir, cfg.paths.cache_dir],
                sort_keys=True,
            )
            if settings not in seen:
                seen.add(settings)
                prepared_set(cfg)  # returns at once when the set is complete


def _job_failure(ret: Any) -> str | None:
    try:
        ret.return_value  # noqa: B018  (raises the job's exception when it failed)
    except Exception as err:
        return f"failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


# --- the summary ----------------------------------------------------------------------------------------------


def summarize(points: Sequence[Point], skipped: set[str], failures: dict[str, str]) -> list[dict]:
    """One row per point: its status and, from results.json, scifact NDCG@10 and Doc_Len."""
    rows = []
    for point in points:
        results = _results(point)
        if point.name in skipped:
            status = "skipped (done)"
        elif point.name in failures:
            status = failures[point.name]
        else:
            status = results.get("status", "failed (no results.json)")
        scifact = (results.get("eval") or {}).get("scifact") or {}
        rows.append(
            {
                "point": point.name,
                "status": status,
                "ndcg@10": scifact.get("ndcg@10"),
                "doc_len": scifact.get("doc_len"),
            }
        )
    return rows


def _results(point: Point) -> dict:
    try:
        return json.loads((point.folder / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_rows(rows: Sequence[dict]) -> str:
    """The table, statuses cut at STATUS_WIDTH; each failure's full reason follows it."""
    statuses = [
        r["status"] if len(r["status"]) <= STATUS_WIDTH else r["status"][: STATUS_WIDTH - 3] + "..." for r in rows
    ]
    width = max([5, *(len(r["point"]) for r in rows)])
    status_width = max([6, *map(len, statuses)])
    lines = [f"{'point':<{width}}  {'status':<{status_width}}  scifact ndcg@10  doc_len"]
    lines += [
        f"{r['point']:<{width}}  {status:<{status_width}}  {_num(r['ndcg@10'], 4):>15}  {_num(r['doc_len'], 1):>7}"
        for r, status in zip(rows, statuses, strict=True)
    ]
    lines += [f"{r['point']}: {r['status']}" for r, status in zip(rows, statuses, strict=True) if status != r["status"]]
    return "\n".join(lines)


def failed(rows: Sequence[dict]) -> bool:
    return any(r["status"].startswith("failed") for r in rows)


# --- python -m src.sweep ------------------------------------------------------------------------------------


def run_sweep(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """What `python -m src.sweep` does with its parsed options (`argv`: its arguments, for the rerun hint).
    Exit codes: 0 every point ran to a results.json (finished, collapsed or diverged), 1 a point failed (no
    results.json: an error, a crash), 2 a bad sweep file or option (nothing ran)."""
    if args.launcher != "serial":  # jobs may start elsewhere (a SLURM node): give them absolute folders
        args.out = args.out.resolve()
    try:
        sweep = load_sweep(args.sweep_file)
        points = build_points(sweep, args.out, args.extra, args.count, args.seed)
        todo = [p for p in points if not is_done(p)]
        check_points(sweep, points if args.dry_run else todo)
    except SweepError as err:
        print(f"SweepError: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for point in points:
            print(shlex.join([f"WANDB_RUN_GROUP={sweep.name}", *command(point, args.extra)]))
        return 0
    print(f"sweep {sweep.name}: {len(points)} points, {len(points) - len(todo)} done, {len(todo)} to run", flush=True)
    try:
        failures = run(sweep, todo, args) if todo else {}
    except KeyboardInterrupt:
        again = shlex.join(["python", "-m", "src.sweep", *argv])
        print(f"\ninterrupted: rerun `{again}` to continue where it stopped", file=sys.stderr)
        return 130
    rows = summarize(points, {p.name for p in points} - {p.name for p in todo}, failures)
    _save(sweep, args.out, rows)
    print(f"\n{format_rows(rows)}\nsweep folder: {Path(args.out) / sweep.name}", flush=True)
    return 1 if failed(rows) else 0


def run(sweep: Sweep, points: Sequence[Point], args: argparse.Namespace) -> dict[str, str]:
    """Runs the points with the chosen launcher; returns {point name: why it failed}."""
    if args.launcher == "serial":
        return run_serial(points, args.extra, sweep.name)
    return launch_hydra(sweep, points, args.launcher, args.extra, args.jobs)


def _save(sweep: Sweep, out: Path, rows: Sequence[dict]) -> None:
    """summary.json and a copy of the sweep file beside the points, for the notebooks."""
    from src.common.io import atomic_write_json, atomic_write_text

    folder = Path(out) / sweep.name
    atomic_write_text(folder / "sweep.yaml", sweep.path.read_text(encoding="utf-8"))
    atomic_write_json(folder / "summary.json", list(rows))
