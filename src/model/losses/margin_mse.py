import torch
import torch.nn.functional as F

from src.model.losses.kl import SCALE_BOUNDS, Reduce


def margin_mse(
    student: torch.Tensor, teacher: torch.Tensor, student_scale: float | str = 1.0, reduce: Reduce | None = None
) -> dict[str, torch.Tensor]:
    """MSE between student and teacher margins s(q, d+) - s(q, d-), over every negative slot.

    student, teacher: (N, G) with the positive in column 0. The student's margins are multiplied by a:
    `student_scale`, a number or "fit", the least-squares a = sum(m_s m_t) / sum(m_s^2) of this batch (of the
    global batch with `reduce`), kept within SCALE_BOUNDS (see `src.model.losses.kl.kl_divergence` for why).
    """
    student_margin = student[:, :1] - student[:, 1:]  # (N, G-1)
    teacher_margin = teacher[:, :1] - teacher[:, 1:]  # (N, G-1)
    if student_scale == "fit":
        with torch.no_grad():
            sums = torch.stack([(student_margin * teacher_margin).sum(), (student_margin**2).sum()])  # (2,)
            if reduce is not None:
                sums = reduce(sums)
            scale = (sums[0] / sums[1].clamp(min=1e-12)).clamp(*SCALE_BOUNDS)
    else:
        scale = torch.tensor(float(student_scale), device=student.device)
    return {"loss_rank": F.mse_loss(scale * student_margin, teacher_margin), "student_scale": scale}
