"""Multi-reference DPO math: the MRPO and MDPO losses over K references and the rules that weight the references.

Sources: Le et al., "Multi-Reference Preference Optimization" (MRPO, arXiv 2405.16388): the virtual reference and
the per-pair arwc weights; Wu & Echarghaoui, "Intelligently Weighting Multiple Reference Models for Direct
Preference Optimization of LLMs" (arXiv 2512.10040): MDPO and the vdw, vaw, swcw and tsw weightings. Trained by
`align.methods.multiref_dpo.trainer`; docs/multiref_dpo.md explains the choices.

Notation (shapes in the docstrings): B pairs per micro-batch, N validation pairs, K references. l_theta(y) is the
policy's sequence log-prob of a response, l_k(y) reference k's, both length-normalised by default (sum over
response tokens / number of response tokens). Delta_k(i) = l_k(y_w^i) - l_k(y_l^i) is reference k's own preference
margin on pair i.

  MRPO  virtual reference log pi~(y) = -logsumexp_k(log alpha_k - l_k(y)); DPO against it.
  MDPO  sum_k alpha_k * DPO loss against reference k.

With K = 1 (or one-hot alpha) both are DPO against that reference. The weights alpha come from a strategy:

  uniform      1/K
  arwc         per pair |Delta_k(i)| / sum_j |Delta_j(i)|: reads the current pair's label (MRPO's original rule)
  vdw / vaw    fixed from a held-out validation split: sum |Delta_k| / #(Delta_k > 0)
  swcw         mean |Delta_k| over the previous W batches; `swcw_onehot` takes its argmax as a single reference
  tsw          Thompson sampling over the K references, rewarded when a step raised validation accuracy
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------------
# Losses


def sequence_logps(per_token_logps: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(N, T) per-token log-probs and (N, T) 0/1 response mask -> (N,) sequence log-probs: the masked sum, divided by
    the number of response tokens when `normalize` (a sequence without response tokens counts as one token)."""
    total = (per_token_logps * mask).sum(dim=-1)
    return total / mask.sum(dim=-1).clamp(min=1) if normalize else total


def virtual_reference_logps(ref_logps: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """MRPO's virtual reference: log pi~(y) = -logsumexp_k(log alpha_k - l_k(y)), the log of the alpha-weighted
    harmonic mean of the reference probabilities. (..., K) log-probs and (..., K) or (K,) weights -> (...).
    References with alpha_k = 0 drop out exactly (log 0 = -inf)."""
    return -torch.logsumexp(torch.log(alpha) - ref_logps, dim=-1)


def dpo_logits(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * [(l_theta(y_w) - l_theta(y_l)) - (l_ref(y_w) - l_ref(y_l))]; reference tensors may carry a trailing K
    dimension, in which case the policy terms broadcast over it."""
    policy_margin = policy_chosen - policy_rejected
    if ref_chosen.dim() > policy_margin.dim():
        policy_margin = policy_margin.unsqueeze(-1)
    return beta * (policy_margin - (ref_chosen - ref_rejected))


def mrpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) policy log-probs, (B, K) reference log-probs, (B, K) or (K,) weights -> (B,) losses
    -log sigmoid(beta * [(l_theta(y_w) - l_theta(y_l)) - (log pi~(y_w) - log pi~(y_l))])."""
    virtual_chosen = virtual_reference_logps(ref_chosen, alpha)
    virtual_rejected = virtual_reference_logps(ref_rejected, alpha)
    return -F.logsigmoid(dpo_logits(policy_chosen, policy_rejected, virtual_chosen, virtual_rejected, beta))


def mdpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) policy log-probs, (B, K) reference log-probs, (B, K) or (K,) weights -> (B,) losses
    -sum_k alpha_k log sigmoid(beta * [(l_theta(y_w) - l_theta(y_l)) - (l_k(y_w) - l_k(y_l))])."""
    per_reference = -F.logsigmoid(dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))
    # A reference with weight 0 contributes nothing, even where its loss is inf (0 * inf would be nan).
    return torch.where(alpha > 0, alpha * per_reference, torch.zeros_like(per_reference)).sum(dim=-1)


LOSSES = {"mrpo": mrpo_loss, "mdpo": mdpo_loss}


def implicit_reward_margins(loss: str, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                            ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, alpha: torch.Tensor,
                            beta: float) -> torch.Tensor:
    """(B,) DPO's implicit reward margin under `loss`: against the virtual reference (mrpo), or the alpha-weighted
    mean of the per-reference margins (mdpo); both are DPO's beta * [policy margin - reference margin] at K = 1."""
    if loss == "mrpo":
        virtual_chosen = virtual_reference_logps(ref_chosen, alpha)
        virtual_rejected = virtual_reference_logps(ref_rejected, alpha)
        return dpo_logits(policy_chosen, policy_rejected, virtual_chosen, virtual_rejected, beta)
    per_reference = dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return (alpha.expand_as(per_reference) * per_reference).sum(dim=-1)

# --------------------------------------------------------------------------------------------------------------------
# Weighting rules


def normalize_weights(scores: torch.Tensor) -> torch.Tensor:
    """Non-negative scores (..., K) -> weights summing to 1 over K; uniform where every score is 0."""
    total = scores.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-1])
    return torch.where(total > 0, scores / total.clamp(min=torch.finfo(scores.dtype).tiny), uniform)


