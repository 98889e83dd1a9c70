"""Arguments shared by every TRL trainer align builds: run directory, schedule, precision, saving, tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from align.config import AlignConfig, world_size
from align.models import resolve_dtype


def training_arguments(config: AlignConfig, run_dir: Path, report_to: list[str], run_name: str) -> dict[str, Any]:
    """Keyword arguments common to TRL's GRPOConfig / SFTConfig, derived from `config.trainer` and `config.model`."""
    t = config.trainer
    dtype = resolve_dtype(config.model.dtype)
    on_gpu = torch.cuda.is_available()
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
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        # TRL defaults to bf16; CPU kernels are fp32, so precision follows the model's dtype.
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        report_to=report_to,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # reward sources read the dataset's extra columns
        disable_tqdm=False,
    )
    if not on_gpu and world_size() > 1:
        args["ddp_backend"] = "gloo"  # the only torch.distributed backend on CPU (DDP and DeepSpeed alike)
    args.update(t.trl)
    return args
