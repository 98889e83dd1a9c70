"""What every method's run steps share: TRL trainer arguments from the config, and the policy methods' data, reward
sources, model loading and held-out accuracy (GRPO, SAGE, f-GRPO, f-HAL and SFT prepare and build alike)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from peft import LoraConfig

from align.config import AlignConfig, DataConfig
from align.data import load_splits
from align.distributed import cpu_backend
from align.evaluation import HeldOutAccuracy
from align.models import load_causal_lm, mixed_precision_flags
from align.preemption import STOP
from align.registry import Built, Prepared, RunContext
from align.rewards import BUILTIN_REWARDS, build_reward_sources, guard, preflight, resolve_reward

log = logging.getLogger("align")


def training_arguments(config: AlignConfig, run_dir: Path, report_to: list[str], run_name: str) -> dict[str, Any]:
    """Keyword arguments common to TRL's GRPOConfig / SFTConfig, derived from `config.trainer` and `config.model`."""
    t = config.trainer
    args = dict(
        output_dir=str(run_dir),
        run_name=run_name,
        seed=t.seed,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        **mixed_precision_flags(config.model.dtype),
        report_to=report_to,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # reward sources read the dataset's extra columns
        disable_tqdm=False,
    )
    if cpu_backend():
        args["ddp_backend"] = cpu_backend()  # the only torch.distributed backend on CPU (DDP and DeepSpeed alike)
    args.update(t.trl)
    return args


def peft_config(config: AlignConfig) -> LoraConfig | None:
    """The LoRA adapter `model.lora` asks for, or None (every weight trains)."""
    lora = config.model.lora
    if not lora.r:
        return None
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def required_columns(config: AlignConfig, completion_column: str | None = None) -> dict[str, str | None]:
    """The columns a policy run reads -> the setting that names each (None: a canonical column, mapped by
    data.columns): the prompt, the answer where a built-in reward source or held-out accuracy checks against it,
    what the warm start trains on, and `completion_column` (SFT's, named by algorithm.completion_column)."""
    columns = {"prompt": None}
    if completion_column:
        columns[completion_column] = "algorithm.completion_column"
        return columns
    # A built-in that takes an `answer` argument checks against the answer column (format_boxed does not).
    builtins = [BUILTIN_REWARDS[s.name] for s in config.reward.sources if s.name in BUILTIN_REWARDS]
    if config.eval.enabled or any("answer" in inspect.signature(fn).parameters for fn in builtins):
        columns["answer"] = None
    if config.warm_start.max_steps:
        columns.setdefault(config.warm_start.completion_column, "warm_start.completion_column")
        if config.warm_start.hints_column:
            columns.setdefault(config.warm_start.hints_column, "warm_start.hints_column")
    return columns


def prepare_policy(config: AlignConfig, *, rewards: bool = True, completion_column: str | None = None) -> Prepared:
    """A policy method's data and reward sources, each checked before the run directory opens: the training and
    held-out splits, the reward sources (`rewards`) tried on two training rows, and the held-out metric. `extra`:
    rewards, weights, verifier (None when held-out accuracy is off or there is no held-out split)."""
    train_dataset, held_out = load_splits(config.data, required=required_columns(config, completion_column))
    sources, weights = build_reward_sources(config.reward.sources) if rewards else ([], [])
    if sources:
        preflight(sources, train_dataset.select(range(min(2, len(train_dataset)))).to_list())
    verifier = guard(resolve_reward(config.eval.metric), config.eval.metric) if config.eval.enabled else None
    if verifier is not None and held_out is None:
        log.warning("eval.enabled but the data has no held-out split (data.eval_split / data.eval_size); "
                    "held-out accuracy is skipped.")
        verifier = None
    return Prepared(train_dataset=train_dataset, held_out=held_out,
                    extra={"rewards": sources, "weights": weights, "verifier": verifier})


def eval_task_name(data: DataConfig) -> str:
    """The task name held-out results are filed under: the data source (and subset / synthetic task)."""
    if data.source == "synthetic":
        return f"synthetic/{data.synthetic.task}"
    return data.source + (f"/{data.subset}" if data.subset else "")


def build_policy(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext,
                 make_trainer: Callable[[Any, dict[str, Any]], Any]) -> Built:
    """Load the policy from `run.model_path`, build its trainer with `make_trainer(model, common_args)`, and attach
    held-out accuracy (greedy, no hint; before and after training, and every eval.every_steps) when configured."""
    STOP.phase = "model loading"
    model = load_causal_lm(run.model_path, dtype=config.model.dtype, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code,
                           attn_implementation=config.model.attn_implementation,
                           load_in_4bit=config.model.load_in_4bit)
    trainer = make_trainer(model, training_arguments(config, run.dir, run.report_to, run.name))
    verifier, held_out = prepared.extra.get("verifier"), None
    if verifier is not None:
        e = config.eval
        rows = prepared.held_out.select(range(min(e.max_samples, len(prepared.held_out)))).to_list()
        held_out = HeldOutAccuracy(trainer, tokenizer, rows, verifier, run.dir, e.max_new_tokens, e.batch_size,
                                   e.every_steps, task=eval_task_name(config.data), metric=e.metric)
        trainer.add_callback(held_out)
    return Built(trainer, held_out)
