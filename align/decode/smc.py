"""The math of reward-guided Sequential Monte Carlo decoding: weights, effective sample size, resampling,
Metropolis-Hastings rejuvenation and the final selection. Pure torch; no model, tokenizer or reward source here.

Paper: Markovic-Voronov et al., "Sampling for Quality: Training-Free Reward-Guided LLM Decoding via Sequential
Monte Carlo", arXiv 2604.16453 (the method spec is docs/decode.md; the related work it leans on: MH power sampling,
Karan & Du 2510.14901; rollout power sampling, Ji et al. 2601.21590).

Target. x a prompt, y = y_1..y_n a completion (ends at a stop token or at max_new_tokens), p the LM at temperature 1,
R(x, y) the final reward, lambda >= 0, alpha > 0:

    pi(y | x)  ∝  p(y | x)^alpha * exp(lambda R(x, y)).

Boundaries t_1 < t_2 < ... every B generated tokens (and at the stop token); twist Psi_k = Psi(y_{1:t_k}) > 0,
Psi_0 = 1; intermediate targets gamma_k = prod_{s <= t_k} p(y_s | .)^alpha * Psi_k. Particles are proposed from
q = p at temperature tau, and a block's log-weight increment is

    sum_block [alpha log p(y_s) - log q(y_s)] + log Psi_new - log Psi_old,

where with q = p_tau:  alpha log p - log q = (alpha - 1/tau) log p(y_s) + log Z_{1/tau}(y_<s),
Z_beta(y_<s) = sum_v p(v | y_<s)^beta.

Decisions the paper leaves open (the spec's [D]s), as implemented here and in `align.decode.particles`:
- Potentials telescope: prefix rewards only shape the path and cancel in pi. A potential is any callable
  log Psi(x, tokens, finished); exp(lambda r) by default, and at the stop token Psi := exp(lambda R).
- Rewards enter as given, or calibrated (`--calibrate K`): mapped to (0, 1) by sigmoid((r - mu) / sigma), mu and
  sigma the mean and standard deviation of the reward over K samples of the policy at the proposal temperature,
  fixed before decoding starts (`align.decode.methods.calibration`). Never normalised over one prompt's particles (a
  potential depends on one particle only).
- Lookahead twist: V_hat = mean over M rollouts from q to completion of exp(lambda R(y^m)) prod_{s>t} p^alpha / q,
  in log space; V_hat is stored per particle and carried through resampling, and the next block's denominator reuses
  it (re-estimating would break the telescoping). Rollouts do not join the final pool.
- Hybrid: the twist (prefix reward, rollouts, none) and the final reward R are configured separately; R fixes pi,
  the twist changes only efficiency.
- A particle that reached its stop token (or max_new_tokens: flagged truncated and scored as it is) is frozen: no
  tokens, increments 0; it stays in the pool and may be copied or dropped by resampling. Stop when all are frozen.
- ESS = (sum w)^2 / sum w^2, computed as exp(2 LSE(logW) - LSE(2 logW)). Resample (systematic by default,
  multinomial as an option) when ESS < kappa N; then logZ_hat += LSE(logW) - log N and logW = 0. Never resample
  after the last step.
- MH rejuvenation after a resample, S steps on duplicated unfinished particles (tau_R = inf: every duplicate moves):
  a cut c uniform on 1..n, y_<c kept, exactly n - c + 1 tokens regenerated from q; a proposal that draws a stop token
  is rejected, so the kernel stays on unfinished states and n' = n. Prefix variant only (lookahead's V_hat(y') would
  need new rollouts). Optional final sweep (`final_moves`, any variant, off by default): every particle of the final
  pool, weights kept, moves towards pi itself, its suffix regenerated until a stop token or max_new_tokens (n' may
  differ from n: the log(n / n') term), one reward call per proposal.
- Selection: sample (default: merge identical sequences, summing their weights, and draw one in proportion),
  argmax_weight (the merged sequence of largest weight), argmax_reward (best final R), vote (group by extracted
  answer, sum the weights, take the largest group; equal weights make it self-consistency).
- Defaults: N 8, B 32, tau 1, alpha 1 (power sampling: alpha 4, tau 0.25), lambda 4, kappa 0.5, systematic,
  prefix-only, MH S 1 on duplicates, M 2 rollouts, selection sample; one torch.Generator seeds sampling,
  resampling and MH.

Shapes: N particles of one prompt; V the vocabulary. Weights are always handled as log-weights.
"""

from __future__ import annotations

import math

import torch

SELECTIONS = ("sample", "argmax_weight", "argmax_reward", "vote")
RESAMPLERS = ("systematic", "multinomial")


def log_partition(logp: torch.Tensor, power: float) -> torch.Tensor:
    """log Z_power = log sum_v p(v)^power over the last axis of `logp` (..., V) (log-probabilities); shape (...)."""
    return torch.logsumexp(power * logp, dim=-1)


