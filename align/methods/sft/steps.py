"""SFT's run steps (align.registry): prompt + completion rows, then the model and TRL's SFTTrainer."""

from __future__ import annotations

from align.config import AlignConfig
from align.methods.common import build_policy, peft_config, prepare_policy
from align.methods.sft.trainer import build_sft_trainer
from align.registry import Built, Prepared, RunContext


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    return prepare_policy(config, rewards=False, completion_column=config.algorithm.completion_column)


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    algo = config.algorithm

    def make_trainer(model, common_args):
        return build_sft_trainer(model, tokenizer, prepared.train_dataset, algo.completion_column, algo.max_length,
                                 common_args=common_args, trl_overrides=algo.trl, peft_config=peft_config(config))

    return build_policy(config, tokenizer, prepared, run, make_trainer)
