"""Reward models' pure math: Bradley-Terry, the anchor-guided variance-aware (Gaussian) reward model, and CausalRM.

The methods as implemented are specified in specs/reward_models.md. This module holds only the losses, the label
and threshold helpers and the metrics; it imports torch, numpy and align.numerics, no model, data or trainer code.
Elsewhere: the Gaussian head's variance and quantile reward (shared with scoring) in `align.rewards.gaussian`,
CausalRM's auxiliary models and noise-rate estimate in `causal`, the trainers in `trainer`.

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
for a fixed quantile q or q ~ U(0.05, 0.95) drawn per sample (`align.rewards.gaussian`, shared with scoring).

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
quantile) (`causal.estimate_noise_rates`).

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
- Noise rates are Python floats (config or estimate), checked: each in [0, 1), sum < 1. l~ is unbiased but not
  non-negative (with rho_01 > 0, l~(f, 1) < 0 for a confident f >> 0: the -rho_01 l(f, 0) term wins), and no
  non-negativity correction is applied, so a batch's loss may be negative.
- Noisy labels must be 0 / 1 on every row; rows with o = 0 carry a placeholder (any 0 / 1). IPS and doubly robust
  select the observed rows with torch.where, so an unobserved row's l~ contributes exactly 0 whatever its value.
- Propensities must lie in (0, 1] before clipping (0, negative or > 1 means logits or an unnormalised score were
  passed: refused), then are clamped to `clip` = (0.1, 1.0) by default. The functions do not detach anything: the
  caller passes detached propensities (the propensity model is trained separately); e_i keeps its gradient into the
  reward model, as in the doubly robust estimator.
- Metrics: pairwise accuracy counts ties as wrong (mu_w > mu_l strictly); the cross-entropy clamps the probability
  into [1e-7, 1 - 1e-7].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from align.numerics import upcast

Z_CLAMP = 6.0
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


