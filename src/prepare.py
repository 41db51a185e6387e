"""Build a distillation training set on disk: `python -m src.prepare datasets=[scifact,nfcorpus] paths.output_dir=DIR`.

The work is `src.data.prepare.prepare` (its docstring: sources, teachers, resuming); the config is
conf/tools/prepare.yaml.
"""

import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig

from src.config import ConfigError
from src.data.prepare import prepare


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="prepare")
def main(cfg: DictConfig) -> None:
    if cfg.paths.output_dir is None:
        raise ConfigError("paths.output_dir: say where the prepared set goes")
    if cfg.overwrite and Path(cfg.paths.output_dir).exists():
        shutil.rmtree(cfg.paths.output_dir)
    prepare(cfg)


if __name__ == "__main__":
    main()
