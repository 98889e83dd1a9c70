"""f-GRPO and f-HAL trainers: GRPO subclasses whose per-token loss is the f-divergence loss of
align/methods/fgrpo/math.py (the paper, the loss, the divergences and the decisions about them are in its docstring).

Haldar, Mei, Lin, Xing, Song, "f-GRPO and Beyond: Divergence-Based Reinforcement Learning Algorithms for General
LLM Alignment" (arXiv 2602.05946); the method as implemented is specified in specs/fgrpo.md.

Decisions the spec leaves open (those about the training loop):
- `fgrpo_token_loss` returns the token loss unreduced, (B, T); the trainer masks padding and takes a token mean.
  The spec's "over the group's completion tokens" allows two readings, both offered (`algorithm.normalization`):
  `batch` (default, used by the benchmarks): one mean over all completion tokens of the generation batch, TRL's
  `dapo` normalisation, so a group's weight grows with its completions' length;
  `group`: a mean over each group's completion tokens, then a mean over groups (`group_token_weights`), so every
  group weighs the same whatever its length. Either way gradient accumulation and several processes give the same
  update as one big batch.
- The loss uses the current policy and the reference only: there is no importance ratio to the sampling policy, so
  f-GRPO is on-policy as specified (steps_per_generation == gradient_accumulation_steps, num_iterations 1, the
  defaults). TRL's vLLM importance-sampling correction is not applied.
- f-HAL: each optimizer step draws `pairs_per_step` pairs per process (its own seeded stream), split evenly over the
  step's gradient-accumulation micro-batches; per micro-batch the loss is lam * f-GRPO + (1 - lam) * L_fPA / accum,
  so over the step it is lam * f-GRPO + (1 - lam) * (mean over the step's pairs). The pairs' r is the sequence sum
  of beta * (log pi_theta - log pi_ref) over response tokens, clamped like the token r.
"""

from __future__ import annotations

import random

import torch
from transformers.utils import logging
from trl.trainer.utils import pad, use_adapter

from align.data.pairs import load_pairs
from align.methods.fgrpo.config import FGRPOAlgorithmConfig, FHALAlgorithmConfig
from align.methods.fgrpo.math import clamp_log_ratio, fgrpo_token_loss, fpa_loss, get_divergence, group_token_weights
from align.methods.grpo.trainer import AlignGRPOTrainer, build_grpo_trainer

logger = logging.get_logger(__name__)


def token_mean_normalizer(trainer, num_items_in_batch: torch.Tensor, training: bool) -> torch.Tensor:
    """TRL's `dapo` normaliser: completion tokens of the generation batch, per process and accumulation window."""
    normalizer = num_items_in_batch.clamp(min=1.0) / trainer.accelerator.num_processes
    if training:
        normalizer = normalizer * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
    return normalizer


