import os

# Offline before anything imports transformers or wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data" / "beir"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "scifact" / "corpus.jsonl").is_file():
        pytest.fail(f"real BEIR data not found at {DATA_DIR}: set DATA_DIR or put ../shared beside the repo")
    return DATA_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session, so each prepared training set is built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli_env(data_dir, cache_dir) -> dict[str, str]:
    """The environment of a command-line run in a test: real data, the session's cache, nothing online."""
    return {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "L0_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def compose_tool(name: str, *overrides: str) -> DictConfig:
    """A config of conf/tools (evaluate, prepare, index), as its command line would compose it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "tools"), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
