"""Our sentence-transformers module: the log1p steps of an activation that SpladePooling does not apply itself.

SpladePooling computes log1p(relu(x)) ("relu") or log1p(log1p(relu(x))) ("log1p_relu") before its max over
tokens; `Log1pSteps` after it makes log3 and log4 (more log1p) and plain relu (expm1, the inverse of log1p).

This file imports nothing from this project: `python -m src.export format=sentence-transformers` copies it into
the exported folder, so the folder loads with sentence-transformers alone (`trust_remote_code=True`).
"""

from typing import Any, ClassVar

import torch
from sentence_transformers.base.modules.module import Module


class Log1pSteps(Module):
    """sentence_embedding -> log1p applied `steps` times (steps < 0: expm1 applied -steps times).

    Applied after the max over tokens, which commutes with these monotone maps, so the result is the activation
    taken per token. expm1(log1p(y)) = y up to float32 rounding (relative error below 1e-6).
    """

    config_keys: ClassVar[list[str]] = ["steps"]

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = int(steps)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        x = features["sentence_embedding"]  # (B, V), >= 0: SpladePooling's output
        for _ in range(self.steps):
            x = torch.log1p(x)
        for _ in range(-self.steps):
            x = torch.expm1(x)
        features["sentence_embedding"] = x  # (B, V)
        return features

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)  # no weights: the config alone rebuilds it
