"""Reward models' pure math: Bradley-Terry, the anchor-guided variance-aware (Gaussian) reward model, and CausalRM.

The methods as implemented are specified in specs/reward_models.md. This module holds only the losses, the label
and threshold helpers and the metrics; no model, no data loading, no trainer.

Bradley-Terry (the baseline): TRL's reward loss, mean over pairs of -log sigmoid(r_w - r_l - margin).

Gaussian reward model with anchors: "Variance-aware Reward Modeling with Anchor Guidance" (arXiv 2605.11865). The
reward of a response is N(mu, sigma^2), sigma^2 = softplus(v) + 1e-6 for a raw head output v. Thurstone (probit)
preferences with soft labels s (share of annotator votes for y_w):

    z = (mu_w - mu_l) / sqrt(sigma_w^2 + sigma_l^2),    P(y_w > y_l) = Phi(z)
    L_pref = -[ s log Phi(z) + (1 - s) log Phi(-z) ]

Pairs fix only z: shifting every mu, or scaling mu and sigma together, changes nothing. Ordinal anchors fix both.
With thresholds tau_1 < tau_2 on an external score and A_k = 1[score >= tau_k] (labels 0 / 1 / 2 = low / mid /
high), an ordinal probit on the same latent utility:

    u_k = (mu - tau_k) / sigma,   p_k = Phi(u_k),   pi_0 = 1 - p_1,   pi_1 = p_1 - p_2,   pi_2 = p_2
    L_anchor = -[ (1 - A_1) log pi_0 + (A_1 - A_2) log pi_1 + A_2 log pi_2 ]
    L = L_pref + lam * (L_anchor(y_w) + L_anchor(y_l))

Phi^-1(p_1) - Phi^-1(p_2) = u_1 - u_2 = (tau_2 - tau_1) / sigma pins sigma, and then p_1 pins mu. One threshold gives
the binary probit -[ A log p_1 + (1 - A) log(1 - p_1) ]. As an RL reward the model gives r = mu + Phi^-1(q) sigma,
for a fixed quantile q or q ~ U(0.05, 0.95) drawn per sample.

CausalRM: "CausalRM: Causal-Theoretic Reward Modeling for RLHF from Observational User Feedbacks" (arXiv
2603.18736). Its full text was not available; what is implemented is the standard construction its abstract
describes. (1) Label noise: the observed label y~ is the true one y flipped with class-conditional rates
rho_10 = P(y~ = 1 | y = 0) and rho_01 = P(y~ = 0 | y = 1); the surrogate of Natarajan et al. ("Learning with Noisy
Labels", NeurIPS 2013), with l the binary cross-entropy on sigmoid(f),

    l~(f, 1) = [ (1 - rho_10) l(f, 1) - rho_01 l(f, 0) ] / (1 - rho_01 - rho_10)
    l~(f, 0) = [ (1 - rho_01) l(f, 0) - rho_10 l(f, 1) ] / (1 - rho_01 - rho_10)

is unbiased: E over the flips of l~(f, y~) = l(f, y). (2) Selection bias: only rows with o = 1 carry feedback, with
propensity p(x) = P(o = 1 | x); inverse propensity weighting over all rows, observed or not,

    IPS              L = mean_i o_i l~_i / p_i
    doubly robust    L = mean_i [ e_i + o_i (l~_i - e_i) / p_i ]     e_i: the loss against an imputation model's label

is unbiased for the mean clean loss over the inference distribution (DR: if either p or the imputation is right).
Unknown flip rates are read off a model fitted to the noisy labels: P(y~ = 1 | x) = rho_10 + (1 - rho_01 - rho_10)
eta(x) ranges over [rho_10, 1 - rho_01], so rho_10 ~ sigmoid(low quantile of its logits) and rho_01 ~ 1 - sigmoid(high
quantile).

Decisions the spec leaves open:
- Precision: every loss and metric is computed in at least float32. bfloat16 / float16 inputs are upcast to float32
  and the result is float32; float64 inputs stay float64 (used by the tests).
- Shapes: pair quantities are (P,), response quantities (N,), CausalRM rows (N,), all 1-D and non-empty; the caller
  squeezes a head's (B, 1) output. Losses return 0-d tensors; so do the metrics (a trainer can reduce them across
  processes before calling .item()).
- Value checks (labels, soft labels, observed flags, propensities) read the tensors on the host: one synchronisation
  per call, negligible next to a forward pass.
- z is clamped to [-6, 6] with torch.clamp: a pair with |z| > 6 (already decided, Phi(-6) ~ 1e-9) gets no gradient
  from L_pref. `preference_probability` uses the same clamped z, so it lies in [Phi(-6), Phi(6)].
- Soft labels: the losses accept any s in [0, 1] (s = 0.5 is valid mathematics); dropping tied pairs is the data
  loader's business.
- Phi is erfc(-x / sqrt(2)) / 2, accurate relative to its value in both tails (torch.special.ndtr is not, in
  float32, in the lower tail); log Phi in L_pref is torch.special.log_ndtr.
- Anchor probabilities are computed without cancellation, pi_0 = Phi(-u_1), pi_2 = Phi(u_2), and pi_1 as
  Phi(u_1) - Phi(u_2) or, when u_1 + u_2 > 0 (the interval lies in the upper tail), Phi(-u_2) - Phi(-u_1); then
  clamped >= 1e-7 as specified (torch.clamp: a response whose label has probability below 1e-7, |u| beyond about 5.2,
  gets no anchor gradient). Consequence for the trainer: thresholds must be on a scale mu can reach from its
  initialisation near 0; a raw score on a wide scale (a 0-100 judge score) would leave every anchor term on the
  floor, so standardise the score over the training set before taking thresholds (the labels do not change).
- Thresholds are numpy percentiles (linear interpolation, numpy's default) over the finite scores and must come out
  strictly increasing: a discrete score (Likert 1-5) can give equal 25th and 75th percentiles, which is refused with
  the fixes named (other percentiles, or ordinal labels given in the data). A score equal to a threshold is in the
  upper class (score >= tau).
- Anchors on a fraction of pairs: exactly floor(fraction * num_pairs + 0.5) pairs, drawn uniformly without
  replacement (torch.randperm with the given generator). The mask is meant to be drawn once over the training set,
  so a fixed subset of pairs carries anchors throughout training, not re-drawn per batch.
- `gaussian_anchor_loss`: the anchor term is the mean over the masked pairs of L_anchor(y_w) + L_anchor(y_l), so lam
  weighs it the same whatever the fraction; it is 0 when no pair is masked. Returns (total, L_pref, anchor term).
- `quantile_reward` takes sigma, not the variance; q must lie strictly inside (0, 1). `random_quantiles` draws
  U[low, high) in float32 with the given generator.
- Noise rates are Python floats (config or estimate), checked: each in [0, 1), sum < 1. l~ is unbiased but not
  non-negative (with rho_01 > 0, l~(f, 1) < 0 for a confident f >> 0: the -rho_01 l(f, 0) term wins), and no
  non-negativity correction is applied, so a batch's loss may be negative.
- Noisy labels must be 0 / 1 on every row; rows with o = 0 carry a placeholder (any 0 / 1). IPS and doubly robust
  select the observed rows with torch.where, so an unobserved row's l~ contributes exactly 0 whatever its value.
- Propensities must lie in (0, 1] before clipping (0, negative or > 1 means logits or an unnormalised score were
  passed: refused), then are clamped to `clip` = (0.1, 1.0) by default. The functions do not detach anything: the
  caller passes detached propensities (the propensity model is trained separately); e_i keeps its gradient into the
  reward model, as in the doubly robust estimator.
- `estimate_noise_rates`: numpy quantiles (linear) of the logits in float64; returns Python floats; estimates that
  sum to >= 1 (the noisy-label model does not separate the classes) are refused with the fix named.
- Metrics: pairwise accuracy counts ties as wrong (mu_w > mu_l strictly); the cross-entropy clamps the probability
  into [1e-7, 1 - 1e-7].
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from trl import RewardConfig, RewardTrainer

from align.checkpoints import CompleteCheckpoints
from align.numerics import upcast
from align.tokens import pad_right, reward_input_ids
from align.tracking import RedactedArguments

log = logging.getLogger(__name__)

Z_CLAMP = 6.0
VARIANCE_FLOOR = 1e-6
PROB_FLOOR = 1e-7
SQRT_HALF = math.sqrt(0.5)
DEFAULT_PERCENTILES = (25.0, 75.0)
DEFAULT_LAMBDA = 0.1
DEFAULT_PROPENSITY_CLIP = (0.1, 1.0)

Number = float | int



def _ndtr(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) = erfc(-x / sqrt(2)) / 2: relatively accurate in both tails (torch.special.ndtr in float32 is not in
    the lower one: it gives Phi(-5) = 2.98e-7 for 2.87e-7, and 0 at -8)."""
    return 0.5 * torch.special.erfc(-x * SQRT_HALF)