def arwc_weights(deltas: torch.Tensor) -> torch.Tensor:
    """MRPO's per-pair weights from the current pair: (B, K) margins Delta -> (B, K), |Delta_k(i)| / sum_j
    |Delta_j(i)|. It reads the pair's chosen/rejected label, which is what the weighting paper criticises."""
    return normalize_weights(deltas.abs())


def discrimination_weights(deltas: torch.Tensor) -> torch.Tensor:
    """vdw: (N, K) validation margins -> (K,), proportional to sum_i |Delta_k(i)|."""
    return normalize_weights(deltas.abs().sum(dim=0))


def accuracy_weights(deltas: torch.Tensor) -> torch.Tensor:
    """vaw: (N, K) validation margins -> (K,), proportional to each reference's own preference accuracy
    #(Delta_k > 0) on the validation pairs."""
    return normalize_weights((deltas > 0).sum(dim=0).to(deltas.dtype))


def one_hot(index: int, size: int) -> torch.Tensor:
    """(size,) float64 weights: 1 at `index`, 0 elsewhere (a single-reference step)."""
    weights = torch.zeros(size, dtype=torch.float64)
    weights[index] = 1.0
    return weights


# --------------------------------------------------------------------------------------------------------------------
# Strategies: what alpha is at each optimizer step. Every rank holds an identical copy, fed identical (all-reduced)
# observations, so every rank trains with the same weights; `state_dict` is what a checkpoint keeps.


class ReferenceWeighting:
    """A weighting strategy over K references.

    Per optimizer step the trainer calls `begin_step()`, then `weights(deltas)` for each micro-batch, then
    `end_step(mean_abs_deltas, improved)` with the step's mean |Delta_k| over every rank's pairs and, when
    `needs_validation_reward`, whether the step raised validation accuracy.
    """

    needs_validation_reward = False

    def __init__(self, num_references: int):
        self.num_references = num_references

    def step_weights(self) -> torch.Tensor:
        """(K,) weights of the current step."""
        return torch.full((self.num_references,), 1.0 / self.num_references, dtype=torch.float64)

    def weights(self, deltas: torch.Tensor) -> torch.Tensor:
        """(B, K) margins of the micro-batch -> (B, K) weights (float64)."""
        return self.step_weights().to(deltas.device).expand(deltas.shape).clone()

    def arm(self) -> int | None:
        """The single reference this step trains against, for one-hot strategies."""
        return None

    def begin_step(self) -> None:
        pass

    def end_step(self, mean_abs_deltas: torch.Tensor, improved: bool | None = None) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FixedWeighting(ReferenceWeighting):
    """uniform, vdw, vaw: one alpha for the whole run."""

    def __init__(self, alpha: torch.Tensor):
        super().__init__(len(alpha))
        self.alpha = alpha.to(torch.float64)

    def step_weights(self) -> torch.Tensor:
        return self.alpha


class PerPairWeighting(ReferenceWeighting):
    """arwc: each pair's own weights from its reference margins."""

    def weights(self, deltas: torch.Tensor) -> torch.Tensor:
        return arwc_weights(deltas.to(torch.float64))


