import math

import pytest
import torch

from src.model.activations import ACTIVATIONS, get_activation


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_is_zero_below_zero_and_monotone(name):
    # The encoder takes the max over tokens before sigma: that needs monotone sigma with sigma(x<=0) = 0.
    sigma = get_activation(name)
    x = torch.linspace(-5, 50, 2001, dtype=torch.float64)
    y = sigma(x)
    assert torch.all(y[x <= 0] == 0)
    assert torch.all(y[x > 0] > 0)
    assert torch.all(torch.diff(y) >= 0)
    assert torch.isfinite(y).all()


def test_log_n_by_hand():
    # log1(e-1) = log(e) = 1; log2(e^(e-1) - 1) = log(1 + log(e^(e-1))) = log(e) = 1.
    assert get_activation("log1")(torch.tensor([math.e - 1])).item() == pytest.approx(1.0)
    assert get_activation("log2")(torch.tensor([math.exp(math.e - 1) - 1])).item() == pytest.approx(1.0)
    assert get_activation("log2")(torch.tensor([3.0])).item() == pytest.approx(math.log(1 + math.log(4.0)))
    assert get_activation("log3")(torch.tensor([3.0])).item() == pytest.approx(math.log1p(math.log1p(math.log(4))))
    assert get_activation("relu")(torch.tensor([-2.0, 2.5])).tolist() == [0.0, 2.5]


def test_log_family_goes_to_four_and_flattens():
    x = torch.tensor([100.0])
    values = [get_activation(f"log{n}")(x).item() for n in range(1, 5)]
    assert values == sorted(values, reverse=True)  # each extra log squashes large weights more


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match=r"activation='log9'.*log1, log2, log3, log4, relu"):
        get_activation("log9")