def _vector(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.numel() == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Expected {name} to be a non-empty 1-D tensor; got {shape}.")
    return x


def _same_shape(**tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        _vector(name, x)
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"Expected tensors of the same shape; got {shapes}.")


def _like(value: torch.Tensor | Number, ref: torch.Tensor) -> torch.Tensor:
    """value (a number or a tensor broadcastable to ref) as a tensor of ref's dtype and device."""
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device).broadcast_to(ref.shape)


def _check_binary(name: str, x: torch.Tensor) -> None:
    if not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name} must be 0 / 1 (or bool); got values {sorted(set(x.flatten().tolist()))[:6]}.")


# --------------------------------------------------------------------------------------------------------------------
# Bradley-Terry


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | Number | None = None) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_w - r_l - margin); a scalar.

    r_chosen, r_rejected  (P,) scalar rewards of the chosen / rejected response of each pair
    margin                None, a number, or (P,) per-pair margins
    """
    _same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    diff = upcast(r_chosen) - upcast(r_rejected)
    if margin is not None:
        diff = diff - _like(margin, diff)
    return -F.logsigmoid(diff).mean()


# --------------------------------------------------------------------------------------------------------------------
# Gaussian reward model


def variance_from_raw(v: torch.Tensor) -> torch.Tensor:
    """sigma^2 = softplus(v) + 1e-6, elementwise, from the variance head's raw output v (any shape)."""
    return F.softplus(upcast(v)) + VARIANCE_FLOOR


def preference_z(mu_w: torch.Tensor, var_w: torch.Tensor, mu_l: torch.Tensor, var_l: torch.Tensor) -> torch.Tensor:
    """(P,) z = (mu_w - mu_l) / sqrt(var_w + var_l), clamped to [-6, 6].

    mu_w, var_w, mu_l, var_l  (P,) means and variances of the chosen (w) and rejected (l) responses
    """
    _same_shape(mu_w=mu_w, var_w=var_w, mu_l=mu_l, var_l=var_l)
    z = (upcast(mu_w) - upcast(mu_l)) / torch.sqrt(upcast(var_w) + upcast(var_l))
    return z.clamp(-Z_CLAMP, Z_CLAMP)


def preference_probability(mu_w: torch.Tensor, var_w: torch.Tensor, mu_l: torch.Tensor,
                           var_l: torch.Tensor) -> torch.Tensor:
    """(P,) P(y_w > y_l) = Phi(z), z as in `preference_z` (clamped)."""
    return _ndtr(preference_z(mu_w, var_w, mu_l, var_l))


def gaussian_preference_nll(mu_w: torch.Tensor, var_w: torch.Tensor, mu_l: torch.Tensor, var_l: torch.Tensor,
                            soft_label: torch.Tensor | Number) -> torch.Tensor:
    """(P,) per-pair -[ s log Phi(z) + (1 - s) log Phi(-z) ].

    soft_label  a number or (P,) share of votes for y_w, in [0, 1]
    """
    z = preference_z(mu_w, var_w, mu_l, var_l)
    s = _like(soft_label, z)
    if not ((s >= 0) & (s <= 1)).all():
        raise ValueError("Soft labels must lie in [0, 1] (the share of votes for the chosen response).")
    return -(s * torch.special.log_ndtr(z) + (1 - s) * torch.special.log_ndtr(-z))


def gaussian_preference_loss(mu_w: torch.Tensor, var_w: torch.Tensor, mu_l: torch.Tensor, var_l: torch.Tensor,
                             soft_label: torch.Tensor | Number) -> torch.Tensor:
    """L_pref: the mean over pairs of `gaussian_preference_nll`; a scalar."""
    return gaussian_preference_nll(mu_w, var_w, mu_l, var_l, soft_label).mean()


def anchor_thresholds(scores, percentiles: Sequence[Number] | Number = DEFAULT_PERCENTILES) -> tuple[float, ...]:
    """Thresholds tau_1 < tau_2 (or a single tau) at the given percentiles of an external score.

    scores       (N,) tensor, array or sequence of the external score over the training set; NaNs are ignored
    percentiles  one or two numbers in [0, 100], increasing; default (25, 75)
    """
    pct = [float(p) for p in np.atleast_1d(np.asarray(percentiles, dtype=np.float64))]
    if len(pct) not in (1, 2) or not all(0 <= p <= 100 for p in pct) or (len(pct) == 2 and not pct[0] < pct[1]):
        raise ValueError(f"Expected one or two increasing percentiles in [0, 100]; got {list(pct)}.")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    values = np.asarray(scores, dtype=np.float64).ravel()
    if np.isinf(values).any():
        raise ValueError("Anchor scores must be finite (NaN marks a missing score and is ignored).")
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("No scores to take anchor thresholds from.")
    taus = tuple(float(t) for t in np.percentile(values, pct))
    if len(taus) == 2 and not taus[0] < taus[1]:
        raise ValueError(f"The anchor thresholds at percentiles {pct} coincide ({taus[0]}): the score has too few "
                         f"distinct values. Choose other percentiles, or give the ordinal labels in the data.")
    return taus


def _check_thresholds(thresholds: Sequence[Number]) -> tuple[float, ...]:
    taus = tuple(float(t) for t in thresholds)
    increasing = len(taus) == 1 or (len(taus) == 2 and taus[0] < taus[1])
    if not increasing or not all(math.isfinite(t) for t in taus):
        raise ValueError(f"Expected one or two finite, strictly increasing anchor thresholds; got {list(taus)}.")
    return taus


