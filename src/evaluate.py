"""Evaluate any model on BEIR, standalone: `python -m src.evaluate model=RUN_DIR datasets=[scifact,nfcorpus]`.

On several GPUs: `torchrun --nproc_per_node 8 -m src.evaluate model=RUN_DIR paths.output_dir=DIR ...`: the
ranks share each corpus's encoding, rank 0 searches, scores and writes the results. The work is
`src.retrieval.evaluation.evaluate`; the config is conf/tools/evaluate.yaml."""

import hydra
from omegaconf import DictConfig

from src.retrieval.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
