"""Checks on a composed config that must pass before any model or data is loaded.

`validate(cfg)` (the training config) checks, in this order, and reports every problem of the first three
kinds at once, one line each, each line starting with the dotted key:

1. unknown keys: every key must be one the config files under conf/ declare (`known_keys`), so a typo in a
   `+key=...` override or in an experiment file fails instead of being ignored; `trainer.*` is checked
   against the Trainer class's arguments, `logger.*` and `data.teacher_scores.weights` are free-form;
2. types and ranges of each knob (`SPEC`): booleans are not numbers, integers are not floats;
3. rules across keys: warm-up shorter than the run, global batch = per-device batch x devices x ...;
4. the filesystem: model folder, prepared set, datasets, idf file (stops at the first).

It reads only YAML files and the filesystem: well under a second, and nothing is imported that a
model load would need beyond what `src.train` already imports.
"""

import difflib
import inspect
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.data import msmarco
from src.data.beir import BEIR_DATASETS, dataset_dir
from src.data.mining import NEGATIVES_FROM
from src.model.activations import ACTIVATIONS, MAX_LOG_APPLICATIONS
from src.model.formats import model_folder
from src.model.heads import PRECISIONS
from src.model.losses import LOSSES
from src.model.schedules import LAMBDA_SCHEDULES
from src.teachers import NORMALISATIONS, TeacherSpec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# conf/tools holds the configs of the other entry points (src.prepare, src.evaluate, src.index), not a group of train.
OTHER_CONFIG_TREES = ("tools", "hydra")
# Subtrees whose keys are not declared anywhere: logger.* goes to whichever logger class logger._target_ names;
# data.teacher_scores.weights maps teacher names to weights. (Lists, e.g. data.teachers, are never walked.)
FREE_FORM = ("logger", "data.teacher_scores.weights", "hydra")
# Keys hydra.utils.instantiate reads itself.
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
# Trainer arguments that src.train sets itself: the config must not set them too.
SET_BY_TRAIN = {
    "logger": "choose the logger group (logger=csv, logger=null)",
    "default_root_dir": "set paths.output_dir",
}
MSMARCO_FORMATS = (None, *msmarco.FORMATS)  # null: no MS MARCO source


class ConfigError(ValueError):
    """A config value is wrong; the message names its key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --- unknown keys ---------------------------------------------------------------------------------------------


def _package(option: Path, group: str) -> str | None:
    """Where a group option's keys land: its `# @package` header, else the group; None for `_global_` overlays."""
    package = group.replace("/", ".")
    for line in option.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header = re.match(r"#\s*@package\s+(\S+)", line)
        if header:
            package = header.group(1).replace("_group_", group.replace("/", "."))
    if package == "_global_" or package.startswith("_global_."):
        return None
    return package


