"""f-GRPO's and f-HAL's run steps (align.registry): GRPO's, plus f-HAL's offline pairs, loaded before any model."""

from __future__ import annotations

from align.config import AlignConfig
from align.data.pairs import load_pairs
from align.methods.fgrpo.trainer import build_fgrpo_trainer
from align.methods.grpo import steps as grpo_steps
from align.registry import Built, Prepared, RunContext


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    prepared = grpo_steps.prepare(config, tokenizer)
    pairs = getattr(config.algorithm, "pairs", None)  # f-HAL's; f-GRPO has none
    prepared.extra["pairs"] = load_pairs(pairs) if pairs is not None else None
    return prepared


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    return grpo_steps.build(config, tokenizer, prepared, run, build_trainer=build_fgrpo_trainer,
                            pairs=prepared.extra["pairs"])
