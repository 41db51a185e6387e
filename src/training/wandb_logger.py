"""Lightning's W&B logger, minus two init arguments that W&B >= 0.22 warns about on every run."""

from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning always passes `anonymous` (deprecated in W&B, "has no effect") and `resume="allow"` (ignored, with a
    warning, in offline mode, our default); neither changes what is logged, so they are not passed."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)
        if kwargs.get("offline"):
            self._wandb_init.pop("resume", None)
