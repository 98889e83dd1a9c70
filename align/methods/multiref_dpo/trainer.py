"""Multi-reference DPO: the MRPO and MDPO losses over K references, the reference-weighting strategies, and a thin
TRL DPOTrainer subclass that trains against precomputed reference log-probs (docs/multiref_dpo.md).

Notation (shapes in the docstrings): B pairs per micro-batch, K references. l_theta(y) is the policy's sequence
log-prob of a response, l_k(y) reference k's, both length-normalised by default (sum over response tokens / number
of response tokens). Delta_k(i) = l_k(y_w^i) - l_k(y_l^i) is reference k's own preference margin on pair i.

  MRPO  virtual reference log pi~(y) = -logsumexp_k(log alpha_k - l_k(y)); DPO against it.
  MDPO  sum_k alpha_k * DPO loss against reference k.

With K = 1 (or one-hot alpha) both are DPO against that reference. The weights alpha come from a strategy:

  uniform      1/K
  arwc         per pair |Delta_k(i)| / sum_j |Delta_j(i)|: reads the current pair's label (MRPO's original rule)
  vdw / vaw    fixed from a held-out validation split: sum |Delta_k| / #(Delta_k > 0)
  swcw         mean |Delta_k| over the previous W batches; `swcw_onehot` takes its argmax as a single reference
  tsw          Thompson sampling over the K references, rewarded when a step raised validation accuracy

Training metrics, besides TRL's usual ones:
  weights/<reference>      mean alpha of each reference over the step's pairs
  arm                      the reference chosen for the step (swcw_onehot, tsw)
  bandit/mean_<reference>  tsw: posterior mean a / (a + b) of each arm;  bandit/reward: 1 if the step helped
  bandit/val_accuracy_before / _after   tsw: policy preference accuracy on the step's validation subset
  policy/preference_accuracy             share of the step's pairs with l_theta(y_w) > l_theta(y_l)
  timing/step_s, timing/validation_s (tsw's passes), timing/update_s, perf/tokens_per_s (all ranks)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from align.checkpoints import CompleteCheckpoints
from align.config import MULTIREF_WEIGHTINGS
from align.tracking import RedactedArguments

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
    """The strategy `name` (one of MULTIREF_WEIGHTINGS); vdw and vaw read the (N, K) validation margins."""
    if name in ("vdw", "vaw") and (validation_deltas is None or len(validation_deltas) == 0):
        raise ValueError(f"weighting '{name}' needs reference margins on a validation split.")
    if name == "uniform":
        return FixedWeighting(torch.full((num_references,), 1.0 / num_references, dtype=torch.float64))
    if name == "vdw":
        return FixedWeighting(discrimination_weights(validation_deltas.to(torch.float64)))
    if name == "vaw":
        return FixedWeighting(accuracy_weights(validation_deltas.to(torch.float64)))
    if name == "arwc":
        return PerPairWeighting(num_references)
    if name in ("swcw", "swcw_onehot"):
        return SlidingWindowWeighting(num_references, window, onehot=name == "swcw_onehot")
    if name == "tsw":
        return ThompsonSampling(num_references, prior, seed)
    raise ValueError(f"unknown weighting '{name}'; choose one of: {', '.join(MULTIREF_WEIGHTINGS)}.")


def preference_accuracy(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> float:
    """Share of pairs where the policy's (normalised) log-prob of the chosen response exceeds the rejected one's."""
    return float((policy_chosen > policy_rejected).float().mean()) if len(policy_chosen) else math.nan


# --------------------------------------------------------------------------------------------------------------------
# Trainer

STATE_FILE = "multiref_state.json"


class _StepHooks(TrainerCallback):
    """Runs the weighting strategy's step boundaries: before an optimizer step's first micro-batch and after the
    optimizer has stepped (before logging and checkpointing, so a checkpoint holds the state after its step)."""

    def __init__(self, trainer: MultiRefDPOTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.begin_weighting_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.end_weighting_step()


class MultiRefDPOTrainer(CompleteCheckpoints, DPOTrainer):
    """TRL's DPOTrainer trained against K precomputed references with MRPO or MDPO and a weighting strategy.

    align owns the data path: `train_dataset` rows hold the policy's `prompt_ids` / `chosen_ids` / `rejected_ids`
    (from `references.pair_token_ids`) and `ref_chosen_logps` / `ref_rejected_logps`, lists of K
    floats from the reference cache, so TRL's own tokenization and single-reference precompute are skipped
    (`args.precompute_ref_log_probs` must be True: TRL then keeps no reference model in memory).
    `validation` (same columns) is what tsw measures the policy on; evaluation reports the policy's preference
    accuracy on `eval_dataset` (token columns only: no reference log-probs are needed).
    """

    def __init__(self, *args, loss: str, weighting: ReferenceWeighting, reference_names: list[str],
                 length_normalize: bool = True, validation=None, bandit_pairs: int = 125, seed: int = 0, **kwargs):
        if not kwargs["args"].precompute_ref_log_probs:
            raise ValueError("MultiRefDPOTrainer trains against cached reference log-probs; set "
                             "precompute_ref_log_probs=True so TRL keeps no reference model.")
        if weighting.needs_validation_reward and not validation:
            raise ValueError(f"{type(weighting).__name__} scores the policy on validation pairs; pass validation.")
        with _skip_trl_model_hash():
            super().__init__(*args, compute_metrics=_preference_metrics, **kwargs)
        self.loss_name, self.weighting, self.reference_names = loss, weighting, list(reference_names)
        self.length_normalize, self.validation, self.bandit_pairs = length_normalize, validation, bandit_pairs
        self.subset_rng = np.random.default_rng([seed, 1])  # tsw's validation subsets; arms draw from their own
        # The step's sums on this rank, kept on the device so the training step never waits for them:
        # |Delta_k| per reference, pairs, tokens. All-reduced once, at the step's end.
        self._step_totals = torch.zeros(len(reference_names) + 2, dtype=torch.float64,
                                        device=self.accelerator.device)
        self._step_started = self._validation_seconds = 0.0
        self._val_before: float | None = None
        self._subset: list[int] = []
        self.add_callback(_StepHooks(self))

    # TRL's data preparation is replaced by align's: every model tokenizes with its own template, references are
    # scored once into the cache.
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        return dataset

    # --- log-probs and loss ---------------------------------------------------------------------------------------

    def policy_logps(self, model, inputs: dict, normalize: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) sequence log-probs of the chosen and rejected responses of a collated batch ([chosen; rejected]),
        length-normalised as configured unless `normalize` says otherwise."""
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                        use_cache=False, fused_lm_head=True)
        mask = inputs["completion_mask"][:, 1:]
        normalize = self.length_normalize if normalize is None else normalize
        logps = sequence_logps(outputs.log_probs[:, -mask.shape[1]:], mask, normalize)
        return logps.chunk(2, dim=0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self.policy_logps(model, inputs)
        ref_chosen = inputs["ref_chosen_logps"].to(chosen.dtype)
        ref_rejected = inputs["ref_rejected_logps"].to(chosen.dtype)
        deltas = (ref_chosen - ref_rejected).detach()
        alpha = self.weighting.weights(deltas.double()).to(chosen.dtype)
        loss = LOSSES[self.loss_name](chosen, rejected, ref_chosen, ref_rejected, alpha, self.beta).mean()
        if model.training:
            counts = torch.stack([deltas.new_tensor(len(deltas)), inputs["attention_mask"].sum().to(deltas.dtype)])
            self._step_totals += torch.cat([deltas.abs().sum(dim=0), counts]).double()
            self._log_batch(chosen.detach(), rejected.detach(), ref_chosen, ref_rejected, alpha)
        return loss

    def _log_batch(self, chosen, rejected, ref_chosen, ref_rejected, alpha) -> None:
        """The micro-batch's metrics, averaged over ranks in one gather (every rank holds the same number of pairs)."""
        margins = implicit_reward_margins(self.loss_name, chosen, rejected, ref_chosen, ref_rejected, alpha, self.beta)
        values = torch.cat([alpha.mean(dim=0), torch.stack([margins.mean(), (chosen > rejected).float().mean(),
                                                            chosen.mean(), rejected.mean()]).to(alpha.dtype)])
        means = self.accelerator.gather(values[None]).mean(dim=0).tolist()
        names = [f"weights/{name}" for name in self.reference_names] + [
            "rewards/margins", "policy/preference_accuracy", "logps/chosen", "logps/rejected"]
        for name, value in zip(names, means):
            self._metrics["train"][name].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the policy's length-normalised margin l_theta(y_w) - l_theta(y_l) per pair (label 1: y_w is
        preferred), whatever the loss's normalisation: preference accuracy is defined on normalised log-probs."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            chosen, rejected = self.policy_logps(model, inputs, normalize=True)
        margins = (chosen - rejected).float()
        return None, margins, torch.ones_like(margins)

    # --- the weighting strategy's step boundaries ---------------------------------------------------------------

    def begin_weighting_step(self) -> None:
        self._step_started, self._validation_seconds = time.perf_counter(), 0.0
        self._step_totals.zero_()
        if self.weighting.needs_validation_reward:
            size = min(self.bandit_pairs, len(self.validation))
            self._subset = sorted(self.subset_rng.choice(len(self.validation), size=size, replace=False).tolist())
            self._val_before = self.validation_accuracy(self._subset)
        self.weighting.begin_step()

    def end_weighting_step(self) -> None:
        totals = self.accelerator.reduce(self._step_totals.clone(), reduction="sum").cpu()
        mean_abs_deltas, tokens = totals[:-2] / totals[-2].clamp(min=1), totals[-1]
        improved = None
        metrics = self._metrics["train"]
        if self.weighting.needs_validation_reward:
            after = self.validation_accuracy(self._subset)
            improved = after > self._val_before
            metrics["bandit/val_accuracy_before"].append(self._val_before)
            metrics["bandit/val_accuracy_after"].append(after)
        arm = self.weighting.arm()
        self.weighting.end_step(mean_abs_deltas, improved)
        if arm is not None:
            metrics["arm"].append(float(arm))
        for key, value in self.weighting.metrics().items():
            metrics[key].append(value)
        if isinstance(self.weighting, ThompsonSampling):
            for name, mean in zip(self.reference_names, self.weighting.posterior_means()):
                metrics[f"bandit/mean_{name}"].append(mean)
        self._check_same_on_every_rank()
        step = time.perf_counter() - self._step_started
        metrics["timing/step_s"].append(step)
        metrics["timing/validation_s"].append(self._validation_seconds)  # tsw's passes; the rest is the update
        metrics["timing/update_s"].append(step - self._validation_seconds)
        metrics["perf/tokens_per_s"].append(float(tokens) / step if step > 0 else 0.0)

    def _check_same_on_every_rank(self) -> None:
        """Ranks that disagreed on the weights would silently train different losses; fail loudly instead."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        decided = {"state": self.algorithm_state(), "weights": self.weighting.step_weights().tolist()}
        digest = hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()
        if len(set(gather_object([digest]))) > 1:
            raise RuntimeError(f"the {type(self.weighting).__name__} state differs between ranks after step "
                               f"{self.state.global_step}; every rank must see the same observations.")

    @torch.no_grad()
    def validation_accuracy(self, indices: list[int]) -> float:
        """The policy's preference accuracy on validation pairs `indices` (the same on every rank): each process
        scores an equal share (padded by repeating a pair, so every rank runs the same number of forwards, which
        ZeRO-3 needs), and the correct counts are summed."""
        started = time.perf_counter()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        share = -(-len(indices) // world)
        mine = indices[rank * share:(rank + 1) * share]
        weights = [1.0] * len(mine) + [0.0] * (share - len(mine))
        mine = mine + [indices[0]] * (share - len(mine))
        batch_size = self.args.per_device_eval_batch_size
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), dtype=torch.float64)
        for start in range(0, share, batch_size):
            rows = [self.validation[i] for i in mine[start:start + batch_size]]
            batch = self._prepare_inputs(self.data_collator(rows))
            with self.compute_loss_context_manager():
                chosen, rejected = self.policy_logps(self.model, batch, normalize=True)
            hits = (chosen > rejected).double().cpu()
            correct += (hits * torch.tensor(weights[start:start + batch_size], dtype=torch.float64)).sum()
        self.model.train(was_training)
        total = self.accelerator.reduce(correct.to(self.accelerator.device), reduction="sum").item()
        self._validation_seconds += time.perf_counter() - started
        return total / len(indices)

    # --- strategy state: saved with every checkpoint, restored on resume ------------------------------------------

    def algorithm_state(self) -> dict:
        return {"weighting": self.weighting.state_dict(), "subset_rng": self.subset_rng.bit_generator.state}

    def checkpoint_state(self) -> dict[str, dict]:
        return {STATE_FILE: self.algorithm_state()}

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if not checkpoint:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{checkpoint} has no {STATE_FILE}: it was not written by a multiref_dpo run, or "
                                    f"its save was interrupted. Resume from another checkpoint.")
        with open(path) as f:
            state = json.load(f)
        self.weighting.load_state_dict(state["weighting"])
        self.subset_rng.bit_generator.state = state["subset_rng"]


@contextlib.contextmanager
def _skip_trl_model_hash():
    """TRL hashes every policy weight when `precompute_ref_log_probs` is set, to key its own single-reference cache,
    which this trainer replaces: seconds for a small policy, much longer for a large full fine-tune. Skip it."""
    import trl.trainer.dpo_trainer as dpo_module

    original = dpo_module.hash_module
    dpo_module.hash_module = lambda module: "unused: align caches reference log-probs itself"
    try:
        yield
    finally:
        dpo_module.hash_module = original


def _preference_metrics(prediction) -> dict[str, float]:
    margins = np.asarray(prediction.predictions, dtype=np.float64)
    return {"preference_accuracy": float((margins > 0).mean()), "margin": float(margins.mean())}


# --------------------------------------------------------------------------------------------------------------------
# Builder pieces: policy tokenization, the validation split, the reference cache, the trainer


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int) -> tuple[list[dict], list[dict], int]:
    """(kept rows, their policy token ids, number dropped): pairs whose prompt + longer response exceed
    `max_length` policy tokens are dropped rather than truncated, so the policy and the references (each with its
    own tokenizer) score the same complete responses."""
    from align.methods.multiref_dpo.references import pair_length, pair_token_ids

    kept_rows, kept_ids = [], []
    for row in rows:
        ids = pair_token_ids(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        if pair_length(ids) <= max_length:
            kept_rows.append(row)
            kept_ids.append(ids)
    return kept_rows, kept_ids, len(rows) - len(kept_rows)


def carve_validation(num_rows: int, size: int) -> tuple[list[int], list[int]]:
    """(training indices, validation indices): `size` rows drawn by a fixed permutation (independent of the run's
    seed, so every seed trains on the same split and reuses the same cache entries), the rest kept in order."""
    if size >= num_rows:
        raise ValueError(f"algorithm.validation_size {size} leaves no training pairs out of {num_rows}; lower it.")
    chosen = set(np.random.default_rng(0).permutation(num_rows)[:size].tolist())
    return [i for i in range(num_rows) if i not in chosen], sorted(chosen)


def pairs_dataset(ids: list[dict], references: list | None = None):
    """A datasets.Dataset of policy token ids and, given the references' ReferenceLogps of the same rows, the
    `ref_chosen_logps` / `ref_rejected_logps` columns (K floats per row, in reference order)."""
    from datasets import Dataset

    columns = {key: [row[key] for row in ids] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
    if references:
        columns["ref_chosen_logps"] = torch.stack([r.chosen for r in references], dim=1).tolist()
        columns["ref_rejected_logps"] = torch.stack([r.rejected for r in references], dim=1).tolist()
    return Dataset.from_dict(columns)


class AlignDPOConfig(RedactedArguments, DPOConfig):
    """TRL's DPOConfig, logged and pickled without credentials."""