def ordinal_labels(scores: torch.Tensor, thresholds: Sequence[Number]) -> torch.Tensor:
    """(N,) long: sum over k of 1[score >= tau_k], i.e. 0 .. K for K = len(thresholds) (0 / 1 / 2 = low / mid /
    high for two thresholds).

    scores  (N,) external score of each response, finite
    """
    taus = _check_thresholds(thresholds)
    scores = torch.as_tensor(scores)
    if not torch.isfinite(scores).all():
        raise ValueError("Scores must be finite to get ordinal labels; drop the responses without a score.")
    scores = upcast(scores)
    return sum((scores >= t).long() for t in taus)


def anchor_nll(mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor,
               thresholds: Sequence[Number]) -> torch.Tensor:
    """(N,) per-response ordinal probit negative log-likelihood, probabilities clamped >= 1e-7.

    mu, var     (N,) mean and variance of each response's reward
    labels      (N,) ordinal labels in 0 .. K (`ordinal_labels`)
    thresholds  K = 1 or 2 thresholds, strictly increasing
    K = 2: -[ (1 - A_1) log pi_0 + (A_1 - A_2) log pi_1 + A_2 log pi_2 ] with A_k = 1[label >= k];
    K = 1: -[ A_1 log p_1 + (1 - A_1) log(1 - p_1) ].
    """
    taus = _check_thresholds(thresholds)
    _same_shape(mu=mu, var=var, labels=labels)
    if labels.is_floating_point() or not ((labels >= 0) & (labels <= len(taus))).all():
        raise ValueError(f"Ordinal labels must be integers in 0 .. {len(taus)} for {len(taus)} threshold(s).")
    mu, sigma = upcast(mu), torch.sqrt(upcast(var))
    a1 = (labels >= 1).to(mu.dtype)
    u1 = (mu - taus[0]) / sigma
    log_pi0 = torch.log(_ndtr(-u1).clamp(min=PROB_FLOOR))
    if len(taus) == 1:
        log_p1 = torch.log(_ndtr(u1).clamp(min=PROB_FLOOR))
        return -(a1 * log_p1 + (1 - a1) * log_pi0)
    a2 = (labels >= 2).to(mu.dtype)
    u2 = (mu - taus[1]) / sigma
    pi1 = torch.where(u1 + u2 > 0, _ndtr(-u2) - _ndtr(-u1), _ndtr(u1) - _ndtr(u2))
    log_pi1 = torch.log(pi1.clamp(min=PROB_FLOOR))
    log_pi2 = torch.log(_ndtr(u2).clamp(min=PROB_FLOOR))
    return -((1 - a1) * log_pi0 + (a1 - a2) * log_pi1 + a2 * log_pi2)


def anchor_loss(mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor,
                thresholds: Sequence[Number]) -> torch.Tensor:
    """L_anchor: the mean over responses of `anchor_nll`; a scalar."""
    return anchor_nll(mu, var, labels, thresholds).mean()


def anchor_mask(num_pairs: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_pairs,) bool: exactly floor(fraction * num_pairs + 0.5) pairs, uniformly without replacement, are True.

    Draw it once over the training set (a fixed subset of pairs carries anchors); reproducible with a seeded generator.
    """
    if num_pairs < 0 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"Expected num_pairs >= 0 and fraction in [0, 1]; got {num_pairs} and {fraction}.")
    count = math.floor(fraction * num_pairs + 0.5)
    mask = torch.zeros(num_pairs, dtype=torch.bool)
    mask[torch.randperm(num_pairs, generator=generator)[:count]] = True
    return mask


def gaussian_anchor_loss(mu_w: torch.Tensor, var_w: torch.Tensor, mu_l: torch.Tensor, var_l: torch.Tensor,
                         soft_label: torch.Tensor | Number, labels_w: torch.Tensor, labels_l: torch.Tensor,
                         thresholds: Sequence[Number], lam: float = DEFAULT_LAMBDA,
                         mask: torch.Tensor | None = None,
                         fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L_pref, anchor term), scalars: total = L_pref + lam * anchor term.

    mu_w, var_w, mu_l, var_l  (P,) means and variances of the chosen / rejected responses
    soft_label                a number or (P,) in [0, 1]
    labels_w, labels_l        (P,) ordinal labels of the chosen / rejected responses (placeholders where unmasked)
    mask                      None (anchors on every pair) or (P,) bool: the pairs that carry anchors
    fraction                  None: the anchor term is the mean over this batch's masked pairs of L_anchor(y_w) +
                              L_anchor(y_l) (0 with no masked pair). A number f in (0, 1], the share of the training
                              set's pairs that carry anchors: the term is their sum divided by f * P, an unbiased
                              estimate of the mean over all anchored pairs that weighs every anchored pair the same
                              whatever else its batch holds (the per-batch mean over-weighs pairs in batches with
                              few anchors, and lam's effective weight falls with small batches).
    """
    pref = gaussian_preference_loss(mu_w, var_w, mu_l, var_l, soft_label)
    if mask is None:
        mask = torch.ones(mu_w.shape, dtype=torch.bool, device=mu_w.device)
    _same_shape(mu_w=mu_w, labels_w=labels_w, labels_l=labels_l, mask=mask)
    mask = mask.to(device=mu_w.device, dtype=torch.bool)
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"The anchored fraction of pairs must lie in (0, 1]; got {fraction}.")
    if not mask.any():
        anchor = torch.zeros((), dtype=pref.dtype, device=pref.device)
    else:
        per_pair = (anchor_nll(mu_w[mask], var_w[mask], labels_w[mask], thresholds)
                    + anchor_nll(mu_l[mask], var_l[mask], labels_l[mask], thresholds))
        anchor = per_pair.mean() if fraction is None else per_pair.sum() / (fraction * mask.numel())
    return pref + lam * anchor, pref, anchor


def quantile_reward(mu: torch.Tensor, sigma: torch.Tensor, q: torch.Tensor | float) -> torch.Tensor:
    """mu + Phi^-1(q) * sigma, elementwise: the q-quantile of N(mu, sigma^2).

    mu, sigma  (N,) mean and standard deviation (not variance)
    q          a float or (N,) per-sample quantiles, strictly inside (0, 1)
    """
    mu, sigma = upcast(mu), upcast(sigma)
    q = _like(q, mu)
    if not ((q > 0) & (q < 1)).all():
        raise ValueError("Quantiles must lie strictly inside (0, 1).")
    return mu + torch.special.ndtri(q) * sigma


def random_quantiles(n: int, generator: torch.Generator | None = None, low: float = 0.05,
                     high: float = 0.95) -> torch.Tensor:
    """(n,) float32 quantiles drawn from U[low, high) (the 'random' quantile reward)."""
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"Expected 0 < low <= high < 1; got low={low}, high={high}.")
    return low + (high - low) * torch.rand(n, generator=generator)


# --------------------------------------------------------------------------------------------------------------------
# CausalRM


def _check_noise_rates(rho_01: float, rho_10: float) -> tuple[float, float]:
    rho_01, rho_10 = float(rho_01), float(rho_10)
    for name, rho in (("rho_01", rho_01), ("rho_10", rho_10)):
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"The label-flip rate {name} must lie in [0, 1); got {rho}.")
    if rho_01 + rho_10 >= 1.0:
        raise ValueError(f"The noise-aware loss needs rho_01 + rho_10 < 1 (labels more informative than a coin); got "
                         f"rho_01 = {rho_01} and rho_10 = {rho_10}, sum {rho_01 + rho_10}.")
    return rho_01, rho_10


