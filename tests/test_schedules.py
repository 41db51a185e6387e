import pytest

from src.model.schedules import lambda_at, threshold_at


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("quadratic", 0, 0.04 * (1 / 10) ** 2),
        ("quadratic", 4, 0.04 * (5 / 10) ** 2),
        ("quadratic", 9, 0.04),  # step T-1 already reaches lambda_d
        ("quadratic", 10, 0.04),
        ("quadratic", 10_000, 0.04),
        ("linear", 0, 0.004),
        ("linear", 9, 0.04),
        ("linear", 50, 0.04),
        ("constant", 0, 0.04),
        ("constant", 10, 0.04),
    ],
)
def test_lambda_schedules(schedule, step, expected):
    assert lambda_at(step, schedule, 0.04, 10) == pytest.approx(expected)


def test_threshold_schedules():
    assert threshold_at(5, "constant", 200, None, 10) == 200
    assert threshold_at(5, "linear", None, 1000, 10) is None  # no mask stays no mask
    assert threshold_at(0, "linear", 200, 1000, 10) == 1000
    assert threshold_at(5, "linear", 200, 1000, 10) == pytest.approx(600)
    assert threshold_at(10, "linear", 200, 1000, 10) == 200
    assert threshold_at(99, "linear", 200, 1000, 10) == 200
    with pytest.raises(ValueError, match="mask.schedule"):
        threshold_at(0, "cosine", 200, None, 10)