class AlignFGRPOTrainer(AlignGRPOTrainer):
    """AlignGRPOTrainer whose per-token loss is the f-divergence loss; generation, rewards, advantages and logging stay
    GRPO's. Logs every step: fgrpo/loss_positive, fgrpo/loss_negative (the two parts of the loss), fgrpo/r_positive,
    fgrpo/r_negative (mean r on D+ / D- tokens), fgrpo/clamp_frac (tokens whose r hit the clamp), and entropy."""

    def __init__(self, *args, fgrpo: FGRPOAlgorithmConfig, **kwargs):
        super().__init__(*args, **kwargs)
        if self.beta <= 0:
            raise ValueError("f-GRPO needs a reference model: beta must be > 0.")
        self.divergence = get_divergence(fgrpo.divergence)
        self.clamp = (float(fgrpo.clamp[0]), float(fgrpo.clamp[1]))
        self.normalization = fgrpo.normalization

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.normalization == "group":
            # Groups may straddle processes: weigh over the gathered batch (in TRL's process order), keep this slice.
            lengths = self.accelerator.gather(output["completion_mask"].sum(dim=1))
            group_size = self.num_generations if self.model.training else self.num_generations_eval
            weights = group_token_weights(lengths, group_size)
            rows = output["completion_mask"].size(0)
            index = self.accelerator.process_index
            output["token_weight"] = weights[index * rows:(index + 1) * rows]
        return output

    def _token_scale(self, inputs, normalizer: torch.Tensor) -> torch.Tensor:
        """What (loss * mask) is multiplied by before the sum: 1 / normalizer (batch), or the group weights
        rescaled by the same normaliser so that accumulation and processes treat both normalisations alike."""
        if self.normalization == "batch":
            return 1.0 / normalizer
        return inputs["token_weight"][:, None] * inputs["num_items_in_batch"].clamp(min=1.0) / normalizer

    def _compute_loss(self, model, inputs):
        training = self.model.training
        mode = "train" if training else "eval"
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], mask], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        r, hit = clamp_log_ratio(self.beta * (logps - inputs["ref_per_token_logps"]), *self.clamp)
        advantages = inputs["advantages"]
        loss, positive, negative = fgrpo_token_loss(r, advantages, self.divergence)
        normalizer = token_mean_normalizer(self, inputs["num_items_in_batch"], training)
        mask = mask.to(loss.dtype)
        scale = self._token_scale(inputs, normalizer)
        total = (loss * mask * scale).sum()

        def global_mean(x: torch.Tensor, where: torch.Tensor) -> float:
            sums = torch.stack([(x * where).sum(), where.sum()]).detach().float()
            sums = self.accelerator.reduce(sums, reduction="sum")
            return (sums[0] / sums[1].clamp(min=1.0)).item()

        is_positive = mask * (advantages > 0).to(mask.dtype)[:, None]
        is_negative = mask * (advantages < 0).to(mask.dtype)[:, None]
        # Each micro-batch's loss is its share of the step's token mean; logged values are rescaled to the step's
        # scale (TRL averages the micro-batches' entries), so the parts add up to the logged loss.
        steps = self.current_gradient_accumulation_steps if training else 1
        metrics = self._metrics[mode]
        metrics["fgrpo/loss_positive"].append(self.accelerator.reduce(
            (positive * mask * scale).sum().detach() * steps, reduction="mean").item())
        metrics["fgrpo/loss_negative"].append(self.accelerator.reduce(
            (negative * mask * scale).sum().detach() * steps, reduction="mean").item())
        metrics["fgrpo/r_positive"].append(global_mean(r, is_positive))
        metrics["fgrpo/r_negative"].append(global_mean(r, is_negative))
        metrics["fgrpo/clamp_frac"].append(global_mean(hit.to(mask.dtype), mask))
        metrics["entropy"].append(global_mean(entropies, mask))
        return total