def noise_aware_bce(logits: torch.Tensor, noisy_labels: torch.Tensor, rho_01: float, rho_10: float) -> torch.Tensor:
    """(N,) per-row noise-aware surrogate l~(f, y~) of the binary cross-entropy (Natarajan et al.).

    logits        (N,) reward model outputs f (probability sigmoid(f) that the response is good)
    noisy_labels  (N,) observed labels y~ in {0, 1} (a placeholder 0 / 1 on unobserved rows)
    rho_01        P(y~ = 0 | y = 1);  rho_10 = P(y~ = 1 | y = 0); each in [0, 1), sum < 1
    With rho_01 = rho_10 = 0 it is the plain BCE with logits.
    """
    rho_01, rho_10 = _check_noise_rates(rho_01, rho_10)
    _same_shape(logits=logits, noisy_labels=noisy_labels)
    _check_binary("Noisy labels", noisy_labels)
    f = upcast(logits)
    y = noisy_labels.to(f.dtype)
    loss_1, loss_0 = F.softplus(-f), F.softplus(f)  # BCE with logits against 1 / against 0
    denom = 1.0 - rho_01 - rho_10
    tilde_1 = ((1.0 - rho_10) * loss_1 - rho_01 * loss_0) / denom
    tilde_0 = ((1.0 - rho_01) * loss_0 - rho_10 * loss_1) / denom
    return y * tilde_1 + (1 - y) * tilde_0


def _propensity_weights(per_row_loss: torch.Tensor, observed: torch.Tensor, propensity: torch.Tensor,
                        clip: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed as bool, 1 / clipped propensity), both (N,)."""
    low, high = float(clip[0]), float(clip[1])
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"The propensity clip needs 0 < low <= high <= 1; got ({low}, {high}).")
    _check_binary("observed", observed)
    p = upcast(propensity)
    if not ((p > 0) & (p <= 1)).all():
        raise ValueError(f"Propensities must be probabilities in (0, 1]; got values in [{p.min().item()}, "
                         f"{p.max().item()}]. Pass sigmoid of the propensity model's logits, not the logits.")
    return observed.to(torch.bool), 1.0 / p.clamp(low, high).to(upcast(per_row_loss).dtype)


def ips_loss(per_row_loss: torch.Tensor, observed: torch.Tensor, propensity: torch.Tensor,
             clip: tuple[float, float] = DEFAULT_PROPENSITY_CLIP) -> torch.Tensor:
    """Inverse propensity weighted loss mean_i o_i l_i / clip(p_i) over all N rows; a scalar.

    per_row_loss  (N,) l_i (e.g. `noise_aware_bce`); the value on unobserved rows is ignored
    observed      (N,) o_i in {0, 1} (or bool): whether the row got feedback
    propensity    (N,) p_i = P(o = 1 | x_i) in (0, 1], detached; clamped to clip
    """
    _same_shape(per_row_loss=per_row_loss, observed=observed, propensity=propensity)
    o, inv_p = _propensity_weights(per_row_loss, observed, propensity, clip)
    loss = upcast(per_row_loss)
    return torch.where(o, loss * inv_p, torch.zeros_like(loss)).mean()


def doubly_robust_loss(per_row_loss: torch.Tensor, imputed_loss: torch.Tensor, observed: torch.Tensor,
                       propensity: torch.Tensor, clip: tuple[float, float] = DEFAULT_PROPENSITY_CLIP) -> torch.Tensor:
    """Doubly robust loss mean_i [ e_i + o_i (l_i - e_i) / clip(p_i) ] over all N rows; a scalar.

    per_row_loss  (N,) l_i on the observed labels; the value on unobserved rows is ignored
    imputed_loss  (N,) e_i, the loss against the imputation model's label
    observed, propensity as in `ips_loss`
    """
    _same_shape(per_row_loss=per_row_loss, imputed_loss=imputed_loss, observed=observed, propensity=propensity)
    o, inv_p = _propensity_weights(per_row_loss, observed, propensity, clip)
    loss, imputed = upcast(per_row_loss), upcast(imputed_loss)
    correction = torch.where(o, (loss - imputed) * inv_p, torch.zeros_like(loss))
    return (imputed + correction).mean()


def estimate_noise_rates(noisy_logits, low_quantile: float = 0.03,
                         high_quantile: float = 0.97) -> tuple[float, float]:
    """(rho_01, rho_10) estimated from a model fitted to the noisy labels.

    noisy_logits  (N,) tensor, array or sequence of that model's logits for P(y~ = 1 | x) over the data
    rho_10 = sigmoid(low quantile of the logits), rho_01 = 1 - sigmoid(high quantile).
    """
    if not 0.0 <= low_quantile < high_quantile <= 1.0:
        raise ValueError(f"Expected 0 <= low_quantile < high_quantile <= 1; got {low_quantile}, {high_quantile}.")
    if isinstance(noisy_logits, torch.Tensor):
        noisy_logits = noisy_logits.detach().double().cpu().numpy()
    values = np.asarray(noisy_logits, dtype=np.float64).ravel()
    if values.size == 0 or np.isnan(values).any():
        raise ValueError("Expected a non-empty set of logits without NaN to estimate the noise rates from.")
    low, high = np.quantile(values, [low_quantile, high_quantile])
    rho_10 = torch.sigmoid(torch.tensor(low, dtype=torch.float64)).item()
    rho_01 = torch.sigmoid(torch.tensor(-high, dtype=torch.float64)).item()  # 1 - sigmoid(high)
    if rho_01 + rho_10 >= 1.0:
        raise ValueError(f"Estimated noise rates rho_01 = {rho_01:.4f} and rho_10 = {rho_10:.4f} sum to >= 1: the "
                         f"noisy-label model does not separate the classes. Give rho_01 and rho_10 in the config.")
    return rho_01, rho_10


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def pairwise_accuracy(mu_w: torch.Tensor, mu_l: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs with mu_w > mu_l strictly (ties count as wrong); a 0-d float tensor."""
    _same_shape(mu_w=mu_w, mu_l=mu_l)
    return (upcast(mu_w) > upcast(mu_l)).to(upcast(mu_w).dtype).mean()


def brier_score(prob: torch.Tensor, soft_label: torch.Tensor | Number) -> torch.Tensor:
    """Mean of (prob - s)^2 over pairs; a 0-d float tensor. prob (P,) e.g. `preference_probability`."""
    p = upcast(_vector("prob", prob))
    s = _like(soft_label, p)
    return ((p - s) ** 2).mean()


