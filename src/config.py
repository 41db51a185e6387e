"""Checks on a composed config that must pass before any model or data is loaded."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.activations import get_activation
from src.data.beir import dataset_dir


class ConfigError(ValueError):
    """A config value is wrong; the message names its key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def validate(cfg: DictConfig) -> None:
    try:
        get_activation(cfg.activation)
    except ValueError as err:
        raise ConfigError(str(err)) from None
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
    name = cfg.model.name_or_path
    if name is not None and _looks_like_path(name):
        _check(Path(name).expanduser().is_dir(), "model.name_or_path", f"folder {name} does not exist")
    for key in ("data.datasets", "eval.datasets"):
        group, field = key.split(".")
        for dataset in cfg[group][field]:
            try:
                dataset_dir(cfg.paths.data_dir, dataset, cfg.data.download)
            except FileNotFoundError as err:
                raise ConfigError(f"{key} / paths.data_dir: {err}") from None


# `${project_root:}` in conf/paths: the repository root, wherever the command runs from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]))
# `${if_null:a,b}`: a unless it is null, then b (oc.select passes a null through).
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value)
