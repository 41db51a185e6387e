"""Checks on a composed config that must pass before any model or data is loaded."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.activations import get_activation
from src.data.beir import dataset_dir
from src.export import model_folder
from src.heads import PRECISIONS
from src.teachers import NORMALISATIONS


class ConfigError(ValueError):
    """A config value is wrong; the message names its key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def check_activation(name: str) -> None:
    try:
        get_activation(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_head_precision(key: str, value: str) -> None:
    _check(value in PRECISIONS, key, f"must be one of {', '.join(PRECISIONS)}, got {value!r}")


def check_model(key: str, source: str | None) -> None:
    try:
        model_folder(source)
    except FileNotFoundError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_datasets(key: str, data_dir: str, names: list[str], download: bool) -> None:
    for name in names:
        try:
            dataset_dir(data_dir, name, download)
        except FileNotFoundError as err:
            raise ConfigError(f"{key} / paths.data_dir: {err}") from None


def resolve_output_dir(cfg: DictConfig) -> Path:
    """paths.output_dir, or Hydra's run directory when it is null (and recorded in cfg either way)."""
    if cfg.paths.output_dir is None:
        if not HydraConfig.initialized():
            raise ConfigError("paths.output_dir: set it when calling an entry point outside the command line")
        cfg.paths.output_dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.paths.output_dir).resolve()


def validate(cfg: DictConfig) -> None:
    """The training config."""
    check_activation(cfg.activation)
    _check(cfg.mask.t is None or cfg.mask.t >= 0, "mask.t", f"must be >= 0 or null, got {cfg.mask.t}")
    _check(cfg.mask.schedule in ("constant", "linear"), "mask.schedule", "must be constant or linear")
    _check(cfg.reg.lambda_d >= 0, "reg.lambda_d", f"must be >= 0, got {cfg.reg.lambda_d}")
    _check(cfg.reg.T >= 1, "reg.T", f"must be >= 1, got {cfg.reg.T}")
    _check(
        cfg.reg.schedule in ("quadratic", "linear", "constant"),
        "reg.schedule",
        f"must be quadratic, linear or constant, got {cfg.reg.schedule!r}",
    )
    _check(
        cfg.data.group_size >= 2,
        "data.group_size",
        f"must be >= 2 (a positive and a negative), got {cfg.data.group_size}",
    )
    _check(cfg.data.batch_size >= 1, "data.batch_size", f"must be >= 1, got {cfg.data.batch_size}")
    check_head_precision("model.head_precision", cfg.model.head_precision)
    check_model("model.name_or_path", cfg.model.name_or_path)
    _check(
        cfg.data.teacher_scores.normalize in NORMALISATIONS,
        "data.teacher_scores.normalize",
        f"must be one of {', '.join(NORMALISATIONS)}, got {cfg.data.teacher_scores.normalize!r}",
    )
    if cfg.data.prepared:
        _check(
            (Path(cfg.data.prepared) / "manifest.json").is_file(),
            "data.prepared",
            f"{cfg.data.prepared} has no manifest.json: not a complete set from `python -m src.prepare`",
        )
    else:
        check_datasets("data.datasets", cfg.paths.data_dir, cfg.data.datasets, cfg.data.download)
    if cfg.query.idf:
        _check(Path(cfg.query.idf).is_file(), "query.idf", f"{cfg.query.idf} does not exist")
    check_datasets("eval.datasets", cfg.paths.data_dir, cfg.eval.datasets, cfg.data.download)


# `${project_root:}` in conf/paths: the repository root, wherever the command runs from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]))
# `${if_null:a,b}`: a unless it is null, then b (oc.select passes a null through).
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value)