class SlidingWindowWeighting(ReferenceWeighting):
    """swcw: alpha for step t from mean |Delta_k| over the pairs of steps t-W .. t-1, so step t's labels never
    shape its own weights; uniform until the first step has been observed. `onehot` (swcw_onehot) trains each step
    against the single reference with the largest windowed mean (the first step: uniform weights)."""

    def __init__(self, num_references: int, window: int = 1, onehot: bool = False):
        super().__init__(num_references)
        self.onehot = onehot
        self.history: deque[list[float]] = deque(maxlen=window)  # per-step mean |Delta_k|, oldest first

    def _window_mean(self) -> torch.Tensor | None:
        if not self.history:
            return None
        return torch.tensor(list(self.history), dtype=torch.float64).mean(dim=0)

    def arm(self) -> int | None:
        mean = self._window_mean()
        return int(torch.argmax(mean)) if self.onehot and mean is not None else None

    def step_weights(self) -> torch.Tensor:
        mean = self._window_mean()
        if mean is None:
            return super().step_weights()
        return one_hot(self.arm(), self.num_references) if self.onehot else normalize_weights(mean)

    def end_step(self, mean_abs_deltas: torch.Tensor, improved: bool | None = None) -> None:
        self.history.append([float(v) for v in mean_abs_deltas])

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state["history"])


class ThompsonSampling(ReferenceWeighting):
    """tsw: a K-armed Bernoulli bandit. Arm k has a Beta(a_k, b_k) posterior, a_k = b_k = `prior` at the start.
    Each step draws theta_k ~ Beta(a_k, b_k) (one vector draw from the seeded generator), trains against
    k* = argmax theta alone, and adds the step's reward (1 if validation accuracy went up, else 0) to a_k* or b_k*."""

    needs_validation_reward = True

    def __init__(self, num_references: int, prior: float = 5.0, seed: int = 0):
        super().__init__(num_references)
        self.a = [float(prior)] * num_references
        self.b = [float(prior)] * num_references
        self.rng = np.random.default_rng(seed)
        self.chosen: int | None = None
        self.history: list[list[int]] = []  # [arm, reward] per completed step

    def begin_step(self) -> None:
        self.chosen = int(np.argmax(self.rng.beta(self.a, self.b)))

    def arm(self) -> int | None:
        return self.chosen

    def step_weights(self) -> torch.Tensor:
        if self.chosen is None:
            raise RuntimeError("ThompsonSampling.begin_step() must choose an arm before the step's weights are read.")
        return one_hot(self.chosen, self.num_references)

    def end_step(self, mean_abs_deltas: torch.Tensor, improved: bool | None = None) -> None:
        if improved is None:
            raise ValueError("tsw needs the step's validation outcome (improved=True/False).")
        reward = int(bool(improved))
        self.a[self.chosen] += reward
        self.b[self.chosen] += 1 - reward
        self.history.append([self.chosen, reward])

    def posterior_means(self) -> list[float]:
        return [a / (a + b) for a, b in zip(self.a, self.b)]

    def metrics(self) -> dict[str, float]:
        return {"bandit/reward": float(self.history[-1][1])} if self.history else {}

    def state_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "history": self.history, "chosen": self.chosen,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.a, self.b = list(state["a"]), list(state["b"])
        self.history = [list(entry) for entry in state["history"]]
        self.chosen = state["chosen"]
        self.rng.bit_generator.state = state["rng"]


def build_weighting(name: str, num_references: int, validation_deltas: torch.Tensor | None = None, *,
                    window: int = 1, prior: float = 5.0, seed: int = 0) -> ReferenceWeighting:
    """The strategy `name` (one of config.MULTIREF_WEIGHTINGS) over K = `num_references`; vdw and vaw read the
    (N, K) validation margins `validation_deltas`, swcw its `window`, tsw its Beta `prior` and `seed`."""
    builders = {
        "uniform": lambda: FixedWeighting(torch.full((num_references,), 1.0 / num_references, dtype=torch.float64)),
        "arwc": lambda: PerPairWeighting(num_references),
        "vdw": lambda: FixedWeighting(discrimination_weights(validation_deltas.to(torch.float64))),
        "vaw": lambda: FixedWeighting(accuracy_weights(validation_deltas.to(torch.float64))),
        "swcw": lambda: SlidingWindowWeighting(num_references, window),
        "swcw_onehot": lambda: SlidingWindowWeighting(num_references, window, onehot=True),
        "tsw": lambda: ThompsonSampling(num_references, prior, seed),
    }
    if name not in builders:
        raise ValueError(f"unknown weighting '{name}'; choose one of: {', '.join(builders)}.")
    if name in ("vdw", "vaw") and (validation_deltas is None or len(validation_deltas) == 0):
        raise ValueError(f"weighting '{name}' needs reference margins on a validation split.")
    return builders[name]()
