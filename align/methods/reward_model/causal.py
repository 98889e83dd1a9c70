"""CausalRM's auxiliary models: logistic regressions on the frozen initial model's features, fitted before training.

"CausalRM: Causal-Theoretic Reward Modeling for RLHF from Observational User Feedbacks" (arXiv 2603.18736); the
losses these models feed, and why, are in `align.methods.reward_model.math`. `causal_rm_inputs` runs them all: the
propensity model and the noisy-label model, whose logits give the flip rates (`estimate_noise_rates`) and the doubly
robust estimator's imputed labels. Everything is deterministic given the seed, and every process gets the same result.

Decisions: `estimate_noise_rates` takes numpy quantiles (linear) of the logits in float64 and returns Python floats;
estimates that sum to >= 1 (the noisy-label model does not separate the classes) are refused with the fix named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from align.methods.reward_model.math import imputed_clean_probability
from align.tokens import pad_right


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


@torch.no_grad()
def last_token_features(model, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32) -> torch.Tensor:
    """(N, H) float32 on the model's device, row i for sequences[i]: the backbone's final hidden state at the position
    the reward head reads (the rightmost token that is not the pad token: transformers' rule for sequence
    classification). Runs in eval mode, in batches of similar lengths, and leaves the model's mode as it was."""
    device = next(model.parameters()).device
    backbone = getattr(model, model.base_model_prefix)
    was_training = model.training
    model.eval()
    out = torch.zeros((len(sequences), model.config.get_text_config().hidden_size), dtype=torch.float32,
                      device=device)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        index = torch.tensor(order[start:start + batch_size], device=device)
        ids, mask = (t.to(device) for t in pad_right([sequences[i] for i in index.tolist()], pad_token_id))
        states = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        positions = torch.arange(ids.shape[1], device=ids.device)
        read = (positions * (ids != pad_token_id)).argmax(-1)
        out[index] = states[torch.arange(len(index), device=ids.device), read].float()
    model.train(was_training)
    return out


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


def causal_rm_inputs(features: Callable[[], torch.Tensor], rows: list[dict], *, noise_correction: bool,
                     rho: tuple[float | None, float | None], noise_quantile: float, propensity_weighting: bool,
                     doubly_robust: bool, clip: Sequence[float], l2: float, seed: int = 0) -> dict:
    """Fill each row's `propensity` (unless the data gave one) and, for doubly robust, `imputed`; return the noise
    rates and what to record: {"rho_01", "rho_10", "rho_estimated", "propensity_min/max/mean"}.

    features  () -> (N, H) frozen features of the rows (`last_token_features` of the initial model, the same on
              every process), called only when a model must be fitted: it costs a forward pass over every row.
    The auxiliary models are logistic regressions on the top principal components of those features
    (`principal_components`), cross-fitted (`cross_fitted_logits`): the propensity model predicts `observed` from
    every row; the noisy-label model predicts the observed label from the observed rows, weighted by 1 / clipped
    propensity when propensity weighting is on (so it estimates P(y~ = 1 | x) over all rows, not just those users
    chose to rate). Its logits give the noise rates (`estimate_noise_rates`) and, through
    `imputed_clean_probability`, the doubly robust imputation.
    """
    observed = torch.tensor([r["observed"] for r in rows], dtype=torch.float64)
    need_propensity = propensity_weighting and "propensity" not in rows[0]
    need_noise_model = (noise_correction and None in rho) or doubly_robust
    if need_propensity or need_noise_model:
        components = principal_components(features(), seed=seed)
    if need_propensity:
        logits = cross_fitted_logits(components, observed, torch.ones_like(observed, dtype=torch.bool), l2=l2,
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
        noisy_logits = cross_fitted_logits(components, labels, observed.bool(), weights, l2=l2, seed=seed)
        if noise_correction and None in rho:
            rho_01, rho_10 = estimate_noise_rates(noisy_logits, 1.0 - noise_quantile, noise_quantile)
        if doubly_robust:
            imputed = imputed_clean_probability(torch.sigmoid(noisy_logits), rho_01, rho_10)
            for row, value in zip(rows, imputed.tolist()):
                row["imputed"] = value
    info.update(rho_01=rho_01, rho_10=rho_10, rho_estimated=noise_correction and None in rho)
    return info
