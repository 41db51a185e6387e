"""Training: the LightningModule, checkpoints, guards, progress, the W&B logger and the training run itself."""
