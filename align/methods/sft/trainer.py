"""SFT on reference solutions: TRL's SFTTrainer on prompt-completion chats, loss on the completion only.

Used as an algorithm of its own (`algorithm=sft`) and as the warm-start stage before RL (`warm_start.max_steps`).
"""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from align.checkpoints import CompleteCheckpoints
from align.tracking import RedactedArguments


def to_prompt_completion(dataset: Dataset, completion_column: str) -> Dataset:
    """Rows `{prompt: messages, completion: [assistant message]}` built from `completion_column`."""
    def convert(row):
        return {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": row[completion_column]}]}

    return dataset.map(convert, remove_columns=dataset.column_names)


class AlignSFTTrainer(CompleteCheckpoints, SFTTrainer):
    """TRL's SFT trainer with checkpoints that are marked complete once fully written."""


class AlignSFTConfig(RedactedArguments, SFTConfig):
    """TRL's SFTConfig, logged and pickled without credentials."""


def build_sft_trainer(model, tokenizer, train_dataset: Dataset, completion_column: str | None, max_length: int,
                      common_args: dict, trl_overrides: dict | None = None, callbacks=None,
                      peft_config=None) -> SFTTrainer:
    """SFT on `completion_column` of `train_dataset`; `completion_column=None`: the rows already are
    prompt/completion chats."""
    if completion_column is not None:
        train_dataset = to_prompt_completion(train_dataset, completion_column)
    args = AlignSFTConfig(**{**common_args, "max_length": max_length, "completion_only_loss": True,
                             "remove_unused_columns": True, **(trl_overrides or {})})
    return AlignSFTTrainer(model=model, args=args, train_dataset=train_dataset,
                      processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)