def build_multiref_dpo_trainer(model, tokenizer, train_dataset, algo, reference_names: list[str], common_args: dict,
                               *, validation=None, eval_dataset=None, peft_config=None) -> MultiRefDPOTrainer:
    """The trainer for `algo` (a MultiRefDPOAlgorithmConfig). `validation` carries reference log-probs (vdw / vaw
    read its margins, tsw scores the policy on it); `eval_dataset` (policy token ids only) is evaluated before
    training, every `algo.eval_steps` and at the end."""
    evaluate = eval_dataset is not None
    args = AlignDPOConfig(**common_args, beta=algo.beta, max_length=None, precompute_ref_log_probs=True,
                          eval_strategy="steps" if evaluate and algo.eval_steps else "no",
                          eval_steps=algo.eval_steps or None, eval_on_start=evaluate, **algo.trl)
    margins = None
    if validation is not None and len(validation):
        margins = (torch.tensor(validation["ref_chosen_logps"], dtype=torch.float64)
                   - torch.tensor(validation["ref_rejected_logps"], dtype=torch.float64))
    weighting = build_weighting(algo.weighting, len(reference_names), margins, window=algo.window,
                                prior=algo.prior, seed=common_args.get("seed", 0))
    return MultiRefDPOTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              processing_class=tokenizer, peft_config=peft_config, loss=algo.loss,
                              weighting=weighting, reference_names=reference_names,
                              length_normalize=algo.length_normalize, validation=validation,
                              bandit_pairs=algo.bandit_pairs, seed=common_args.get("seed", 0))
