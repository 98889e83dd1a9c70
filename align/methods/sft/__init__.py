"""Supervised fine-tuning on TRL's SFTTrainer (the warm start's trainer too)."""

from align.console import SFT_COLUMNS
from align.methods.sft.config import SFTAlgorithmConfig
from align.registry import SFT_CONFIG, Method, register_method

register_method(Method(name="sft", config=SFTAlgorithmConfig, trl_config=SFT_CONFIG, steps="align.methods.sft.steps",
                       progress=SFT_COLUMNS, warm_start=True))
