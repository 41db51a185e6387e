import torch
import torch.nn.functional as F


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE between student and teacher margins s(q, d+) - s(q, d-), over every negative slot.

    student, teacher: (N, G) with the positive in column 0.
    """
    student_margin = student[:, :1] - student[:, 1:]  # (N, G-1)
    teacher_margin = teacher[:, :1] - teacher[:, 1:]  # (N, G-1)
    return {"loss_rank": F.mse_loss(student_margin, teacher_margin)}
