"""The Gaussian reward model's head (align.rewards.gaussian): the variance from the raw output and the quantile
rewards that training and scoring share. Hand-computed expectations; no model."""

import pytest
import torch

from align.rewards.gaussian import quantile_reward, random_quantiles, variance_from_raw

D64 = torch.float64


def t(values, dtype=D64):
    return torch.tensor(values, dtype=dtype)


def test_variance_from_raw_is_softplus_plus_floor():
    v = variance_from_raw(t([0.0, -1.0, 2.0]))
    assert v.tolist() == pytest.approx([0.6931481805599453, 0.31326268751822284, 2.126929011042973], rel=1e-12)
    assert variance_from_raw(torch.tensor([-200.0])).item() == pytest.approx(1e-6)  # never 0
    assert variance_from_raw(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32


def test_quantile_reward_hand_computed():
    mu, sigma = t([1.0, -2.0]), t([2.0, 0.5])
    assert torch.equal(quantile_reward(mu, sigma, 0.5), mu)
    # Phi^-1(0.25) = -0.6744897501960817
    assert quantile_reward(mu, sigma, 0.25).tolist() == pytest.approx([-0.3489795003921634, -2.337244875098041],
                                                                      rel=1e-12)
    assert (mu - quantile_reward(mu, sigma, 0.25)).tolist() == pytest.approx([0.6745 * 2, 0.6745 * 0.5], rel=1e-4)
    # per-sample quantiles, Phi^-1(0.975) = 1.959963984540054
    assert quantile_reward(mu, sigma, t([0.975, 0.025])).tolist() == pytest.approx(
        [4.919927969080108, -2.979981992270027], rel=1e-12)
    assert quantile_reward(mu.bfloat16(), sigma.bfloat16(), 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        quantile_reward(mu, sigma, 1.0)
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        quantile_reward(mu, sigma, t([0.5, 0.0]))


def test_random_quantiles_lie_within_bounds_and_are_reproducible():
    q = random_quantiles(10000, torch.Generator().manual_seed(3))
    assert q.shape == (10000,) and q.dtype == torch.float32
    assert q.min().item() >= 0.05 and q.max().item() < 0.95
    assert q.min().item() < 0.06 and q.max().item() > 0.94  # covers the range
    assert torch.equal(q, random_quantiles(10000, torch.Generator().manual_seed(3)))
    narrow = random_quantiles(100, torch.Generator().manual_seed(0), low=0.2, high=0.3)
    assert narrow.min().item() >= 0.2 and narrow.max().item() < 0.3
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        random_quantiles(10, low=0.0)
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        random_quantiles(10, low=0.6, high=0.4)
