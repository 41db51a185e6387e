"""Train an inference-free sparse retriever, then evaluate it on BEIR: `python -m src.train`.

The work is `src.training.run.train`; the config is conf/train.yaml with its groups."""

import hydra
from omegaconf import DictConfig

from src.training.run import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
