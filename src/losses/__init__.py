"""Ranking losses against teacher scores, one per file, chosen by `loss.name`.

Each takes student and teacher scores of shape (N, G), column 0 the positive, and returns a
dict of named parts whose "loss_rank" entry is optimised.
"""

from collections.abc import Callable

import torch

from src.losses.kl import kl_divergence
from src.losses.margin_mse import margin_mse

RankingLoss = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]

LOSSES: dict[str, RankingLoss] = {"kl": kl_divergence, "margin_mse": margin_mse}


def get_loss(name: str) -> RankingLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss.name={name!r} is not a known loss; known: {', '.join(sorted(LOSSES))}") from None
