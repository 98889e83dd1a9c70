"""SAGE's settings and checks: GRPO whose collapsed groups are re-rolled with hints the policy writes itself
(docs/sage.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from align.config import AlignConfig, ConfigError
from align.methods.grpo.config import GRPOAlgorithmConfig, check_grpo

SAGE_SCHEDULES = ("sage", "sage_light")
SAGE_TRIGGERS = ("no_success", "zero_variance")
SAGE_LIGHT_RULES = ("paper", "bidirectional")

HINT_SYSTEM_PROMPT = (
    "You are a teacher who writes hints. You see a problem and its reference solution and write three progressive "
    "hints that help a student solve the problem without giving the final answer away."
)
HINT_USER_TEMPLATE = (
    "Problem:\n{question}\n\nReference solution:\n{solution}\n\nReply with only a JSON object "
    '{"level_1": "...", "level_2": "...", "level_3": "..."}. level_1 names the key concept or approach; level_2 gives '
    "more direction on the method or the intermediate steps; level_3 gives detailed guidance that still leaves the "
    "student to finish. Each level builds on the previous one. Never state the final answer."
)


@dataclass
class HintConfig:
    """How SAGE asks the policy for hints and how a hint enters the solve prompt (see docs/sage.md)."""

    solution_column: str = "solution"  # privileged reference solution; rows without one are never hinted
    system_prompt: Optional[str] = HINT_SYSTEM_PROMPT
    user_template: str = HINT_USER_TEMPLATE  # fields: {question} {solution}
    solve_template: str = "{question}\n\nHere is a hint to help you:\n{hint}"  # fields: {question} {hint}
    temperature: float = 0.0  # 0 = greedy
    retry_temperature: float = 0.7  # retries of unparsable hints sample (a greedy retry would repeat itself)
    retries: int = 3
    max_tokens: int = 512
    leak_filter: bool = True  # drop hints that contain the verifier's answer string
    answer_column: str = "answer"  # what the leak filter looks for

    limits: ClassVar[dict] = {"temperature": ">= 0; 0 = greedy", "retry_temperature": ">= 0", "retries": ">= 0",
                              "max_tokens": ">= 1"}


@dataclass
class SAGEAlgorithmConfig(GRPOAlgorithmConfig):
    """GRPO whose collapsed groups are re-rolled with hints the policy writes itself (docs/sage.md)."""

    name: str = "sage"
    schedule: str = "sage"  # sage (probe + escalation every step) | sage_light (per-prompt level across epochs)
    trigger: str = "no_success"  # no_success | zero_variance: which groups count as collapsed (sage schedule)
    success_threshold: float = 0.0  # a completion succeeds when its reward is > this
    light_rule: str = "paper"  # paper (only raise) | bidirectional
    light_alpha: float = 0.35
    light_low: float = 0.1
    hint: HintConfig = field(default_factory=HintConfig)

    limits: ClassVar[dict] = {"schedule": SAGE_SCHEDULES, "trigger": SAGE_TRIGGERS, "success_threshold": "finite",
                              "light_rule": SAGE_LIGHT_RULES, "light_alpha": "[0, 1]", "light_low": "[0, 1]"}


def check_sage(cfg: AlignConfig, processes: int) -> None:
    """GRPO's checks, then SAGE-LIGHT's thresholds, the hint templates' fields, and whole groups per process."""
    check_grpo(cfg, processes)
    algo, trainer = cfg.algorithm, cfg.trainer
    if not algo.light_low <= algo.light_alpha:
        raise ConfigError(f"need 0 <= algorithm.light_low ({algo.light_low}) <= algorithm.light_alpha "
                          f"({algo.light_alpha}) <= 1.")
    h = algo.hint
    for key, fields in (("user_template", ("{question}", "{solution}")), ("solve_template", ("{question}", "{hint}"))):
        missing = [f for f in fields if f not in getattr(h, key)]
        if missing:
            raise ConfigError(f"algorithm.hint.{key} must contain {' and '.join(missing)}.")
    # Each rank hints and re-rolls its own groups, so a group must not straddle two ranks.
    steps = algo.steps_per_generation or trainer.gradient_accumulation_steps
    local = trainer.per_device_train_batch_size * steps
    if local % algo.num_generations:
        raise ConfigError(
            f"SAGE re-rolls whole groups on the rank that holds them, so each process's generation batch "
            f"(per_device_train_batch_size {trainer.per_device_train_batch_size} x steps {steps} = {local}) must be a "
            f"multiple of num_generations {algo.num_generations}."
        )