def _dotted(node: Any, prefix: str) -> Iterator[str]:
    """Every key of a nested dict as a dotted path (lists are leaves)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _dotted(value, path)


@lru_cache
def known_keys(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """The training config's schema: train.yaml's keys plus those of every option of every config group.

    Read from the YAML files rather than composed (composition costs ~0.1 s an option): an option's keys land
    under its group (or its `# @package`), and `defaults` lists only pull in other options, which are read anyway.
    `_global_` options (experiment/, debug/) are overlays on this schema, not part of it: a typo in one is an
    unknown key. tests/test_config.py composes every option and checks that it validates.
    """
    keys: set[str] = set()
    root = OmegaConf.to_container(OmegaConf.load(conf_dir / "train.yaml"), resolve=False)
    keys.update(_dotted({k: v for k, v in root.items() if k not in ("defaults", "hydra")}, ""))
    for option in sorted(conf_dir.rglob("*.yaml")):
        group = option.parent.relative_to(conf_dir).as_posix()
        if group == "." or group.split("/")[0] in OTHER_CONFIG_TREES:
            continue
        package = _package(option, group)
        if package is None:
            continue
        body = OmegaConf.to_container(OmegaConf.load(option), resolve=False) or {}
        body = {k: v for k, v in body.items() if k != "defaults"}
        parts = package.split(".")
        keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        keys.update(_dotted(body, package))
    return frozenset(keys)


@lru_cache
def trainer_arguments(target: str) -> frozenset[str] | None:
    """The keyword arguments of the class `trainer._target_` names; None when it takes any (**kwargs)."""
    import hydra.utils

    params = inspect.signature(hydra.utils.get_class(target)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _suggest(key: str, candidates: set[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key_errors(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """One `<key>: unknown key (did you mean ...?)` line per key of cfg that the config files do not declare."""
    known = known_keys(conf_dir)
    tree = OmegaConf.to_container(cfg, resolve=False)
    errors = []
    for key in _dotted({k: v for k, v in tree.items() if k != "trainer"}, ""):
        if any(key == free or key.startswith(free + ".") for free in FREE_FORM):
            continue
        parent = key.rpartition(".")[0]
        if key not in known and (not parent or parent in known):  # report a wrong subtree once, at its top
            errors.append(f"{key}: unknown key{_suggest(key, known)}")
    trainer = tree.get("trainer")
    if isinstance(trainer, dict):
        errors += _trainer_key_errors(trainer)
    elif trainer is not None:
        errors.append(f"trainer: must be a mapping of Trainer arguments, got {trainer!r}")
    return errors


def _trainer_key_errors(trainer: dict) -> list[str]:
    target = trainer.get("_target_")
    if not isinstance(target, str):
        return [f"trainer._target_: must name the Trainer class (lightning.Trainer), got {target!r}"]
    try:
        arguments = trainer_arguments(target)
    except Exception as err:  # hydra's get_class: an import error or not a class
        return [f"trainer._target_: {target!r} is not an importable class ({err})"]
    errors = []
    for key in trainer:
        if key in SET_BY_TRAIN:
            errors.append(f"trainer.{key}: set by src.train; {SET_BY_TRAIN[key]}")
        elif key not in INSTANTIATE_KEYS and arguments is not None and key not in arguments:
            close = difflib.get_close_matches(key, sorted(arguments), n=1, cutoff=0.6)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            errors.append(f"trainer.{key}: unknown key: not an argument of {target}{hint}")
    return errors


# --- types and ranges -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A number (an integer with integer=True) within [low, high], `low_open` making it (low, ..., `high_open`
    ..., high); bools refused."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nullable: bool = False
    required: bool = True

    def describe(self) -> str:
        text = "an integer" if self.integer else "a number"
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {self.high}"
        return text + (" or null" if self.nullable else "")

    def type_ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if self.integer else isinstance(value, int | float)

    def range_ok(self, value: Any) -> bool:
        if value is None:
            return True
        if not math.isfinite(value):  # nan, inf
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


def Integer(low: float | None = None, **kwargs: Any) -> Number:  # capitalised: reads like a type in SPEC
    return Number(low, integer=True, **kwargs)


@dataclass(frozen=True)
class Boolean:
    required: bool = True

    def describe(self) -> str:
        return "true or false"

    def type_ok(self, value: Any) -> bool:
        return isinstance(value, bool)

    def range_ok(self, value: Any) -> bool:
        return True


@dataclass(frozen=True)
class Choice:
    options: tuple
    required: bool = True

    def describe(self) -> str:
        return "one of " + ", ".join("null" if o is None else str(o) for o in self.options)

    def type_ok(self, value: Any) -> bool:
        return value is None or isinstance(value, str)

    def range_ok(self, value: Any) -> bool:
        return value in self.options


@dataclass(frozen=True)
class Text:
    """A non-empty string (a path, a split name), or null with nullable=True."""

    nullable: bool = False
    required: bool = True

    def describe(self) -> str:
        return "a string" + (" or null" if self.nullable else "")

    def type_ok(self, value: Any) -> bool:
        return (value is None and self.nullable) or isinstance(value, str)

    def range_ok(self, value: Any) -> bool:
        return value is None or value != ""


@dataclass(frozen=True)
class Names:
    """A list of strings, e.g. data.datasets=[scifact,nfcorpus]."""

    example: str = "[scifact, nfcorpus]"
    nullable: bool = False
    required: bool = True

    def describe(self) -> str:
        return f"a list of names such as {self.example}" + (" or null" if self.nullable else "")

    def type_ok(self, value: Any) -> bool:
        return (value is None and self.nullable) or (
            isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        )

    def range_ok(self, value: Any) -> bool:
        return True


def activation_error(name: Any) -> str | None:
    """None for a registered activation, else why not (for logN: the range of N)."""
    if isinstance(name, str) and name in ACTIVATIONS:
        return None
    known = ", ".join(sorted(ACTIVATIONS))
    if not isinstance(name, str):
        return f"must be one of {known}, got {name!r} ({type(name).__name__})"
    log_n = re.fullmatch(r"log(-?\d+)", name)
    relu = "N = 0 logs is plain relu, registered as 'relu'"
    if log_n and int(log_n.group(1)) < 0:
        detail = f"N logs must be >= 0 in logN, got N = {int(log_n.group(1))} ({relu})"
    elif log_n and int(log_n.group(1)) == 0:
        detail = f"{relu}: use activation=relu"
    elif log_n and int(log_n.group(1)) > MAX_LOG_APPLICATIONS:
        detail = f"N logs must be <= {MAX_LOG_APPLICATIONS} in logN, got N = {int(log_n.group(1))}"
    else:
        detail = "not a known activation"
    return f"{name!r}: {detail}; known: {known}"


@dataclass(frozen=True)
class Activation:
    required: bool = True


@dataclass(frozen=True)
class StudentScale:
    """loss.student_scale: "fit" or a number > 0."""

    required: bool = True

    def describe(self) -> str:
        return "fit or a number > 0"

    def type_ok(self, value: Any) -> bool:
        return value == "fit" or (isinstance(value, int | float) and not isinstance(value, bool))

    def range_ok(self, value: Any) -> bool:
        return value == "fit" or (math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class Teachers:
    """data.teachers: a list of {kind: ..., name: ..., <kind's options>}; names unique."""

    required: bool = True


@dataclass(frozen=True)
class Weights:
    """data.teacher_scores.weights: null or {teacher name: weight >= 0}."""

    required: bool = True


# Every knob of the training config. required=False: may be absent (a Trainer default, or a key some
# configs lack). Keys not listed here are still checked for existence by unknown_key_errors.
SPEC: dict[str, Any] = {
    "seed": Integer(0, high=2**32 - 1),  # numpy's seed range, which lightning.seed_everything enforces
    "num_threads": Integer(1, nullable=True),
    "resume": Text(nullable=True, required=False),
    "checkpoint.every_n_steps": Integer(1, required=False),
    "checkpoint.keep": Integer(1, required=False),
    "guard.doc_len_floor": Number(0, nullable=True, required=False),
    "guard.patience": Integer(1, required=False),
    "guard.check_finite": Boolean(required=False),
    "activation": Activation(),
    "mask.t": Number(0, nullable=True),
    "mask.schedule": Choice(("constant", "linear")),
    "mask.t_start": Number(0, nullable=True),
    "mask.T": Integer(1),
    "reg.lambda_d": Number(0),
    "reg.T": Integer(1),
    "reg.schedule": Choice(tuple(LAMBDA_SCHEDULES)),
    "reg.term_weights": Choice((None, "idf", "query_frequency")),
    "query.idf": Text(nullable=True),
    "query.idf_trainable": Boolean(),
    "posthoc.start_weight": Number(0, 1),
    "posthoc.prune_ratio": Number(0, 1, high_open=True),
    "optim.lr": Number(0, low_open=True),
    "optim.weight_decay": Number(0),
    "optim.warmup_steps": Integer(0),
    "paths.data_dir": Text(),
    "paths.cache_dir": Text(),
    "paths.output_dir": Text(nullable=True),
    "model.name_or_path": Text(nullable=True),
    "model.max_length": Integer(8),
    "model.query_max_length": Integer(1),
    "model.head_precision": Choice(PRECISIONS),
    "model.train_vocabulary": Boolean(),
    "model.compile": Boolean(),
    "model.dropout": Number(0.0, 1.0, nullable=True),
    "data.prepared": Text(nullable=True),
    "data.datasets": Names(),
    "data.split": Text(),
    "data.triples": Names("[triples.train.small.tsv]"),
    "data.msmarco.format": Choice(MSMARCO_FORMATS),
    **{f"data.msmarco.{f}": Text(nullable=True) for f in ("hard_negatives", "ce_scores", "ensemble_scores")},
    **{f"data.msmarco.{f}": Text(nullable=True) for f in ("collection", "queries")},
    "data.msmarco.systems": Names("[bm25, msmarco-distilbert-base-tas-b]", nullable=True),
    "data.group_size": Integer(2),
    "data.negatives_from": Choice(NEGATIVES_FROM),
    "data.negatives_from_top": Integer(1),
    "data.teachers": Teachers(),
    "data.teacher_scores.normalize": Choice(NORMALISATIONS),
    "data.teacher_scores.weights": Weights(),
    "data.teacher_scores.scale": Number(0, low_open=True),
    "data.mining_seed": Integer(),
    "data.teacher_batch_size": Integer(1),
    "data.shard_size": Integer(1),
    "data.batch_size": Integer(1, nullable=True),  # null only with data.global_batch_size (checked below)
    "data.global_batch_size": Integer(1, nullable=True, required=False),
    "data.max_queries": Integer(1, nullable=True),
    "data.num_workers": Integer(0),
    "data.bucket_by_length": Boolean(),
    "data.download": Boolean(),
    "loss.name": Choice(tuple(LOSSES)),
    "loss.student_scale": StudentScale(),
    "loss.in_batch": Boolean(),
    "trainer.max_steps": Integer(1),  # the LR schedule decays over it: -1 (no limit) has no end to decay to
    "trainer.accumulate_grad_batches": Integer(1, required=False),
    "trainer.num_nodes": Integer(1, required=False),
    "trainer.log_every_n_steps": Integer(1, required=False),
    "eval.datasets": Names("[scifact]"),
    "eval.split": Text(),
    "eval.dev_split": Text(nullable=True),
    "eval.max_length": Integer(1),
    "eval.max_queries": Integer(1, nullable=True),
    "eval.max_docs": Integer(1, nullable=True),
    "eval.top_k": Integer(1),
    "eval.bf16": Boolean(),
}
_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """cfg's value at `key` as plain Python (lists, dicts), _ABSENT when the key is not there."""
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def _got(value: Any, with_type: bool) -> str:
    return f"got {value!r}" + (f" ({type(value).__name__})" if with_type else "")


def _alias(cfg: DictConfig, key: str) -> str | None:
    """The key that `key` copies when its value is exactly `${other.key}` (mask.T: ${reg.T}), else None."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent or not OmegaConf.is_interpolation(parent, leaf):
        return None
    raw = OmegaConf.to_container(parent, resolve=False)[leaf]
    target = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
    return target.group(1) if target else None


def _spec_error(cfg: DictConfig, key: str, spec: Any) -> str | None:
    if _alias(cfg, key) in SPEC:  # checked under the key it copies, and named there
        return None
    try:
        value = _value(cfg, key)
    except Exception as err:  # ??? (missing) or an interpolation that does not resolve
        return f"{key}: cannot be read: {type(err).__name__}: {str(err).splitlines()[0]}"
    if value is _ABSENT:
        return f"{key}: missing (the config must set it)" if spec.required else None
    if isinstance(spec, Activation):
        problem = activation_error(value)
        return f"{key}: {problem}" if problem else None
    if isinstance(spec, Teachers):
        return _teachers_error(key, value)
    if isinstance(spec, Weights):
        return _weights_error(key, value)
    if not spec.type_ok(value):
        return f"{key}: must be {spec.describe()}, {_got(value, True)}"
    if not spec.range_ok(value):
        return f"{key}: must be {spec.describe()}, {_got(value, False)}"
    return None


def _teachers_error(key: str, value: Any) -> str | None:
    if not isinstance(value, list):
        return f"{key}: must be a list of {{kind: ..., name: ...}} entries, {_got(value, True)}"
    names = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            return f"{key}[{i}]: must be a mapping such as {{kind: bm25, name: bm25}}, {_got(entry, True)}"
        try:
            names.append(TeacherSpec.from_config(entry, f"{key}[{i}]").name)
        except ValueError as err:
            return str(err)
    if len(set(names)) < len(names):
        return f"{key}: teacher names must be unique (set `name:`), got {names}"
    return None


def _weights_error(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{key}: must be null or {{teacher name: weight}}, {_got(value, True)}"
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            return f"{key}.{name}: must be a number >= 0, {_got(weight, True)}"
    return None


# --- rules across keys ------------------------------------------------------------------------------------------


def device_count(devices: Any) -> int | None:
    """The number of devices `trainer.devices` asks for (lightning's forms); None when only the machine can say
    (auto, -1). Raises ConfigError for a form lightning would refuse."""
    if isinstance(devices, ListConfig):
        devices = OmegaConf.to_container(devices, resolve=True)
    problem = ConfigError(
        "trainer.devices: must be an integer >= 1, -1 (all), 'auto', a list of device ids or a string such as "
        f"'0,1', {_got(devices, True)}"
    )
    if isinstance(devices, bool):
        raise problem
    if isinstance(devices, int):
        if devices == -1:
            return None
        if devices < 1:
            raise problem
        return devices
    if isinstance(devices, list):
        if not devices or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices):
            raise problem
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:
            ids = [part.strip() for part in text.split(",") if part.strip()]
            if not ids or not all(part.isdigit() for part in ids):
                raise problem
            return len(ids)
        if text.isdigit() and int(text) >= 1:
            return int(text)
    raise problem


def per_device_batch_size(cfg: DictConfig) -> int:
    """Queries per device and step: data.batch_size, or data.global_batch_size split over
    trainer.devices x trainer.num_nodes x trainer.accumulate_grad_batches (validate() checked it divides)."""
    if cfg.data.batch_size is not None:
        return int(cfg.data.batch_size)
    devices = device_count(cfg.trainer.get("devices", "auto"))
    if devices is None:
        raise ConfigError("trainer.devices: data.global_batch_size needs a fixed number of devices")
    share = devices * cfg.trainer.get("num_nodes", 1) * cfg.trainer.get("accumulate_grad_batches", 1)
    return int(cfg.data.global_batch_size) // share


def _batch_errors(cfg: DictConfig) -> list[str]:
    """data.batch_size is per device (lightning's convention). data.global_batch_size (optional, e.g. the paper's
    320 = 40 x 8 GPUs), when set, must equal batch_size x devices x num_nodes x accumulate_grad_batches; with
    data.batch_size null it must be divisible by devices x num_nodes x accumulate_grad_batches instead."""
    batch, global_batch = cfg.data.batch_size, cfg.data.get("global_batch_size")
    if global_batch is None:
        if batch is None:
            return ["data.batch_size: must be an integer >= 1 (null only with data.global_batch_size set), got None"]
        return []
    try:
        devices = device_count(cfg.trainer.get("devices", "auto"))
    except ConfigError as err:
        return [str(err)]
    if devices is None:
        return [
            f"trainer.devices: data.global_batch_size={global_batch} needs a fixed number of devices "
            f"(an integer or a list of ids), got {cfg.trainer.get('devices')!r}"
        ]
    nodes, accumulate = cfg.trainer.get("num_nodes", 1), cfg.trainer.get("accumulate_grad_batches", 1)
    share = devices * nodes * accumulate
    split = (
        f"trainer.devices ({devices}) x trainer.num_nodes ({nodes}) x trainer.accumulate_grad_batches ({accumulate})"
    )
    if batch is None:
        if global_batch % share:
            return [f"data.global_batch_size: {global_batch} is not divisible by {split} = {share}"]
        return []
    if batch * share != global_batch:
        return [
            f"data.global_batch_size: {global_batch} != data.batch_size ({batch}) x {split} = {batch * share}; "
            f"set data.batch_size=null to derive it{'' if global_batch % share else f' ({global_batch // share})'}"
        ]
    return []


def _cross_key_errors(cfg: DictConfig) -> list[str]:
    errors = []
    warmup, steps = cfg.optim.warmup_steps, cfg.trainer.max_steps
    if warmup >= steps:
        errors.append(f"optim.warmup_steps: must be < trainer.max_steps ({steps}), got {warmup}")
    if cfg.data.negatives_from_top < cfg.data.group_size - 1:
        errors.append(
            f"data.negatives_from_top: must be >= data.group_size - 1 ({cfg.data.group_size - 1} negatives a "
            f"group), got {cfg.data.negatives_from_top}"
        )
    if cfg.trainer.get("devices") is not None:
        try:
            device_count(cfg.trainer.devices)
        except ConfigError as err:
            errors.append(str(err))
    return errors + _batch_errors(cfg)


# --- the filesystem -------------------------------------------------------------------------------------------


def check_activation(name: str) -> None:
    problem = activation_error(name)
    if problem:
        raise ConfigError(f"activation: {problem}")


def check_head_precision(key: str, value: str) -> None:
    _check(value in PRECISIONS, key, f"must be one of {', '.join(PRECISIONS)}, got {value!r}")


def check_model(key: str, source: str | None) -> None:
    try:
        model_folder(source)
    except FileNotFoundError as err:
        raise ConfigError(f"{key}: {err}") from None


def _on_disk(data_dir: Path) -> str:
    if not data_dir.is_dir():
        return "nothing (the folder does not exist)"
    names = sorted(p.parent.name for p in data_dir.glob("*/corpus.jsonl"))
    return ", ".join(names) if names else "no dataset (no <name>/corpus.jsonl)"


def check_datasets(key: str, data_dir: str, names: list[str], download: bool, download_key: str = "download") -> None:
    """Each name must be a BEIR-layout folder under data_dir, or a BEIR dataset that may be downloaded now."""
    for name in names:
        path = Path(data_dir) / name
        if (path / "corpus.jsonl").is_file():
            continue
        on_disk = f"on disk under {data_dir}: {_on_disk(Path(data_dir))}"
        if name not in BEIR_DATASETS:
            raise ConfigError(
                f"{key}: {name!r} is not a BEIR dataset and not found under {data_dir} (paths.data_dir): "
                f"{path}/corpus.jsonl does not exist; {on_disk}"
            )
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        if offline or not download:
            reasons = ([f"{download_key}=false"] if not download else []) + (
                ["HF_HUB_OFFLINE=1 prevents its download"] if offline else []
            )
            raise ConfigError(
                f"{key} / paths.data_dir: {name!r} is a BEIR dataset but {path}/corpus.jsonl does not exist and "
                f"{' and '.join(reasons)}; {on_disk}. Put the BEIR files there, or point DATA_DIR / paths.data_dir "
                f"at a folder that holds {name}/ (the shared copy lives in ../shared/data/beir)"
            )
        try:
            dataset_dir(data_dir, name, download)  # BEIR's downloader
        except FileNotFoundError as err:
            raise ConfigError(f"{key} / paths.data_dir: {err}") from None


def resolve_output_dir(cfg: DictConfig) -> Path:
    """paths.output_dir, or Hydra's run directory when it is null (and recorded in cfg either way)."""
    if cfg.paths.output_dir is None:
        if not HydraConfig.initialized():
            raise ConfigError("paths.output_dir: set it when calling an entry point outside the command line")
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.paths.output_dir).resolve()


def _filesystem_checks(cfg: DictConfig) -> None:
    check_model("model.name_or_path", cfg.model.name_or_path)
    if cfg.data.prepared:
        _check(
            (Path(cfg.data.prepared) / "manifest.json").is_file(),
            "data.prepared",
            f"{cfg.data.prepared} has no manifest.json: not a complete set from `python -m src.prepare`",
        )
    else:
        check_datasets("data.datasets", cfg.paths.data_dir, cfg.data.datasets, cfg.data.download, "data.download")
    if cfg.query.idf:
        _check(Path(cfg.query.idf).is_file(), "query.idf", f"{cfg.query.idf} does not exist")
    check_datasets("eval.datasets", cfg.paths.data_dir, cfg.eval.datasets, cfg.data.download, "data.download")


def config_errors(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every unknown key, wrong type, out-of-range value and cross-key mismatch: one line each, key first."""
    errors = unknown_key_errors(cfg, conf_dir)
    errors += [e for e in (_spec_error(cfg, key, spec) for key, spec in SPEC.items()) if e]
    if not errors:  # the rules across keys read values that must have the right types first
        errors += _cross_key_errors(cfg)
    return errors


def validate(cfg: DictConfig) -> None:
    """The training config: raises ConfigError naming every bad key (see the module's docstring)."""
    errors = config_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    _filesystem_checks(cfg)


# `${project_root:}` in conf/paths: the repository root, wherever the command runs from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]))
# `${if_null:a,b}`: a unless it is null, then b (oc.select passes a null through).
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value)
