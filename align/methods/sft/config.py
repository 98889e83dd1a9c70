"""Supervised fine-tuning's settings: TRL's SFTTrainer on prompt + completion rows (also the warm start's trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict


@dataclass
class SFTAlgorithmConfig:
    name: str = "sft"
    completion_column: str = "solution"
    max_length: int = 512
    trl: Dict[str, Any] = field(default_factory=dict)  # further SFTConfig fields, passed through as given

    limits: ClassVar[dict] = {"max_length": ">= 1"}
