"""GRPO's settings and the checks across them: group-relative policy optimization on TRL's GRPOTrainer
(docs/grpo.md). SAGE and f-GRPO build on these."""

from __future__ import annotations

import ast
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from align.config import AlignConfig, ConfigError, TrainerConfig, source_class

# TRL 1.16's loss types, used only if the installed TRL's own list cannot be read (`grpo_loss_types`).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")  # "sequence" is GSPO
SCALE_REWARDS = ("group", "batch", "none")


@functools.lru_cache(maxsize=1)
def grpo_loss_types() -> tuple[str, ...]:
    """The loss types the installed TRL's GRPOConfig accepts (algorithm.loss_type), from the "Supported values are
    ..." sentence of its `loss_type` field, read from the source file (`source_class`). TRL keeps no list of them in
    code; should the sentence ever change shape, the loss types TRL 1.16 documents are used."""
    grpo_config = source_class("trl", "trainer/grpo_config.py", "GRPOConfig")
    for node in ast.walk(grpo_config) if grpo_config else ():
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
            help_text = next((v.value for call in ast.walk(node) if isinstance(call, ast.Dict)
                              for k, v in zip(call.keys, call.values)
                              if getattr(k, "value", None) == "help" and isinstance(v, ast.Constant)), "")
            supported = re.search(r"Supported values are (.*?)\.(\s|$)", help_text)
            if supported and (names := re.findall(r"'(\w+)'", supported.group(1))):
                return tuple(names)
    return GRPO_LOSS_TYPES


@dataclass
class GRPOAlgorithmConfig:
    name: str = "grpo"
    loss_type: str = "dapo"  # any loss type of the installed TRL (grpo_loss_types): grpo, dapo, dr_grpo, cispo, ...
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    num_generations: int = 8
    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    scale_rewards: str = "group"  # group | batch | none
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    steps_per_generation: Optional[int] = None  # default: gradient_accumulation_steps
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    trl: Dict[str, Any] = field(default_factory=dict)  # further GRPOConfig fields, passed through as given

    limits: ClassVar[dict] = {
        "loss_type": grpo_loss_types, "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS,
        "num_generations": ">= 2; group-relative advantages need a group", "beta": ">= 0; 0 loads no reference",
        "epsilon": "> 0", "epsilon_high": "> 0", "scale_rewards": SCALE_REWARDS, "temperature": "> 0",
        "top_p": "(0, 1]", "max_completion_length": ">= 1", "steps_per_generation": ">= 1",
        "num_iterations": ">= 1", "vllm_mode": ("colocate", "server")}


def generation_batch_size(algo: GRPOAlgorithmConfig, trainer: TrainerConfig, processes: int) -> tuple[int, str]:
    """Completions per generation round across all processes, and the arithmetic that produced it."""
    steps = algo.steps_per_generation or trainer.gradient_accumulation_steps
    size = trainer.per_device_train_batch_size * processes * steps
    source = "steps_per_generation" if algo.steps_per_generation else "gradient_accumulation_steps"
    return size, (f"per_device_train_batch_size {trainer.per_device_train_batch_size} x processes {processes} x "
                  f"{source} {steps} = {size}")


def cycle_steps(steps_per_generation: int, num_iterations: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps after which a GRPO generation is used up (TRL reuses one generated batch for
    steps_per_generation x num_iterations micro-batches): the steps where a checkpoint holds no buffered rollout."""
    micro_steps = steps_per_generation * num_iterations
    return micro_steps // math.gcd(micro_steps, gradient_accumulation_steps)


def generation_cycle_steps(algo: GRPOAlgorithmConfig, trainer: TrainerConfig) -> int:
    """`cycle_steps` of a config (steps_per_generation defaults to gradient_accumulation_steps)."""
    accumulation = trainer.gradient_accumulation_steps
    return cycle_steps(algo.steps_per_generation or accumulation, algo.num_iterations, accumulation)


def check_grpo(cfg: AlignConfig, processes: int) -> None:
    """Checkpoints at generation-cycle boundaries, whole groups per generation batch, at least one reward source."""
    algo = cfg.algorithm
    multiple = generation_cycle_steps(algo, cfg.trainer)
    if cfg.trainer.save_steps % multiple:
        raise ConfigError(
            f"trainer.save_steps {cfg.trainer.save_steps} must be a multiple of {multiple}: one generation is used "
            f"for {multiple} optimizer steps (algorithm.steps_per_generation x algorithm.num_iterations over "
            f"trainer.gradient_accumulation_steps), and a checkpoint inside that cycle could not be resumed exactly.")
    size, arithmetic = generation_batch_size(algo, cfg.trainer, processes)
    if size % algo.num_generations:
        raise ConfigError(
            f"generation batch {size} is not divisible by num_generations {algo.num_generations}: {arithmetic}. "
            f"Change one of these so the product is a multiple of {algo.num_generations}."
        )
    if not cfg.reward.sources:
        raise ConfigError("reward.sources is empty; GRPO needs at least one reward source (e.g. reward=math).")
