"""The SFT warm start: supervised fine-tuning on reference solutions before a policy method, in the same run
directory (`warm_start/`), resumable like the main phase (docs/architecture.md, "How a run flows")."""

from __future__ import annotations

import logging
import shutil

from datasets import concatenate_datasets

from align.checkpoints import checkpoints
from align.config import AlignConfig, ConfigError
from align.console import SFT_COLUMNS
from align.data import rows_to_dataset
from align.methods.common import training_arguments
from align.methods.sage.hints import hint_demonstrations
from align.methods.sft.trainer import build_sft_trainer, to_prompt_completion
from align.models import load_causal_lm
from align.preemption import STOP
from align.progress import show_progress
from align.registry import RunContext
from align.runs import resume_checkpoint, save_final, train_stage

log = logging.getLogger("align")


def starting_model(config: AlignConfig, tokenizer, train_dataset, run: RunContext) -> str:
    """The model the method trains: `model.path`, or after a warm start its result. A resumed run keeps its
    warm-started model as the base (and the KL reference) without warming up again."""
    if not config.warm_start.max_steps:
        return run.model_path
    if run.checkpoint is None:
        return warm_start(config, tokenizer, train_dataset, run)
    final = run.dir / "warm_start" / "final"
    if not (final / "config.json").is_file():
        raise ConfigError(f"resume=auto: {final} is missing, but this run's checkpoints were trained from its warm "
                          f"start; restore it, or start a new run (another trainer.run_name).")
    return str(final)


def warm_start(config: AlignConfig, tokenizer, train_dataset, run: RunContext) -> str:
    """SFT on reference solutions; returns the path of the warm-started model, `warm_start/final`, which appears
    (by a rename) only once complete. A stop signal ends the warm start at a step boundary with a checkpoint in
    `warm_start/` and raises `Stopped`; with resume=auto the next attempt continues from that checkpoint, or reuses
    `warm_start/final` when the warm start had finished."""
    w, state = config.warm_start, run.state
    stage_dir = run.dir / "warm_start"
    final = stage_dir / "final"
    if final.is_dir():  # an earlier attempt of this run (resume=auto) finished the warm start
        if state.is_main_process:
            print(f"[align] resume=auto: the warm start is complete, training starts from {final}", flush=True)
        return str(final)
    STOP.phase = "the warm start"
    checkpoint = resume_checkpoint(config, stage_dir, state, stage="the warm start") if checkpoints(stage_dir) \
        else None
    common = training_arguments(config, stage_dir, report_to=[], run_name=f"{run.name}-warm-start")
    common.update(max_steps=w.max_steps, learning_rate=w.learning_rate, save_strategy="no",
                  per_device_train_batch_size=w.per_device_train_batch_size, lr_scheduler_type="cosine",
                  warmup_steps=min(10, w.max_steps // 10), gradient_accumulation_steps=1)
    model = load_causal_lm(run.model_path, dtype=config.model.dtype, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code)
    dataset = to_prompt_completion(train_dataset, w.completion_column)
    if w.hints_column:
        demos = hint_demonstrations(train_dataset.to_list(), config.algorithm.hint, w.hints_column,
                                    seed=config.trainer.seed)
        dataset = concatenate_datasets([dataset, rows_to_dataset(demos)]).shuffle(seed=config.trainer.seed)
    trainer = build_sft_trainer(model, tokenizer, dataset, None, max_length=1024, common_args=common)
    show_progress(trainer, SFT_COLUMNS, label="warm start")
    log.info("warm start: SFT for %d steps on '%s'%s", w.max_steps, w.completion_column,
             f" + hint writing and hinted solving from '{w.hints_column}'" if w.hints_column else "")
    train_stage(trainer, checkpoint, run.dir, phase="the warm start", end_phase="the warm start")
    staging = stage_dir / ".final-incomplete"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # an earlier attempt's export, cut short
    save_final(trainer, tokenizer, staging)
    state.wait_for_everyone()
    if state.is_main_process:
        staging.rename(final)
        for _, path in checkpoints(stage_dir):  # only a resume of the warm start needed them
            shutil.rmtree(path)
    state.wait_for_everyone()
    return str(final)
