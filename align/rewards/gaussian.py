"""A Gaussian reward model's head and its rewards, shared by training (`align.methods.reward_model`) and scoring
(`align.rewards.reward_model`, `align.best_of_n`).

"Variance-aware Reward Modeling with Anchor Guidance" (arXiv 2605.11865): the reward of a response is N(mu, sigma^2)
with sigma^2 = softplus(v) + 1e-6 for the head's raw second output v. As an RL reward the model gives the q-quantile
r = mu + Phi^-1(q) sigma, for a fixed q or q ~ U(0.05, 0.95) drawn per sample. The losses that train the head are in
`align.methods.reward_model.math`.

Computed in at least float32 (`upcast`); `quantile_reward` takes sigma, not the variance, and q strictly inside
(0, 1); `random_quantiles` draws U[low, high) in float32 with the given generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.numerics import upcast

VARIANCE_FLOOR = 1e-6


def variance_from_raw(v: torch.Tensor) -> torch.Tensor:
    """sigma^2 = softplus(v) + 1e-6, elementwise, from the variance head's raw output v (any shape)."""
    return F.softplus(upcast(v)) + VARIANCE_FLOOR


def quantile_reward(mu: torch.Tensor, sigma: torch.Tensor, q: torch.Tensor | float) -> torch.Tensor:
    """mu + Phi^-1(q) * sigma, elementwise: the q-quantile of N(mu, sigma^2).

    mu, sigma  (N,) mean and standard deviation (not variance)
    q          a float or (N,) per-sample quantiles, strictly inside (0, 1)
    """
    mu, sigma = upcast(mu), upcast(sigma)
    q = torch.as_tensor(q, dtype=mu.dtype, device=mu.device).broadcast_to(mu.shape)
    if not ((q > 0) & (q < 1)).all():
        raise ValueError("Quantiles must lie strictly inside (0, 1).")
    return mu + torch.special.ndtri(q) * sigma


def random_quantiles(n: int, generator: torch.Generator | None = None, low: float = 0.05,
                     high: float = 0.95) -> torch.Tensor:
    """(n,) float32 quantiles drawn from U[low, high) (the 'random' quantile reward)."""
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"Expected 0 < low <= high < 1; got low={low}, high={high}.")
    return low + (high - low) * torch.rand(n, generator=generator)
