"""f-GRPO and f-HAL's pure math: the six f-divergences, the log-ratio clamp, the token loss, the pair loss and the
`group` token weights. Imports torch and align.numerics only: no model, no TRL.

Haldar, Mei, Lin, Xing, Song, "f-GRPO and Beyond: Divergence-Based Reinforcement Learning Algorithms for General
LLM Alignment" (arXiv 2602.05946); the method as implemented is specified in specs/fgrpo.md, and the trainer that
uses these functions is align/methods/fgrpo/trainer.py.

Completions whose advantage is positive / negative are samples of an aligned / unaligned distribution D+ / D-.
The variational bound D_f(P||Q) >= E_P[T] - E_Q[f*(T)], with the critic tied to the policy through a link g,
T = g(r), r = beta * (log pi_theta - log pi_ref), gives the per-token loss

    loss_{i,t} = |a_i| * ( -g(r_{i,t})        if a_i > 0
                           f*(g(r_{i,t}))     if a_i < 0
                           0                  if a_i = 0 )

and f-HAL's offline term  L_fPA = mean over pairs of [ -g(r_w) + f*(g(r_l)) ]  with sequence-level r.

The six divergences (f-GAN conjugates f* and links g; g maps into dom f*), with the closed forms of the two terms
that the losses use. The composition f*(g(v)) is never evaluated as written: each closed form below is algebraically
equal to it and stays finite wherever its exp terms do (v = r is clamped, see below):

    name        f*(s)               dom f*      g(v)                  -g(v)                 f*(g(v))
    kl          exp(s - 1)          R           v                     -v                    exp(v - 1)
    reverse_kl  -1 - log(-s)        s < 0       -exp(-v)              exp(-v)               v - 1
    pearson     s + s^2/4           R           v                     -v                    v + v^2/4
    hellinger   s / (1 - s)         s < 1       1 - exp(-v)           expm1(-v)             expm1(v)
    js          -log(2 - exp(s))    s < log 2   log 2 - softplus(-v)  softplus(-v) - log 2  softplus(v) - log 2
    tv          s                   |s| <= 1/2  tanh(v) / 2           -tanh(v) / 2          tanh(v) / 2

Derivatives of f*(g(v)), the weight a negative token's gradient gets: kl exp(v - 1), reverse_kl 1, pearson
1 + v/2, hellinger exp(v), js sigmoid(v), tv (1 - tanh(v)^2) / 2. At r = 0 Pearson's gradient with respect to r is
-a for every token, so with respect to log pi_theta it is beta times the unclipped policy-gradient (GRPO) gradient.

Decisions the spec leaves open (those about the loss; the trainer's docstring lists the rest):
- No proximal term: the loss has no `gamma * (log pi_theta - log pi_old)` term, no PPO clipping and no separate KL
  term; the reference enters only through r. A proximal term, if ever added, is an extension and off by default.
- r is clamped to a configurable range, DEFAULT_CLAMP = (-10, 10) on r = beta * log-ratio (not on the raw
  log-ratio), before any term is evaluated, so exp(+-r) stays below exp(10) ~ 2.2e4 in float32 and bfloat16.
  `clamp_log_ratio` is a plain `torch.clamp`: a token whose r lies outside the range gets no gradient (like PPO's
  clip), and its `hit_mask` entry (strictly outside, i.e. the value was changed) feeds the logged hit fraction.
  The loss functions take r already clamped; the caller clamps.
- Precision: every term is computed in at least float32. bfloat16 / float16 inputs are upcast to float32 and the
  result is float32 (casting back is the caller's business); float64 inputs stay float64 (used by the tests).
- Zero-advantage rows contribute exactly zero loss and zero gradient, and a row's unused branch is evaluated at
  r = 0, so an overflowing branch can never leak inf or NaN into the value or the gradient (`torch.where` alone
  would: 0 * inf in the backward pass).
- The token loss is returned unreduced, (B, T); the trainer masks padding and takes a token mean, over the whole
  generation batch (`batch`) or per group then over groups (`group`, whose per-token weights `group_token_weights`
  computes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from align.numerics import upcast

DEFAULT_CLAMP = (-10.0, 10.0)
LOG2 = math.log(2.0)

Term = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Domain:
    """An interval of the reals: the domain of a conjugate f*."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def contains(self, s: torch.Tensor) -> torch.Tensor:
        """Bool, same shape as s: whether each entry lies in the interval."""
        above = s >= self.low if self.low_closed else s > self.low
        below = s <= self.high if self.high_closed else s < self.high
        return above & below

    def __str__(self) -> str:
        return f"{'[' if self.low_closed else '('}{self.low}, {self.high}{']' if self.high_closed else ')'}"


@dataclass(frozen=True)
class Divergence:
    """One f-divergence: the conjugate f*, the link g, and the two closed-form loss terms, all elementwise.

    positive_term(v) = -g(v)       the loss of a token of a positive-advantage completion (before |a|)
    negative_term(v) = f*(g(v))    the loss of a token of a negative-advantage completion (before |a|)
    domain                         dom f*; g maps the reals into it
    """

    name: str
    conjugate: Term
    link: Term
    positive_term: Term
    negative_term: Term
    domain: Domain


# --------------------------------------------------------------------------------------------------------------------
# The six divergences


def _kl_conjugate(s):
    return torch.exp(upcast(s) - 1)


def _kl_negative(v):
    return torch.exp(upcast(v) - 1)


def _identity(v):
    return upcast(v)


def _minus(v):
    return -upcast(v)


def _reverse_kl_conjugate(s):
    return -1 - torch.log(-upcast(s))


def _reverse_kl_link(v):
    return -torch.exp(-upcast(v))


def _reverse_kl_positive(v):
    return torch.exp(-upcast(v))


