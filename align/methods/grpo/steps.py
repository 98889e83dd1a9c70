"""GRPO's run steps (align.registry): the prompts and reward sources, then the policy and its trainer."""

from __future__ import annotations

from align.config import AlignConfig
from align.methods.common import build_policy, peft_config, prepare_policy
from align.methods.grpo.trainer import build_grpo_trainer
from align.registry import Built, Prepared, RunContext


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    return prepare_policy(config)


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext, *, build_trainer=build_grpo_trainer,
          **options) -> Built:
    """The policy and a GRPO-family trainer: `build_trainer` (SAGE's and f-GRPO's steps pass theirs) with
    `options` for it."""
    def make_trainer(model, common_args):
        return build_trainer(model, tokenizer, prepared.train_dataset, prepared.extra["rewards"],
                             prepared.extra["weights"], config.algorithm, common_args,
                             log_completions=config.logger.log_completions,
                             trust_remote_code=config.model.trust_remote_code, peft_config=peft_config(config),
                             **options)

    return build_policy(config, tokenizer, prepared, run, make_trainer)
