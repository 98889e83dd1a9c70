"""GRPO: group-relative policy optimization on TRL's GRPOTrainer (docs/grpo.md)."""

from align.console import GRPO_COLUMNS
from align.methods.grpo.config import GRPOAlgorithmConfig, check_grpo
from align.registry import GRPO_CONFIG, Method, register_method

register_method(Method(name="grpo", config=GRPOAlgorithmConfig, trl_config=GRPO_CONFIG, check=check_grpo,
                       steps="align.methods.grpo.steps", progress=GRPO_COLUMNS, warm_start=True))
