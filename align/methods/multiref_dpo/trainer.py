"""Multi-reference DPO's trainer: a thin TRL DPOTrainer subclass that trains against precomputed reference
log-probs with the MRPO or MDPO loss and a reference-weighting strategy (the math: `align.methods.multiref_dpo.math`),
its step callback, the policy-side data helpers and the builder (docs/multiref_dpo.md).

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
import time

import numpy as np
import torch
import trl.trainer.dpo_trainer as trl_dpo_module
from accelerate.utils import gather_object
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from align.checkpoints import CompleteCheckpoints
from align.methods.multiref_dpo.math import (
    LOSSES,
    ReferenceWeighting,
    ThompsonSampling,
    build_weighting,
    implicit_reward_margins,
    sequence_logps,
)
from align.methods.multiref_dpo.references import pair_length, pair_token_ids
from align.tracking import RedactedArguments

# --------------------------------------------------------------------------------------------------------------------
# Trainer


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

    # The strategy's state (window, posteriors, arm history, both generators) resumes with the checkpoint.
    algorithm_state_file = "multiref_state.json"

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

    def load_algorithm_state(self, state: dict) -> None:
        self.weighting.load_state_dict(state["weighting"])
        self.subset_rng.bit_generator.state = state["subset_rng"]


@contextlib.contextmanager
def _skip_trl_model_hash():
    """TRL hashes every policy weight when `precompute_ref_log_probs` is set, to key its own single-reference cache,
    which this trainer replaces: seconds for a small policy, much longer for a large full fine-tune. Skip it."""
    original = trl_dpo_module.hash_module
    trl_dpo_module.hash_module = lambda module: "unused: align caches reference log-probs itself"
    try:
        yield
    finally:
        trl_dpo_module.hash_module = original


def _preference_metrics(prediction) -> dict[str, float]:
    margins = np.asarray(prediction.predictions, dtype=np.float64)
    return {"preference_accuracy": float((margins > 0).mean()), "margin": float(margins.mean())}


# --------------------------------------------------------------------------------------------------------------------
# Builder pieces: policy tokenization, the validation split, the reference cache, the trainer


def tokenize_pairs_dropping_long(tokenizer, rows: list[dict],
                                 max_length: int) -> tuple[list[dict], list[dict], int]:
    """(kept rows, their policy token ids, number dropped): pairs whose prompt + longer response exceed
    `max_length` policy tokens are dropped rather than truncated, so the policy and the references (each with its
    own tokenizer) score the same complete responses."""
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
