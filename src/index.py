"""Encode one dataset's corpus into a searchable index folder: `python -m src.index model=RUN_DIR dataset=scifact`.

The work is `src.retrieval.index_folder.build_index`; the config is conf/tools/index.yaml. Query the folder with
`python -m src.search`."""

import hydra
from omegaconf import DictConfig

from src.config import check_head_precision, resolve_output_dir  # also registers conf/tools' resolvers
from src.retrieval.evaluation import eval_device
from src.retrieval.index_folder import build_index


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="index")
def main(cfg: DictConfig) -> None:
    check_head_precision("head_precision", cfg.head_precision)
    eval_device(cfg.device)
    resolve_output_dir(cfg)
    build_index(cfg)


if __name__ == "__main__":
    main()
