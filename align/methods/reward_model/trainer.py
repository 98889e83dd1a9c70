"""The reward-model method: TRL's RewardTrainer with align's objectives, and the builder the run steps call.

Three objectives (`algorithm.objective`), their math in `align.methods.reward_model.math`:
- bradley_terry: TRL's pairwise loss on a one-output head (`AlignRewardTrainer`);
- gaussian_anchor: the variance-aware Gaussian model on a two-output head (mu, raw variance), optionally with ordinal
  anchors (`attach_anchors` fixes thresholds and the anchored pairs before training; `AlignRewardTrainer`);
- causal_rm: CausalRM on observational feedback rows (`AlignCausalRMTrainer`), with propensities, noise rates and
  imputed labels from the auxiliary models in `align.methods.reward_model.causal`, fitted before the trainer exists.

Here: the collator (`RewardCollator`), the two trainers (only `compute_loss` and the held-out metrics change), the
rows' tokenization (`tokenize_rows`), anchors (`attach_anchors`), CausalRM's feature pass across processes
(`features_on_every_process`) and `build_reward_model_trainer`. The model itself is loaded by
`align.rewards.reward_model.load_reward_model`, which also defines the checkpoint format scoring reads; the builder
records what scoring needs under its `CONFIG_KEY`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from align.checkpoints import CompleteCheckpoints
from align.data import DataError
from align.methods.reward_model.causal import causal_rm_inputs, last_token_features
from align.methods.reward_model.math import (
    DEFAULT_LAMBDA,
    DEFAULT_PROPENSITY_CLIP,
    anchor_mask,
    anchor_thresholds,
    bradley_terry_loss,
    brier_score,
    doubly_robust_loss,
    gaussian_anchor_loss,
    gaussian_preference_loss,
    ips_loss,
    noise_aware_bce,
    ordinal_labels,
    pairwise_accuracy,
    preference_probability,
    roc_auc,
    soft_bce,
    soft_cross_entropy,
)
from align.rewards.gaussian import variance_from_raw
from align.rewards.reward_model import CONFIG_KEY
from align.tokens import pad_right, reward_input_ids
from align.tracking import RedactedArguments

log = logging.getLogger(__name__)


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
    reaches from its initialisation near 0 (see `align.methods.reward_model.math` on the 1e-7 floor).
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


def features_on_every_process(model, sequences: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """(N, H) float32 CPU `last_token_features`, the same on every process: each process computes a contiguous shard
    on its device (where the trainer would put the model anyway) and the shards are all-gathered. The model must not
    be sharded yet (it is not, before the trainer is built)."""
    state = PartialState()
    shard = math.ceil(len(sequences) / state.num_processes)
    model.to(state.device)
    mine = last_token_features(model, sequences[state.process_index * shard:(state.process_index + 1) * shard],
                               pad_token_id)
    mine = F.pad(mine, (0, 0, 0, shard - len(mine)))  # the last shard may be short; the all-gather needs equal ones
    features = gather(mine) if state.num_processes > 1 else mine
    return features[:len(sequences)].cpu()


@contextlib.contextmanager
def _as_data_error():
    """Anchors or noise rates the data cannot support (a constant score, classes that never occur, noise-rate
    estimates summing to >= 1) are data problems: report them as such, in one line."""
    try:
        yield
    except ValueError as err:
        raise DataError(str(err)) from err


class AlignRewardConfig(RedactedArguments, RewardConfig):
    """TRL's RewardConfig, logged and pickled without credentials."""


def _reward_config(algo, common_args: dict, held_out: bool) -> AlignRewardConfig:
    """TRL's RewardConfig for `algo` on top of the arguments every trainer shares; `algorithm.trl` has the last word."""
    # Held-out metrics before training come from eval_on_start: inside train(), after DeepSpeed has wrapped the
    # model (an evaluate() before train() leaves the DeepSpeed engine unset and the first backward fails).
    eval_args = {"eval_on_start": True} if held_out else {}
    if algo.eval_steps and held_out:
        eval_args.update(eval_strategy="steps", eval_steps=algo.eval_steps)
    # prediction_loss_only: held-out metrics come from compute_loss's full-set buffer, not from predictions.
    return AlignRewardConfig(**{**common_args, "max_length": None, "disable_dropout": True,
                                "prediction_loss_only": True,
                                "center_rewards_coefficient": algo.center_rewards_coefficient,
                                "per_device_eval_batch_size": common_args["per_device_train_batch_size"],
                                **eval_args, **algo.trl})


def build_reward_model_trainer(model, tokenizer, train_rows: list[dict], held_out_rows: list[dict] | None, algo,
                               common_args: dict, peft_config=None) -> AlignRewardTrainer:
    """The trainer for `algo` (RewardModelAlgorithmConfig) on canonical rows (align.data.preferences).

    Tokenizes, attaches anchors (gaussian_anchor) or fits the propensity / noise models (causal_rm), records in
    `model.config.align_reward` what scoring needs later (objective, head, thresholds, noise rates), and builds
    AlignRewardTrainer / AlignCausalRMTrainer with TRL's RewardConfig.
    """
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
        features = functools.partial(features_on_every_process, model, [row["input_ids"] for row in train],
                                     tokenizer.pad_token_id)
        with _as_data_error():
            record.update(causal_rm_inputs(features, train, noise_correction=c.noise_correction,
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
    trainer_class = AlignCausalRMTrainer if objective == "causal_rm" else AlignRewardTrainer
    args = _reward_config(algo, common_args, held_out=bool(held_out))
    return trainer_class(model=model, args=args, data_collator=RewardCollator(tokenizer.pad_token_id),
                         train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held_out) if held_out else None,
                         processing_class=tokenizer, peft_config=peft_config, **kwargs)