def soft_cross_entropy(prob: torch.Tensor, soft_label: torch.Tensor | Number) -> torch.Tensor:
    """Mean of -[ s log p + (1 - s) log(1 - p) ] over pairs, p clamped to [1e-7, 1 - 1e-7]; a 0-d float tensor."""
    p = upcast(_vector("prob", prob)).clamp(PROB_FLOOR, 1 - PROB_FLOOR)
    s = _like(soft_label, p)
    return -(s * torch.log(p) + (1 - s) * torch.log1p(-p)).mean()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative, ties
    counting half (the Mann-Whitney statistic, from average ranks). NaN when one class is absent.

    scores  (N,) any real scores;  labels (N,) in {0, 1}
    """
    _same_shape(scores=scores, labels=labels)
    _check_binary("labels", labels)
    s = upcast(scores).double().cpu().numpy()
    y = labels.cpu().numpy().astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    start = 0
    while start < len(s):  # tied scores share their average rank
        end = start
        while end + 1 < len(s) and sorted_s[end + 1] == sorted_s[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# --------------------------------------------------------------------------------------------------------------------
# CausalRM's auxiliary models: logistic regressions on frozen features


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                 l2: float = 1e-3, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, b) of a weighted, ridge-penalised logistic regression, fitted with L-BFGS (strong Wolfe line search, up
    to `max_iter` iterations: ample for a convex problem of a few dozen dimensions).

    features (N, H) float; targets (N,) in [0, 1] (soft targets allowed); weights (N,) >= 0 or None (all 1).
    Minimises sum_i w_i BCE(x_i . w + b, t_i) / sum_i w_i + l2 / 2 * |w|^2 in float64 on features standardised with
    the weighted mean and standard deviation; the returned (w, b) apply to the raw features (`logistic_logits`).
    Deterministic: same inputs, same result.
    """
    x = features.detach().double().cpu()
    t = targets.detach().double().cpu()
    if x.ndim != 2 or t.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"Expected features (N, H) and targets (N,) with N > 0; got {tuple(x.shape)} and "
                         f"{tuple(t.shape)}.")
    w_rows = torch.ones_like(t) if weights is None else weights.detach().double().cpu()
    if (w_rows < 0).any() or w_rows.sum() <= 0:
        raise ValueError("Sample weights must be >= 0 and not all 0.")
    w_rows = w_rows / w_rows.sum()
    mean = w_rows @ x  # weighted, so a weight of 2 is exactly a repeated row
    std = (w_rows @ (x - mean) ** 2).sqrt().clamp(min=1e-8)
    z = (x - mean) / std
    coef = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef, bias], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ coef + bias
        loss = (w_rows * F.binary_cross_entropy_with_logits(logits, t, reduction="none")).sum()
        loss = loss + 0.5 * l2 * coef.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    coef, bias = coef.detach() / std, bias.detach() - (coef.detach() / std) @ mean
    return coef, bias


def logistic_logits(features: torch.Tensor, coef: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N,) float64 logits of `fit_logistic`'s model for features (N, H)."""
    return features.detach().double().cpu() @ coef + bias


def imputed_clean_probability(noisy_probability: torch.Tensor, rho_01: float, rho_10: float) -> torch.Tensor:
    """eta(x) = (P(y~ = 1 | x) - rho_10) / (1 - rho_01 - rho_10), clipped to [0, 1]: the clean-label probability a
    noisy-label model implies, used as the doubly robust estimator's imputed label."""
    rho_01, rho_10 = _check_noise_rates(rho_01, rho_10)
    return ((upcast(noisy_probability) - rho_10) / (1.0 - rho_01 - rho_10)).clamp(0.0, 1.0)


def soft_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) BCE of sigmoid(f) against soft targets t in [0, 1]: t l(f, 1) + (1 - t) l(f, 0)."""
    f = upcast(logits)
    t = _like(target, f)
    return t * F.softplus(-f) + (1 - t) * F.softplus(f)


# --------------------------------------------------------------------------------------------------------------------
# Models and inputs

GAUSSIAN_LABELS = {0: "mu", 1: "variance_raw"}  # the two-output head of a Gaussian reward model, in config.json
CONFIG_KEY = "align_reward"  # config.json entry: objective, head, anchor thresholds, score standardisation, ...
def is_gaussian(config) -> bool:
    """Whether a sequence-classification config is align's Gaussian reward model (mean + raw variance head)."""
    return getattr(config, CONFIG_KEY, {}).get("head") == "gaussian"


def load_reward_model(path: str, objective: str, *, dtype: str = "auto", revision: str | None = None,
                      trust_remote_code: bool = False, attn_implementation: str | None = None):
    """A sequence-classification model to train: one output (bradley_terry, causal_rm) or two (gaussian_anchor: mu
    and the raw variance v, sigma^2 = softplus(v) + 1e-6), on top of `path`'s backbone (safetensors only). A causal
    LM checkpoint gets a fresh bias-free linear head on its last-token hidden state."""
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from align.models import attention_reported, resolve_dtype, resolve_model_path

    gaussian = objective == "gaussian_anchor"
    labels = GAUSSIAN_LABELS if gaussian else {0: "reward"}
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # The new head and the dropped LM head are expected, not worth a warning.
    with suppress_seqcls_warning(), attention_reported(attn_implementation, path):
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(path), num_labels=len(labels), id2label=labels,
            label2id={v: k for k, v in labels.items()}, dtype=resolve_dtype(dtype), revision=revision,
            trust_remote_code=trust_remote_code, use_safetensors=True, **extra)
    setattr(model.config, CONFIG_KEY, {"objective": objective, "head": "gaussian" if gaussian else "scalar"})
    return model


@contextlib.contextmanager
def _presented_as_scalar(model):
    """TRL's RewardTrainer refuses any head with more than one output; the Gaussian model's two outputs are the
    point, so the check sees one label while the trainer is built."""
    id2label = model.config.id2label
    model.config.id2label = {0: "reward"}
    try:
        yield
    finally:
        model.config.id2label = id2label


PAIR_FIELDS = {"soft_label": torch.float32, "anchor_chosen": torch.long, "anchor_rejected": torch.long,
               "anchor_mask": torch.bool, "margin": torch.float32}
FEEDBACK_FIELDS = {"observed": torch.long, "label": torch.long, "propensity": torch.float32,
                   "imputed": torch.float32, "true_label": torch.long}


@dataclasses.dataclass
class RewardCollator:
    """Pads token ids on the right and stacks the per-row fields present in the rows.

    Pairs (rows with chosen_ids / rejected_ids): input_ids is (2P, T), chosen first, then rejected (TRL's layout).
    Feedback rows (input_ids): (N, T).
    """

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen_ids" in rows[0]:
            sequences, fields = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows], PAIR_FIELDS
        else:
            sequences, fields = [r["input_ids"] for r in rows], FEEDBACK_FIELDS
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        batch.update({key: torch.tensor([r[key] for r in rows], dtype=dtype)
                      for key, dtype in fields.items() if key in rows[0]})
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Trainers


