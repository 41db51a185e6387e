import math

import pytest
import torch

from src.model.losses import LOSSES, get_loss


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


# --- the fitted student scale (loss.student_scale=fit) ----------------------------------------------------------


def _scale_slope(loss, student: torch.Tensor, teacher: torch.Tensor) -> float:
    """d loss / d eps of loss((1 + eps) * student) at eps = 0: the pull on the scale of every score alike."""
    eps = torch.zeros((), requires_grad=True)
    loss((1 + eps) * student, teacher)["loss_rank"].backward()
    return eps.grad.item()


def _disagreeing_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Student scores of tens of units that rank half the queries' documents unlike the teacher's [0, 20] targets."""
    gen = torch.Generator().manual_seed(0)
    teacher = torch.rand(16, 8, generator=gen) * 20
    student = 30 * torch.rand(16, 8, generator=gen) + 0.5 * teacher
    return student, teacher


def test_a_fixed_scale_rewards_shrinking_every_score_when_the_student_disagrees():
    """The mechanism behind training that lost NDCG: with a fixed scale, scaling all student scores down lowers
    the KL (positive slope), so gradient descent shrinks documents instead of reordering them."""
    student, teacher = _disagreeing_batch()
    assert _scale_slope(get_loss("kl", student_scale=1.0), student, teacher) > 0.1
    assert _scale_slope(get_loss("margin_mse", student_scale=1.0), student, teacher) > 0.1


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_fitted_scale_leaves_no_pull_on_the_scale_and_ignores_it(name):
    student, teacher = _disagreeing_batch()
    fitted = get_loss(name, student_scale="fit")
    assert abs(_scale_slope(fitted, student, teacher)) < 1e-4 * _scale_slope(get_loss(name), student, teacher)
    # the same loss and the same ranking signal whatever the scale of the student's scores
    base, shrunk = fitted(student, teacher), fitted(student / 7, teacher)
    assert shrunk["loss_rank"].item() == pytest.approx(base["loss_rank"].item(), rel=1e-4)
    assert shrunk["student_scale"].item() == pytest.approx(7 * base["student_scale"].item(), rel=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_fitted_scale_minimises_the_loss(name):
    student, teacher = _disagreeing_batch()
    fitted = get_loss(name, student_scale="fit")(student, teacher)
    grid = torch.logspace(-3, 1, 2001)
    best = min(get_loss(name, student_scale=float(a))(student, teacher)["loss_rank"].item() for a in grid)
    assert fitted["loss_rank"].item() <= best + 1e-6
    assert 1e-3 < fitted["student_scale"].item() < 10
