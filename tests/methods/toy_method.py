"""A method of one's own, added the way docs/architecture.md says, from outside align: SFT whose loss is scaled by
a setting, with one counter carried in its checkpoints. `ALIGN_METHODS=tests.methods.toy_method` makes
`python -m align.train algorithm=toy` run it (tests/methods/test_toy_method.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from trl import SFTTrainer

from align.checkpoints import CompleteCheckpoints
from align.config import AlignConfig, ConfigError
from align.console import SFT_COLUMNS
from align.methods.common import build_policy, prepare_policy
from align.methods.sft.trainer import AlignSFTConfig, to_prompt_completion
from align.registry import SFT_CONFIG, Built, Method, Prepared, RunContext, register_method


@dataclass
class ToyAlgorithmConfig:
    name: str = "toy"
    scale: float = 0.5  # the loss is this times the SFT loss
    completion_column: str = "solution"

    limits: ClassVar[dict] = {"scale": "> 0"}


def check_toy(config: AlignConfig, processes: int) -> None:
    if config.model.lora.r:
        raise ConfigError("algorithm=toy trains every weight; set model.lora.r=0.")


def scaled_loss(loss: torch.Tensor, scale: float) -> torch.Tensor:
    """The toy's math: the SFT loss times `scale`."""
    return scale * loss


class ToyTrainer(CompleteCheckpoints, SFTTrainer):
    algorithm_state_file = "toy_state.json"

    def __init__(self, *args, scale: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.losses_computed = scale, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.losses_computed += 1
        loss = scaled_loss(loss, self.scale)
        return (loss, outputs) if return_outputs else loss

    def algorithm_state(self) -> dict:
        return {"losses_computed": self.losses_computed}

    def load_algorithm_state(self, state: dict) -> None:
        self.losses_computed = state["losses_computed"]


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    return prepare_policy(config, rewards=False, completion_column=config.algorithm.completion_column)


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    rows = to_prompt_completion(prepared.train_dataset, config.algorithm.completion_column)

    def make_trainer(model, common_args):
        args = AlignSFTConfig(**common_args, max_length=256, completion_only_loss=True)
        return ToyTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                          scale=config.algorithm.scale)

    return build_policy(config, tokenizer, prepared, run, make_trainer)


register_method(Method(name="toy", config=ToyAlgorithmConfig, trl_config=SFT_CONFIG, check=check_toy, steps=__name__,
                       progress=SFT_COLUMNS))