class AlignRewardTrainer(CompleteCheckpoints, RewardTrainer):
    """Pairwise reward models on TRL's RewardTrainer: Bradley-Terry (TRL's loss) and the anchor-guided Gaussian model.

    Only the loss changes (`compute_loss`); the inputs arrive tokenized (`reward_input_ids`) with per-pair soft
    labels and, for anchors, ordinal labels and the fixed anchor mask. Evaluation gathers every held-out pair and
    logs full-set metrics: accuracy (mu_w > mu_l), Brier score and cross-entropy of P(y_w > y_l) against the soft
    labels, and the mean predicted sigma.
    """

    def __init__(self, *args, objective: str = "bradley_terry", thresholds: tuple[float, ...] = (),
                 lam: float = DEFAULT_LAMBDA, anchor_fraction: float = 1.0, **kwargs):
        self.objective, self.thresholds, self.lam, self.anchor_fraction = objective, tuple(thresholds), lam, \
            anchor_fraction
        model = kwargs["model"]
        with _presented_as_scalar(model) if objective == "gaussian_anchor" else contextlib.nullcontext():
            super().__init__(*args, **kwargs)
        self._eval_buffer: dict[str, list[torch.Tensor]] = {}

    def _forward(self, model, inputs) -> torch.Tensor:
        """(B, outputs) head outputs in float32."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        return outputs.logits.float()

    def _count_tokens(self, inputs, mode: str) -> None:
        if mode == "train":
            self._total_train_tokens += self.accelerator.gather_for_metrics(
                inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _log_mean(self, mode: str, name: str, value: torch.Tensor) -> None:
        self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach().reshape(1)).mean().item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        heads = self._forward(model, inputs)
        soft = inputs["soft_label"]
        if self.objective == "gaussian_anchor":
            mu, var = heads[:, 0], variance_from_raw(heads[:, 1])
            (mu_w, mu_l), (var_w, var_l) = mu.chunk(2), var.chunk(2)
            if self.thresholds:
                loss, pref, anchor = gaussian_anchor_loss(
                    mu_w, var_w, mu_l, var_l, soft, inputs["anchor_chosen"], inputs["anchor_rejected"],
                    self.thresholds, self.lam, inputs["anchor_mask"],
                    fraction=self.anchor_fraction if mode == "train" else 1.0)  # every held-out pair is anchored
                if mode == "train":
                    self._log_mean(mode, "loss_pref", pref)
                    self._log_mean(mode, "loss_anchor", anchor)
            else:
                loss = gaussian_preference_loss(mu_w, var_w, mu_l, var_l, soft)
            prob = preference_probability(mu_w, var_w, mu_l, var_l)
            if mode == "train":
                self._log_mean(mode, "sigma_mean", var.detach().sqrt().mean())
        else:
            mu_w, mu_l = heads[:, 0].chunk(2)
            var_w = var_l = None
            # TRL's loss (with the data's margins, if any); soft labels only orient the pair
            loss = bradley_terry_loss(mu_w, mu_l, inputs.get("margin"))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * ((mu_w + mu_l) ** 2).mean()
            prob = torch.sigmoid(mu_w - mu_l)
        self._count_tokens(inputs, mode)
        with torch.no_grad():
            if mode == "train":  # held-out metrics are computed over the whole set at the end (`log`)
                self._log_mean(mode, "accuracy", pairwise_accuracy(mu_w, mu_l))
                self._log_mean(mode, "margin", (mu_w - mu_l).mean())
                self._log_mean(mode, "mean_reward", heads[:, 0].mean())
            else:
                pairs = {"mu_w": mu_w, "mu_l": mu_l, "prob": prob, "soft_label": soft.float()}
                if var_w is not None:
                    pairs.update(sigma_w=var_w.sqrt(), sigma_l=var_l.sqrt())
                for key, value in pairs.items():
                    self._eval_buffer.setdefault(key, []).append(self.accelerator.gather_for_metrics(value.detach()))
        return (loss, heads) if return_outputs else loss

    def _full_set_metrics(self, buffer: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = {"accuracy": pairwise_accuracy(buffer["mu_w"], buffer["mu_l"]).item(),
                   "brier": brier_score(buffer["prob"], buffer["soft_label"]).item(),
                   "cross_entropy": soft_cross_entropy(buffer["prob"], buffer["soft_label"]).item()}
        if "sigma_w" in buffer:
            metrics["sigma_mean"] = torch.cat([buffer["sigma_w"], buffer["sigma_l"]]).mean().item()
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._eval_buffer and not self.model.training:
            buffer = {key: torch.cat(values).float().cpu() for key, values in self._eval_buffer.items()}
            self._eval_buffer = {}
            logs.update({f"eval_{key}": value for key, value in self._full_set_metrics(buffer).items()})
        super().log(logs, start_time)


class AlignCausalRMTrainer(AlignRewardTrainer):
    """CausalRM on TRL's RewardTrainer: a scalar reward model trained on observational feedback rows.

    Rows arrive tokenized with `observed`, `label` (noisy, where observed), the propensity and (doubly robust) the
    imputed clean-label probability, all computed before training (`causal_rm_inputs`). The loss is the
    noise-aware surrogate weighted by inverse propensity (or the doubly robust form); with propensity weighting off
    the rows are the observed ones only and the loss is their mean. Held-out metrics: accuracy and AUC of
    sigmoid(f) against `true_label` (an unbiased held-out set) or the observed labels. The noise rates and the
    propensity range in use (`estimates`) are logged with every training step as `causal/<name>`, so they sit next
    to the run's curves in the tracker.
    """

    def __init__(self, *args, rho: tuple[float, float] = (0.0, 0.0), propensity_weighting: bool = True,
                 doubly_robust: bool = False, clip: tuple[float, float] = DEFAULT_PROPENSITY_CLIP,
                 estimates: dict[str, float] | None = None, **kwargs):
        self.rho, self.propensity_weighting, self.doubly_robust, self.clip = rho, propensity_weighting, \
            doubly_robust, tuple(clip)
        self.estimates = dict(estimates or {})
        super().__init__(*args, objective="causal_rm", **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized and length-filtered by the builder

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        logits = self._forward(model, inputs)[:, 0]
        observed = inputs["observed"]
        if mode == "eval":  # the clean loss against the best labels the held-out rows have
            target = inputs.get("true_label", inputs["label"])
            rows = torch.ones_like(observed, dtype=torch.bool) if "true_label" in inputs else observed.bool()
            loss = (soft_bce(logits, target.float()) * rows).sum() / rows.sum().clamp(min=1)
            for key, value in (("logits", logits), ("target", target), ("rows", rows)):
                self._eval_buffer.setdefault(key, []).append(self.accelerator.gather_for_metrics(value.detach()))
        else:
            per_row = noise_aware_bce(logits, inputs["label"], *self.rho)
            if not self.propensity_weighting:
                loss = per_row.mean()  # every row is observed
            elif self.doubly_robust:
                loss = doubly_robust_loss(per_row, soft_bce(logits, inputs["imputed"]), observed,
                                          inputs["propensity"], self.clip)
            else:
                loss = ips_loss(per_row, observed, inputs["propensity"], self.clip)
            self._log_mean(mode, "observed_frac", observed.float().mean())
            for name, value in self.estimates.items():
                self._metrics[mode][f"causal/{name}"] = [value]
            self._log_mean(mode, "mean_reward", logits.detach().mean())
        self._count_tokens(inputs, mode)
        return (loss, logits) if return_outputs else loss

    def _full_set_metrics(self, buffer: dict[str, torch.Tensor]) -> dict[str, float]:
        rows = buffer["rows"].bool()
        logits, target = buffer["logits"][rows], buffer["target"][rows].long()
        return {"accuracy": ((logits > 0).long() == target).float().mean().item(), "auc": roc_auc(logits, target)}


# --------------------------------------------------------------------------------------------------------------------
# Building a run: tokenized rows, anchors, CausalRM's propensities and noise rates, the trainer


def tokenize_rows(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """(tokenized rows, number dropped for exceeding max_length). Pairs get chosen_ids / rejected_ids, feedback rows
    input_ids; the per-row fields of PAIR_FIELDS / FEEDBACK_FIELDS are kept, everything else is dropped."""
    out, dropped = [], 0
    for row in rows:
        if "chosen" in row:
            item = {"chosen_ids": reward_input_ids(tokenizer, row["prompt"], row["chosen"]),
                    "rejected_ids": reward_input_ids(tokenizer, row["prompt"], row["rejected"])}
            fields = PAIR_FIELDS
        else:
            item, fields = {"input_ids": reward_input_ids(tokenizer, row["prompt"], row["response"])}, FEEDBACK_FIELDS
        if max(len(ids) for ids in item.values()) > max_length:
            dropped += 1
            continue
        item.update({key: row[key] for key in fields if row.get(key) is not None})
        out.append(item)
    return out, dropped


def attach_anchors(train: list[dict], held_out: list[dict], count: int, percentiles: Sequence[float],
                   fraction: float, seed: int) -> dict:
    """Give every pair ordinal anchor labels and the training pairs a fixed anchor mask; return what the model must
    remember (thresholds, score standardisation), to be saved in its config.

    Rows carry either external scores (score_chosen / score_rejected: standardised with the training set's mean and
    standard deviation over all responses, thresholds at `percentiles` of the standardised scores) or given ordinal
    labels (anchor_chosen / anchor_rejected in 0..count: thresholds tau_k = Phi^-1(share of training responses with
    label < k), i.e. where the classes would split a standard normal utility). Either way thresholds sit on a scale mu
    reaches from its initialisation near 0 (see the module docstring on the 1e-7 floor).
    """
    if "score_chosen" in train[0]:
        scores = np.array([[r["score_chosen"], r["score_rejected"]] for r in train], dtype=np.float64).ravel()
        mean, std = float(scores.mean()), float(scores.std())
        if not std > 0:
            raise ValueError("The anchor score column is constant over the training set; anchors need a score that "
                             "varies.")
        if len(percentiles) != count:
            raise ValueError(f"{count} anchor(s) need {count} percentile(s); got {list(percentiles)}.")
        thresholds = anchor_thresholds((scores - mean) / std, list(percentiles))
        for row in (*train, *held_out):
            standard = torch.tensor([row["score_chosen"], row["score_rejected"]], dtype=torch.float64)
            row["anchor_chosen"], row["anchor_rejected"] = ordinal_labels((standard - mean) / std, thresholds).tolist()
        info = {"anchor_thresholds": list(thresholds), "score_mean": mean, "score_std": std}
    else:
        given = {split: np.array([[r["anchor_chosen"], r["anchor_rejected"]] for r in rows]).ravel()
                 for split, rows in (("training", train), ("held-out", held_out))}
        for split, values in given.items():
            if values.size and (values.min() < 0 or values.max() > count):
                raise ValueError(f"Given anchor labels must lie in 0..{count} for {count} anchor(s); the {split} "
                                 f"data has values in {values.min()}..{values.max()}. Set algorithm.anchors.count.")
        labels = given["training"]
        shares = [float((labels < k).mean()) for k in range(1, count + 1)]
        if not all(0 < s < 1 for s in shares) or len(set(shares)) < len(shares):
            raise ValueError(f"Every anchor class must occur in the training data (cumulative shares {shares}).")
        thresholds = tuple(float(torch.special.ndtri(torch.tensor(s, dtype=torch.float64))) for s in shares)
        info = {"anchor_thresholds": list(thresholds)}
    mask = anchor_mask(len(train), fraction, torch.Generator().manual_seed(seed))
    for row, carries in zip(train, mask.tolist()):
        row["anchor_mask"] = carries
    for row in held_out:
        row["anchor_mask"] = True
    return info


@torch.no_grad()
def last_token_features(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32) -> torch.Tensor:
    """(N, H) float32 CPU: the backbone's final hidden state at the position the reward head reads (the rightmost
    token that is not the pad token: transformers' rule for sequence classification).

    Moves the model to this process's device (where the trainer would put it anyway). Each process computes a
    contiguous shard and the shards are all-gathered, so every process ends with the same matrix. The model must not
    be sharded yet (it is not, before the trainer is built)."""
    from accelerate import PartialState
    from accelerate.utils import gather

    state = PartialState()
    shard = math.ceil(len(sequences) / state.num_processes)
    mine = sequences[state.process_index * shard:(state.process_index + 1) * shard]
    model.to(state.device)
    backbone = getattr(model, model.base_model_prefix)
    was_training = model.training
    model.eval()
    out = torch.zeros((shard, model.config.get_text_config().hidden_size), dtype=torch.float32, device=state.device)
    order = sorted(range(len(mine)), key=lambda i: len(mine[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        index = torch.tensor(order[start:start + batch_size], device=state.device)
        ids, mask = (t.to(state.device) for t in pad_right([mine[i] for i in index.tolist()], pad_token_id))
        states = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        positions = torch.arange(ids.shape[1], device=ids.device)
        read = (positions * (ids != pad_token_id)).argmax(-1)
        out[index] = states[torch.arange(len(index), device=ids.device), read].float()
    model.train(was_training)
    features = gather(out) if state.num_processes > 1 else out
    return features[:len(sequences)].cpu()


def principal_components(features: torch.Tensor, k: int = 64, seed: int = 0) -> torch.Tensor:
    """(N, min(k, H, N)) float64: the centred features projected on their top principal directions (randomised,
    seeded, so every process gets the same projection). A linear probe with thousands of dimensions on a few
    thousand rows overfits its own training rows; a few dozen components keep what varies most."""
    x = features.double()
    x = x - x.mean(0)
    k = min(k, *x.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x, q=k, center=False)
    return x @ v[:, :k]


def cross_fitted_logits(features: torch.Tensor, targets: torch.Tensor, fit_rows: torch.Tensor,
                        weights: torch.Tensor | None = None, l2: float = 1e-2, folds: int = 5,
                        seed: int = 0) -> torch.Tensor:
    """(N,) float64 out-of-fold logits of `fit_logistic`: rows are split into `folds` random folds; each fold's
    logits come from a model fitted on the `fit_rows` (bool (N,)) of the other folds, so no row is scored by a model
    that saw it (in-sample logits of a flexible probe are overconfident: they push the noise-rate quantiles to 0
    and the propensities of observed rows towards 1)."""
    n = features.shape[0]
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    weights = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    logits = torch.empty(n, dtype=torch.float64)
    for k in range(folds):
        train = fit_rows & (fold != k)
        if not train.any():
            raise ValueError("A cross-fitting fold has no rows to fit on; the data has too few observed rows.")
        coef, bias = fit_logistic(features[train], targets[train], weights[train], l2=l2)
        logits[fold == k] = logistic_logits(features[fold == k], coef, bias)
    return logits


def causal_rm_inputs(model, rows: list[dict], pad_token_id: int, *, noise_correction: bool,
                     rho: tuple[float | None, float | None], noise_quantile: float, propensity_weighting: bool,
                     doubly_robust: bool, clip: Sequence[float], l2: float, seed: int = 0) -> dict:
    """Fill each row's `propensity` (unless the data gave one) and, for doubly robust, `imputed`; return the noise
    rates and what to record: {"rho_01", "rho_10", "rho_estimated", "propensity_min/max/mean"}.

    The auxiliary models are logistic regressions on the top principal components of the frozen initial backbone's
    features (`last_token_features`, `principal_components`), cross-fitted (`cross_fitted_logits`): the propensity
    model predicts `observed` from every row; the noisy-label model predicts the observed label from the observed
    rows, weighted by 1 / clipped propensity when propensity weighting is on (so it estimates P(y~ = 1 | x) over all
    rows, not just those users chose to rate). Its logits give the noise rates (`estimate_noise_rates`) and, through
    `imputed_clean_probability`, the doubly robust imputation.
    """
    observed = torch.tensor([r["observed"] for r in rows], dtype=torch.float64)
    need_propensity = propensity_weighting and "propensity" not in rows[0]
    need_noise_model = (noise_correction and None in rho) or doubly_robust
    features = None
    if need_propensity or need_noise_model:
        features = principal_components(last_token_features(model, [r["input_ids"] for r in rows], pad_token_id),
                                        seed=seed)
    if need_propensity:
        logits = cross_fitted_logits(features, observed, torch.ones_like(observed, dtype=torch.bool), l2=l2,
                                     seed=seed)
        for row, p in zip(rows, torch.sigmoid(logits).tolist()):
            row["propensity"] = min(max(p, 1e-6), 1.0)
    propensity = torch.tensor([r.get("propensity", 1.0) for r in rows], dtype=torch.float64)
    info = {}
    if propensity_weighting:
        info.update(propensity_min=propensity.min().item(), propensity_max=propensity.max().item(),
                    propensity_mean=propensity.mean().item())
    rho_01, rho_10 = rho if noise_correction and None not in rho else (0.0, 0.0)
    if need_noise_model:
        weights = 1.0 / propensity.clamp(*clip) if propensity_weighting else torch.ones_like(propensity)
        labels = torch.tensor([r["label"] for r in rows], dtype=torch.float64)
        noisy_logits = cross_fitted_logits(features, labels, observed.bool(), weights, l2=l2, seed=seed)
        if noise_correction and None in rho:
            rho_01, rho_10 = estimate_noise_rates(noisy_logits, 1.0 - noise_quantile, noise_quantile)
        if doubly_robust:
            imputed = imputed_clean_probability(torch.sigmoid(noisy_logits), rho_01, rho_10)
            for row, value in zip(rows, imputed.tolist()):
                row["imputed"] = value
    info.update(rho_01=rho_01, rho_10=rho_10, rho_estimated=noise_correction and None in rho)
    return info


@contextlib.contextmanager
def _as_data_error():
    """Anchors or noise rates the data cannot support (a constant score, classes that never occur, noise-rate
    estimates summing to >= 1) are data problems: report them as such, in one line."""
    from align.data import DataError

    try:
        yield
    except ValueError as err:
        raise DataError(str(err)) from err


class AlignRewardConfig(RedactedArguments, RewardConfig):
    """TRL's RewardConfig, logged and pickled without credentials."""


