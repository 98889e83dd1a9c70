"""f-GRPO's and f-HAL's settings and checks: GRPO with the clipped surrogate replaced by a variational f-divergence
loss, and its hybrid with an offline pairs loss (docs/fgrpo.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

from align.config import AlignConfig, ConfigError, PairsConfig
from align.methods.grpo.config import GRPOAlgorithmConfig, check_grpo

FGRPO_DIVERGENCES = ("kl", "reverse_kl", "pearson", "hellinger", "js", "tv")
FGRPO_NORMALIZATIONS = ("batch", "group")

@dataclass
class FGRPOAlgorithmConfig(GRPOAlgorithmConfig):
    """GRPO with the clipped surrogate replaced by a variational f-divergence loss (docs/fgrpo.md)."""

    name: str = "fgrpo"
    divergence: str = "pearson"  # kl | reverse_kl | pearson | hellinger | js | tv
    beta: float = 0.1  # r = beta * (log pi - log pi_ref); must be > 0 (the reference model is part of the loss)
    clamp: List[float] = field(default_factory=lambda: [-10.0, 10.0])  # range r is clamped to
    normalization: str = "batch"  # token mean over the generation batch (batch) or per group, then over groups

    limits: ClassVar[dict] = {"divergence": FGRPO_DIVERGENCES, "clamp": "finite",
                              "normalization": FGRPO_NORMALIZATIONS}


@dataclass
class FHALAlgorithmConfig(FGRPOAlgorithmConfig):
    """f-HAL: lam * f-GRPO on on-policy groups + (1 - lam) * the f-divergence pairs loss on offline pairs."""

    name: str = "fhal"
    divergence: str = "js"
    lam: float = 0.5  # weight of the on-policy f-GRPO term (the paper's lambda)
    pairs_per_step: int = 8  # offline pairs per process per optimizer step
    pairs: PairsConfig = field(default_factory=PairsConfig)

    limits: ClassVar[dict] = {"lam": "[0, 1]; 1 = pure f-GRPO, 0 = pure pairs loss", "pairs_per_step": ">= 1"}


def check_fgrpo(cfg: AlignConfig, processes: int) -> None:
    """GRPO's checks, then a reference model in the loss, a valid clamp, and nothing off-policy (the loss has no
    importance ratio)."""
    check_grpo(cfg, processes)
    algo, trainer = cfg.algorithm, cfg.trainer
    if algo.beta <= 0:
        raise ConfigError(f"algorithm.beta is {algo.beta}, but f-GRPO's loss is built on r = beta * (log pi - log "
                          f"pi_ref): it needs a reference model and beta > 0 (e.g. algorithm.beta=0.1).")
    if len(algo.clamp) != 2 or not algo.clamp[0] < 0 < algo.clamp[1]:
        raise ConfigError(f"algorithm.clamp must be [low, high] with low < 0 < high, got {list(algo.clamp)}.")
    if algo.loss_type != "dapo":
        raise ConfigError(f"algorithm.loss_type is '{algo.loss_type}', but f-GRPO has its own loss (a token mean "
                          f"over the batch's completion tokens); leave loss_type at dapo.")
    # The loss has no importance ratio to the sampling policy: anything that trains on stale or differently-sampled
    # completions, or reweights tokens through GRPO's surrogate, would be silently ignored.
    off_policy = [f"{key} {value}" for key, value, ok in (
        ("algorithm.num_iterations", algo.num_iterations, algo.num_iterations == 1),
        ("algorithm.steps_per_generation", algo.steps_per_generation,
         algo.steps_per_generation in (None, trainer.gradient_accumulation_steps)),
        ("algorithm.use_vllm", algo.use_vllm, not algo.use_vllm),
        ("algorithm.importance_sampling_level", algo.importance_sampling_level,
         algo.importance_sampling_level == "token"),
    ) if not ok]
    ignored = ("top_entropy_quantile", "entropy_coef", "off_policy_mask_threshold",
               "vllm_importance_sampling_correction")
    off_policy += [f"algorithm.trl.{key}" for key in ignored if key in algo.trl]
    if off_policy:
        raise ConfigError(f"f-GRPO's loss is on-policy and has no importance ratio or clipping, so these settings "
                          f"would be ignored: {', '.join(off_policy)}. Leave them at their defaults "
                          f"(steps_per_generation = gradient_accumulation_steps, num_iterations 1, no vLLM).")


def check_fhal(cfg: AlignConfig, processes: int) -> None:
    """f-GRPO's checks, then the offline pairs' columns and their split over the micro-batches of a step."""
    check_fgrpo(cfg, processes)
    algo, trainer = cfg.algorithm, cfg.trainer
    pairs = algo.pairs
    if (pairs.response_columns is None) != (pairs.preferred_index_column is None) or (
            pairs.response_columns is not None and len(pairs.response_columns) != 2):
        raise ConfigError("algorithm.pairs.response_columns (two columns) and algorithm.pairs."
                          "preferred_index_column go together: set both, or neither to use chosen/rejected.")
    if algo.pairs_per_step % trainer.gradient_accumulation_steps:
        raise ConfigError(f"algorithm.pairs_per_step {algo.pairs_per_step} is split over the "
                          f"{trainer.gradient_accumulation_steps} micro-batches of an optimizer step "
                          f"(trainer.gradient_accumulation_steps); make it a multiple of that.")
