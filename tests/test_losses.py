import math

import pytest
import torch

from src.losses import LOSSES, get_loss


def test_kl_by_hand():
    # teacher softmax [0.75, 0.25], student [0.5, 0.5]: KL = 0.75 ln 1.5 + 0.25 ln 0.5
    parts = get_loss("kl")(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert parts["loss_rank"].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)


def test_kl_is_mean_over_queries_and_zero_at_agreement():
    kl = get_loss("kl")
    teacher = torch.tensor([[2.0, 1.0, 0.0], [5.0, 5.0, 1.0]])
    assert kl(teacher + 3.0, teacher)["loss_rank"].item() == pytest.approx(0.0, abs=1e-7)  # shift-invariant
    one = kl(torch.zeros(1, 3), teacher[:1])["loss_rank"]
    two = kl(torch.zeros(1, 3), teacher[1:])["loss_rank"]
    assert kl(torch.zeros(2, 3), teacher)["loss_rank"].item() == pytest.approx(((one + two) / 2).item())


def test_margin_mse_by_hand():
    # margins: student [2, -2], teacher [1, 0] -> ((2-1)^2 + (-2-0)^2) / 2 = 2.5
    parts = get_loss("margin_mse")(torch.tensor([[3.0, 1.0], [0.0, 2.0]]), torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    assert parts["loss_rank"].item() == pytest.approx(2.5)


def test_margin_mse_uses_every_negative():
    # G=3: margins student [1, 2], teacher [0, 0] -> (1 + 4) / 2
    parts = get_loss("margin_mse")(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0]]))
    assert parts["loss_rank"].item() == pytest.approx(2.5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_return_named_differentiable_parts(name):
    student = torch.randn(4, 3, requires_grad=True)
    parts = get_loss(name)(student, torch.randn(4, 3))
    assert "loss_rank" in parts
    parts["loss_rank"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_unknown_loss():
    with pytest.raises(ValueError, match="loss.name='nce'.*kl, margin_mse"):
        get_loss("nce")