def tokenize_pairs_truncated(pairs: list[dict], tokenizer,
                             max_length: int) -> tuple[list[tuple[list[int], list[int], list[int]]], int]:
    """((prompt ids, chosen ids, rejected ids) per usable pair, number of pairs dropped).

    The prompt goes through the chat template with the generation prompt; a response is its tokens plus EOS, or,
    when prompt + response exceed `max_length`, its first tokens without EOS (a cut answer must not teach stopping).
    A pair is dropped when its prompt leaves fewer than 8 tokens for the responses, or when truncation makes the
    chosen and rejected responses identical.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token_id; f-HAL's pairs end their responses with it.")
    out, dropped = [], 0
    for pair in pairs:
        prompt = list(tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"])
        room = max_length - len(prompt)
        responses = []
        for key in ("chosen", "rejected"):
            ids = tokenizer(pair[key], add_special_tokens=False)["input_ids"] + [eos]
            responses.append(ids if len(ids) <= room else ids[:room])
        if room < 8 or responses[0] == responses[1]:
            dropped += 1
            continue
        out.append((prompt, *responses))
    return out, dropped


class AlignFHALTrainer(AlignFGRPOTrainer):
    """f-HAL: lam * f-GRPO on the on-policy groups + (1 - lam) * the pairs loss L_fPA on offline preference pairs,
    under the same divergence. Logs fhal/on_policy_loss, fhal/pairs_loss, fhal/pair_accuracy (pairs whose chosen
    response has the strictly larger r), fhal/pair_clamp_frac (pair responses whose r hit the clamp) next to
    f-GRPO's metrics."""

    def __init__(self, *args, fgrpo: FHALAlgorithmConfig, pairs: list[dict], **kwargs):
        super().__init__(*args, fgrpo=fgrpo, **kwargs)
        if not pairs:
            raise ValueError("f-HAL needs offline preference pairs (algorithm.pairs).")
        self.lam = fgrpo.lam
        self.pairs_per_step = fgrpo.pairs_per_step
        self.pairs, dropped = tokenize_pairs_truncated(pairs, self.processing_class, fgrpo.pairs.max_length)
        if dropped:
            logger.warning("f-HAL: %d of %d pairs dropped (prompt too long for algorithm.pairs.max_length %d, or "
                           "chosen and rejected identical after truncation).", dropped, len(pairs),
                           fgrpo.pairs.max_length)
        if not self.pairs:
            raise ValueError(f"f-HAL: no usable pairs left; raise algorithm.pairs.max_length "
                             f"({fgrpo.pairs.max_length}).")
        self._draws = (None, 0)  # (global step, micro-batches drawn in it)

    def _compute_loss(self, model, inputs):
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1
        on_policy = super()._compute_loss(model, inputs) if self.lam > 0 else None
        r_chosen, r_rejected, clamped = self.pair_log_ratios(model, self._draw_pairs(training, accumulation))
        pairs_loss = fpa_loss(r_chosen, r_rejected, self.divergence)
        metrics = self._metrics["train" if training else "eval"]
        metrics["fhal/pairs_loss"].append(self.accelerator.reduce(pairs_loss.detach(), reduction="mean").item())
        metrics["fhal/pair_accuracy"].append(self.accelerator.reduce(
            (r_chosen > r_rejected).float().mean().detach(), reduction="mean").item())
        metrics["fhal/pair_clamp_frac"].append(self.accelerator.reduce(clamped.float().mean(), reduction="mean").item())
        loss = (1 - self.lam) * pairs_loss / accumulation
        if on_policy is not None:
            metrics["fhal/on_policy_loss"].append(
                self.accelerator.reduce(on_policy.detach() * accumulation, reduction="mean").item())
            loss = loss + self.lam * on_policy
        return loss

    def _draw_pairs(self, training: bool, accumulation: int) -> list:
        """This micro-batch's pairs: a function of (seed, process, global step, micro-batch), so a resumed run draws
        exactly what an uninterrupted one would, with no sampler state to checkpoint; evaluation draws its own."""
        step = self.state.global_step
        index = self._draws[1] if self._draws[0] == step else 0
        self._draws = (step, index + 1)
        rng = random.Random(f"{self.args.seed}/{self.accelerator.process_index}/{step}/{index}/{training}")
        return [self.pairs[rng.randrange(len(self.pairs))] for _ in range(max(self.pairs_per_step // accumulation, 1))]

    def pair_log_ratios(self, model, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequence-level r = beta * sum over response tokens of (log pi_theta - log pi_ref), clamped: (P,) for the
        chosen and the rejected responses, and the (2P,) mask of those that hit the clamp."""
        prompts = [torch.tensor(p) for p, _, _ in pairs] * 2
        responses = [torch.tensor(c) for _, c, _ in pairs] + [torch.tensor(r) for _, _, r in pairs]
        pad_id = self.processing_class.pad_token_id
        prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left")
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        response_ids = pad(responses, padding_value=pad_id, padding_side="right")
        response_mask = pad([torch.ones_like(r) for r in responses], padding_value=0, padding_side="right")
        device = self.accelerator.device
        input_ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1).to(device)
        response_mask = response_mask.to(device)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, response_ids.size(1))
        with torch.no_grad():
            ref = self._reference_logps(input_ids, attention_mask, response_ids.size(1))
        r = self.beta * ((logps - ref) * response_mask).sum(-1)
        r, hit = clamp_log_ratio(r, *self.clamp)
        return r[:len(pairs)], r[len(pairs):], hit

    def _reference_logps(self, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        """Per-token reference log-probs, the way TRL gets them: the reference model, or the PEFT base model."""
        if self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(self.ref_model, input_ids, attention_mask,
                                                           logits_to_keep)[0]
        unwrapped = self.accelerator.unwrap_model(self.model)
        with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
            return self._get_per_token_logps_and_entropies(self.model, input_ids, attention_mask, logits_to_keep)[0]


def build_fgrpo_trainer(model, tokenizer, train_dataset, rewards: list, weights: list[float],
                        algo: FGRPOAlgorithmConfig, common_args: dict, *, pairs: list[dict] | None = None,
                        **options) -> AlignFGRPOTrainer:
    """f-GRPO, or f-HAL when `algo` is an FHALAlgorithmConfig (its pairs are loaded from `algo.pairs` unless given)."""
    if isinstance(algo, FHALAlgorithmConfig):
        extra = {"trainer_class": AlignFHALTrainer, "pairs": pairs if pairs is not None else load_pairs(algo.pairs)}
    else:
        extra = {"trainer_class": AlignFGRPOTrainer}
    return build_grpo_trainer(model, tokenizer, train_dataset, rewards, weights, algo, common_args, fgrpo=algo,
                              **extra, **options)