def _reverse_kl_negative(v):
    return upcast(v) - 1


def _pearson(s):
    s = upcast(s)
    return s + s * s / 4


def _hellinger_conjugate(s):
    s = upcast(s)
    return s / (1 - s)


def _hellinger_link(v):
    return -torch.expm1(-upcast(v))


def _hellinger_positive(v):
    return torch.expm1(-upcast(v))


def _hellinger_negative(v):
    return torch.expm1(upcast(v))


def _js_conjugate(s):
    return -torch.log(2 - torch.exp(upcast(s)))


def _js_link(v):
    return LOG2 - F.softplus(-upcast(v))


def _js_positive(v):
    return F.softplus(-upcast(v)) - LOG2


def _js_negative(v):
    return F.softplus(upcast(v)) - LOG2


def _tv_link(v):
    return 0.5 * torch.tanh(upcast(v))


def _tv_positive(v):
    return -0.5 * torch.tanh(upcast(v))


DIVERGENCES: dict[str, Divergence] = {d.name: d for d in (
    Divergence("kl", _kl_conjugate, _identity, _minus, _kl_negative, Domain()),
    Divergence("reverse_kl", _reverse_kl_conjugate, _reverse_kl_link, _reverse_kl_positive, _reverse_kl_negative,
               Domain(high=0.0)),
    Divergence("pearson", _pearson, _identity, _minus, _pearson, Domain()),
    Divergence("hellinger", _hellinger_conjugate, _hellinger_link, _hellinger_positive, _hellinger_negative,
               Domain(high=1.0)),
    Divergence("js", _js_conjugate, _js_link, _js_positive, _js_negative, Domain(high=LOG2)),
    Divergence("tv", _identity, _tv_link, _tv_positive, _tv_link, Domain(-0.5, 0.5, True, True)),
)}


def get_divergence(divergence: str | Divergence) -> Divergence:
    """The registered divergence of that name (a Divergence is returned as is); ValueError for unknown names."""
    if isinstance(divergence, Divergence):
        return divergence
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown f-divergence '{divergence}'; choose one of {', '.join(DIVERGENCES)}.")
    return DIVERGENCES[divergence]


# --------------------------------------------------------------------------------------------------------------------
# Losses


def clamp_log_ratio(r: torch.Tensor, low: float = DEFAULT_CLAMP[0],
                    high: float = DEFAULT_CLAMP[1]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r clamped to [low, high], bool mask of the entries strictly outside it); any shape, dtype kept.

    Entries outside the range get no gradient (torch.clamp).
    """
    if not low < high:
        raise ValueError(f"The clamp range needs low < high; got ({low}, {high}).")
    return r.clamp(low, high), (r < low) | (r > high)


def fgrpo_token_loss(r: torch.Tensor, advantages: torch.Tensor,
                     divergence: str | Divergence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token f-GRPO loss, unreduced.

    r           (B, T) beta * (log pi_theta - log pi_ref), already clamped
    advantages  (B,)   group-normalised advantages
    Returns (loss, positive_part, negative_part), each (B, T) in at least float32: loss = |a| * -g(r) on rows with
    a > 0, |a| * f*(g(r)) on rows with a < 0, exactly 0 (value and gradient) on rows with a = 0; positive_part /
    negative_part are loss with the other rows zeroed (they sum to loss).
    """
    div = get_divergence(divergence)
    if r.dim() != 2 or advantages.shape != r.shape[:1]:
        raise ValueError(f"Expected r of shape (B, T) and advantages of shape (B,); got {tuple(r.shape)} and "
                         f"{tuple(advantages.shape)}.")
    r = upcast(r)
    a = upcast(advantages).to(r.dtype)[:, None]
    positive, negative = a > 0, a < 0
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    # each branch sees r only on its own rows (0 elsewhere), so the unused branch is finite and its gradient is 0
    pos = a.abs() * div.positive_term(torch.where(positive, r, zero))
    neg = a.abs() * div.negative_term(torch.where(negative, r, zero))
    positive_part = torch.where(positive, pos, zero)
    negative_part = torch.where(negative, neg, zero)
    return positive_part + negative_part, positive_part, negative_part


def fpa_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, divergence: str | Divergence) -> torch.Tensor:
    """f-HAL's offline preference term: mean over pairs of -g(r_w) + f*(g(r_l)); a scalar in at least float32.

    r_chosen, r_rejected  (P,) sequence-level beta * (log pi_theta - log pi_ref) of the chosen / rejected response
                          of each pair, already clamped
    """
    div = get_divergence(divergence)
    if r_chosen.dim() != 1 or r_chosen.shape != r_rejected.shape or r_chosen.numel() == 0:
        raise ValueError(f"Expected r_chosen and r_rejected of the same shape (P,), P > 0; got "
                         f"{tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}.")
    return (div.positive_term(r_chosen) + div.negative_term(r_rejected)).mean()


def group_token_weights(lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-token weights of the `group` normalisation: the mean over each group's completion tokens, then over groups.

    lengths  (n,) completion tokens of each completion, groups of `group_size` laid out contiguously
    Returns (n,) float: every token of completion i weighs 1 / (num_groups * tokens of i's group), so the weights of
    all tokens sum to 1 (a group without tokens gets weight 0). `batch` normalisation is 1 / lengths.sum() instead.
    """
    if lengths.dim() != 1 or lengths.numel() % group_size:
        raise ValueError(f"lengths of shape {tuple(lengths.shape)} do not split into groups of {group_size}.")
    group_tokens = lengths.view(-1, group_size).sum(dim=1, keepdim=True).float()
    per_group = torch.where(group_tokens > 0, 1.0 / (group_tokens.clamp(min=1.0) * group_tokens.numel()), 0.0)
    return per_group.expand(-1, group_size).reshape(-1)

