"""SAGE and SAGE-LIGHT: GRPO whose collapsed groups are re-rolled with hints the policy writes itself (docs/sage.md)."""

from align.console import GRPO_COLUMNS
from align.methods.sage.config import SAGEAlgorithmConfig, check_sage
from align.registry import GRPO_CONFIG, Method, register_method

register_method(Method(name="sage", config=SAGEAlgorithmConfig, trl_config=GRPO_CONFIG, check=check_sage,
                       steps="align.methods.sage.steps", progress=GRPO_COLUMNS, warm_start=True))
