"""Ranking losses against teacher scores, one per file, chosen by `loss.name`.

Each takes student and teacher scores of shape (N, G), column 0 the positive, the student's scale (a number, or
"fit": fitted on each batch) and a function that sums a statistic over all ranks, and returns a dict of named
parts whose "loss_rank" entry is optimised.
"""

from collections.abc import Callable
from functools import partial

import torch

from src.model.losses.kl import Reduce, kl_divergence
from src.model.losses.margin_mse import margin_mse

RankingLoss = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]

LOSSES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {"kl": kl_divergence, "margin_mse": margin_mse}


def get_loss(name: str, student_scale: float | str = 1.0, reduce: Reduce | None = None) -> RankingLoss:
    try:
        loss = LOSSES[name]
    except KeyError:
        raise ValueError(f"loss.name={name!r} is not a known loss; known: {', '.join(sorted(LOSSES))}") from None
    return partial(loss, student_scale=student_scale, reduce=reduce)