def temperature_increment(logp: torch.Tensor, token_logp: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """alpha log p(y) - log q(y) for q = p at temperature tau, as (alpha - 1/tau) log p(y) + log Z_{1/tau}.

    logp: (..., V) the step's log-probabilities at temperature 1; token_logp: (...) log p of the drawn token.
    With tau = 1/alpha the result is log Z_alpha whatever token was drawn.
    """
    return (alpha - 1.0 / tau) * token_logp + log_partition(logp, 1.0 / tau)


def block_increment(logp: torch.Tensor, logq: torch.Tensor, alpha: float) -> torch.Tensor:
    """sum_s [alpha log p(y_s) - log q(y_s)] over the last axis: logp, logq (..., T) per drawn token; shape (...)."""
    return (alpha * logp - logq).sum(dim=-1)


def ess(logw: torch.Tensor) -> torch.Tensor:
    """Effective sample size (sum w)^2 / sum w^2 of log-weights (..., N), in log form: exp(2 LSE - LSE(2 logw)).

    N for equal weights, 1 for one non-zero weight, invariant to a common scale (a shift of every log-weight).
    """
    return torch.exp(2 * torch.logsumexp(logw, dim=-1) - torch.logsumexp(2 * logw, dim=-1))


def normalized(logw: torch.Tensor) -> torch.Tensor:
    """The normalised weights W_i = w_i / sum_j w_j of log-weights (..., N)."""
    return torch.softmax(logw, dim=-1)


def log_mean_weight(logw: torch.Tensor) -> torch.Tensor:
    """log (1/N) sum_i w_i of log-weights (..., N): what a resampling step adds to log Z_hat."""
    return torch.logsumexp(logw, dim=-1) - math.log(logw.shape[-1])


def systematic_resample(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) int64 ancestors from log-weights (N,): one uniform u, points (u + i) / N on the weights' CDF.

    Particle i is copied floor(N W_i) or ceil(N W_i) times, E[count_i] = N W_i.
    """
    n = logw.shape[-1]
    cdf = torch.cumsum(normalized(logw.double()), dim=-1)
    cdf[-1] = 1.0  # rounding must not leave the last point beyond the CDF
    points = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, points, right=True).clamp(max=n - 1)


def multinomial_resample(logw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) int64 ancestors drawn independently in proportion to the weights of log-weights (N,)."""
    return torch.multinomial(normalized(logw.double()), logw.shape[-1], replacement=True, generator=generator)


def resample(logw: torch.Tensor, scheme: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) ancestors by `scheme` ('systematic' or 'multinomial'), in ascending order for systematic."""
    if scheme == "systematic":
        return systematic_resample(logw, generator)
    if scheme == "multinomial":
        return multinomial_resample(logw, generator)
    raise ValueError(f"unknown resampling scheme {scheme!r}; choose one of {', '.join(RESAMPLERS)}")


def mh_log_accept(new_logp: torch.Tensor, new_logq: torch.Tensor, old_logp: torch.Tensor, old_logq: torch.Tensor,
                  new_log_psi: float, old_log_psi: float, alpha: float, length_ratio: float = 1.0) -> float:
    """log A of a suffix move y -> y' (regenerated from the cut c on): (T'), (T) per-token log p / log q of the new
    and the old suffix.

    log A = alpha sum[log p(y') - log p(y)] - sum[log q(y') - log q(y)] + log Psi(y') - log Psi(y) + log(n / n'),
    the last term (`length_ratio` = n / n') the cut point's probability; capped at 0.
    """
    value = (alpha * (new_logp.sum() - old_logp.sum()) - (new_logq.sum() - old_logq.sum())
             + new_log_psi - old_log_psi + math.log(length_ratio))
    return min(0.0, float(value))


def merge(keys: list, logw: torch.Tensor) -> tuple[list, torch.Tensor]:
    """Group equal `keys` (hashable, one per particle), summing their weights: (distinct keys in first-seen order,
    their merged log-weights (K,))."""
    order: dict = {}
    for key in keys:
        order.setdefault(key, len(order))
    index = torch.tensor([order[key] for key in keys])
    merged = torch.full((len(order),), -math.inf, dtype=logw.dtype)
    for group in range(len(order)):
        merged[group] = torch.logsumexp(logw[index == group], dim=0)
    return list(order), merged


def select(rule: str, logw: torch.Tensor, sequences: list, answers: list, rewards: list[float | None],
           generator: torch.Generator | None = None) -> int:
    """The index of the particle a rule picks from a final pool of N: logw (N,), `sequences` (hashable token tuples),
    `answers` (an extracted answer per particle, for vote), `rewards` (final R, None where there is none).

    The first particle of the chosen sequence (or answer group) stands for it.
    """
    if rule == "argmax_reward":
        keyed = [(-math.inf if r is None or math.isnan(r) else r) for r in rewards]
        return max(range(len(keyed)), key=lambda i: (keyed[i], -i))
    keys = answers if rule == "vote" else sequences
    distinct, merged = merge(keys, logw)
    if rule == "sample":
        group = int(torch.multinomial(normalized(merged.double()), 1, generator=generator))
    elif rule in ("argmax_weight", "vote"):
        group = int(torch.argmax(merged))
    else:
        raise ValueError(f"unknown selection {rule!r}; choose one of {', '.join(SELECTIONS)}")
    return keys.index(distinct[group])
