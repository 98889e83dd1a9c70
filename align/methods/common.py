"""Arguments shared by every TRL trainer align builds: run directory, schedule, precision, saving, tracking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from align.config import AlignConfig, world_size
from align.models import mixed_precision_flags


def cpu_backend() -> str | None:
    """The torch.distributed backend to request on a multi-process CPU launch (gloo), else None (launcher default)."""
    return "gloo" if not torch.cuda.is_available() and world_size() > 1 else None


def distributed_state():
    """accelerate's process state, initialised exactly as the trainers' TrainingArguments will initialise it."""
    from accelerate import PartialState

    kwargs = {"backend": cpu_backend()} if cpu_backend() else {}
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        kwargs["cpu"] = True  # what TrainingArguments does for the same environment
    return PartialState(**kwargs)


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
