"""Write a model in one of the on-disk formats: `python -m src.export model=RUN_DIR format=sentence-transformers
paths.output_dir=DIR`. The work is `src.model.export.export`; the config is conf/tools/export.yaml."""

import hydra
from omegaconf import DictConfig

from src.model.export import export  # imports src.config, which registers conf/tools' resolvers


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