def build_reward_model_trainer(model, tokenizer, train_rows: list[dict], held_out_rows: list[dict] | None, algo,
                               common_args: dict, peft_config=None) -> AlignRewardTrainer:
    """The trainer for `algo` (RewardModelAlgorithmConfig) on canonical rows (align.data.preferences).

    Tokenizes, attaches anchors (gaussian_anchor) or fits the propensity / noise models (causal_rm), records in
    `model.config.align_reward` what scoring needs later (objective, head, thresholds, noise rates), and builds
    AlignRewardTrainer / AlignCausalRMTrainer with TRL's RewardConfig.
    """
    from datasets import Dataset

    data, objective = algo.data, algo.objective
    # TRL sets this inside its constructor; CausalRM's feature pass runs before, and Llama / Qwen configs have none.
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    record = getattr(model.config, CONFIG_KEY)
    kwargs = {} if objective == "causal_rm" else {"objective": objective}
    if objective == "gaussian_anchor" and algo.anchors.count:  # on the raw rows: thresholds come from their scores
        train_rows, held_out_rows = [dict(r) for r in train_rows], [dict(r) for r in held_out_rows or []]
        with _as_data_error():
            record.update(attach_anchors(train_rows, held_out_rows, algo.anchors.count, algo.anchors.percentiles,
                                         algo.anchors.fraction, common_args["seed"]))
        kwargs.update(thresholds=record["anchor_thresholds"], lam=algo.anchors.lam,
                      anchor_fraction=algo.anchors.fraction)
    train, dropped = tokenize_rows(train_rows, tokenizer, data.max_length)
    held_out, dropped_eval = tokenize_rows(held_out_rows or [], tokenizer, data.max_length)
    if dropped or dropped_eval:
        log.warning("dropped %d training and %d held-out rows longer than algorithm.data.max_length %d tokens",
                    dropped, dropped_eval, data.max_length)
    if not train:
        raise ValueError(f"No training row fits algorithm.data.max_length {data.max_length}; raise it.")
    if objective == "causal_rm":
        c = algo.causal
        with _as_data_error():
            record.update(causal_rm_inputs(model, train, tokenizer.pad_token_id, noise_correction=c.noise_correction,
                                           rho=(c.rho_01, c.rho_10), noise_quantile=c.noise_quantile,
                                           propensity_weighting=c.propensity_weighting,
                                           doubly_robust=c.doubly_robust, clip=c.propensity_clip, l2=c.aux_l2,
                                           seed=common_args["seed"]))
        if not c.propensity_weighting:  # the naive estimators see only the rows that got feedback
            train = [row for row in train if row["observed"]]
        kwargs.update(rho=(record["rho_01"], record["rho_10"]), propensity_weighting=c.propensity_weighting,
                      doubly_robust=c.doubly_robust, clip=tuple(c.propensity_clip),
                      estimates={k: v for k, v in record.items() if k.startswith(("rho_0", "rho_1", "propensity"))})
    log.info("reward model: %s on %d training rows%s; %s", objective, len(train),
             f", {len(held_out)} held out" if held_out else "", {k: v for k, v in record.items()})
    # Held-out metrics before training come from eval_on_start: inside train(), after DeepSpeed has wrapped the
    # model (an evaluate() before train() leaves the DeepSpeed engine unset and the first backward fails).
    eval_args = {"eval_on_start": True} if held_out else {}
    if algo.eval_steps and held_out:
        eval_args.update(eval_strategy="steps", eval_steps=algo.eval_steps)
    # prediction_loss_only: held-out metrics come from compute_loss's full-set buffer, not from predictions.
    args = AlignRewardConfig(**{**common_args, "max_length": None, "disable_dropout": True,
                                "prediction_loss_only": True,
                                "center_rewards_coefficient": algo.center_rewards_coefficient,
                                "per_device_eval_batch_size": common_args["per_device_train_batch_size"],
                                **eval_args, **algo.trl})
    trainer_class = AlignCausalRMTrainer if objective == "causal_rm" else AlignRewardTrainer
    return trainer_class(model=model, args=args, data_collator=RewardCollator(tokenizer.pad_token_id),
                         train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held_out) if held_out else None,
                         processing_class=tokenizer, peft_config=peft_config, **kwargs)
