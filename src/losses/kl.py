import torch
import torch.nn.functional as F


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """KL(teacher softmax || student softmax) over each query's G documents, mean over queries.

    student, teacher: (N, G).
    """
    log_p_student = F.log_softmax(student / temperature, dim=-1)  # (N, G)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)  # (N, G)
    loss = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return {"loss_rank": loss}
