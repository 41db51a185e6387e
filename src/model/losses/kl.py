import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a statistic over all ranks (identity in one process)

# Bounds of a fitted student scale: a raw student score is tens of units, a min-max target a few.
SCALE_BOUNDS = (1e-3, 1e3)


@torch.no_grad()
def fit_kl_scale(student: torch.Tensor, teacher_probs: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """The a > 0 that minimises mean_n KL(t_n || softmax(a * s_n)) on this batch (the global batch with `reduce`).

    The KL is convex in a, and its derivative, mean_n (E_softmax(a s_n)[s] - E_t_n[s]), grows with a: bisection on
    log a within SCALE_BOUNDS finds its zero to ~1e-6 without a host-device sync. student, teacher_probs: (N, G).
    """
    expected_teacher = (teacher_probs * student).sum(-1)  # (N,)
    low = torch.full((), math.log(SCALE_BOUNDS[0]), device=student.device)
    high = torch.full((), math.log(SCALE_BOUNDS[1]), device=student.device)
    for _ in range(24):
        mid = (low + high) / 2
        expected_student = (F.softmax(mid.exp() * student, dim=-1) * student).sum(-1)  # (N,)
        slope = (expected_student - expected_teacher).sum()
        if reduce is not None:
            slope = reduce(slope)
        low, high = torch.where(slope < 0, mid, low), torch.where(slope < 0, high, mid)
    return ((low + high) / 2).exp()


def kl_divergence(
    student: torch.Tensor, teacher: torch.Tensor, student_scale: float | str = 1.0, reduce: Reduce | None = None
) -> dict[str, torch.Tensor]:
    """KL(teacher softmax || softmax of the student's scores x a), over each query's documents, mean over queries.

    student, teacher: (N, G) (or (N, D) with in-batch documents). `student_scale`: a number, or "fit": the a
    that minimises this batch's KL (`fit_kl_scale`). With a fitted, the loss cannot fall by shrinking or growing
    every score alike, only by ranking as the teacher does: where the student disagrees with the teacher, a fixed
    a lets the KL fall fastest by flattening the student's scores, i.e. by shrinking documents (README,
    "Why training lost NDCG"). No gradient flows through a; at the fitted a none is needed (dKL/da = 0).
    """
    log_p_teacher = F.log_softmax(teacher, dim=-1)  # (N, G)
    if student_scale == "fit":
        scale = fit_kl_scale(student.detach(), log_p_teacher.exp(), reduce)
    else:
        scale = torch.tensor(float(student_scale), device=student.device)
    log_p_student = F.log_softmax(scale * student, dim=-1)  # (N, G)
    loss = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return {"loss_rank": loss, "student_scale": scale}
