"""A run's life around its method: the run directory, resume, the train phase under stop signals, the final export,
and the report.

`align.train` opens a run (`open_run`: the shared directory, config.yaml, trackers, the checkpoint to resume), lets
the method build its trainer, and ends with `train_and_report`; a stop signal anywhere in between ends in
`stopped_summary` with what was kept. Every function that decides something for all ranks decides it on rank 0 and
shares it (`decided_by_main`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from align.audit import report as audit_report
from align.audit.prompts import AuditInputError
from align.audit.run import AuditConfig, run_audit
from align.checkpoints import (
    COMPLETE_MARKER,
    checkpoints,
    disk_full_reported,
    is_complete,
    newest_complete_checkpoint,
)
from align.config import AlignConfig, ConfigError
from align.console import describe_launch
from align.distributed import decided_by_main, distributed_state
from align.gate.align_results import step_files
from align.gate.cli import run_gate, write_reports
from align.gate.samples import GateInputError
from align.models import ModelLoadError, bf16_available
from align.plotting import plot_training_curves
from align.preemption import STOP, Preemption, after_stop
from align.registry import Built, Method, RunContext
from align.run_dir import claim_run_dir, mark_finished, mark_started, planned_run_dir, run_dir_problem
from align.tracking import finish_tracking, redact, start_tracking

log = logging.getLogger("align")


def shared_run_dir(config: AlignConfig, state) -> tuple[Path, str]:
    """Run directory and name, chosen on rank 0 and broadcast so every rank writes to the same place.

    Default name: <recipe or algorithm>-<timestamp>; in a multirun sweep <recipe or algorithm>-<sweep dir name>
    (whose timestamp is fixed at submission, so a requeued point finds its directory again). Each point of a sweep
    gets its job number appended (to the name, or as a subdirectory of an explicit output_dir). Refused on every
    rank: a non-empty directory that holds no align run (align never writes into someone else's files), and one
    whose run already started, unless resume=auto continues it with the same run-defining settings. A directory
    whose run failed before training began is reused.
    """
    def decide() -> tuple[str, str, str | None]:  # directory, name, error
        directory, name = planned_run_dir(config)
        return str(directory.resolve()), name, run_dir_problem(directory, config)

    directory, name, error = decided_by_main(state.is_main_process, state.num_processes, decide)
    if error:
        raise ConfigError(error)
    return Path(directory), name


def resume_checkpoint(config: AlignConfig, run_dir: Path, state, stage: str = "") -> str | None:
    """With resume=auto, the newest complete checkpoint in `run_dir` (chosen on rank 0, shared), else None; `stage`
    names what it continues in the announcement (e.g. "the warm start")."""
    if config.resume != "auto":
        return None

    def decide() -> tuple[str | None, str | None]:  # checkpoint, error
        newest = newest_complete_checkpoint(run_dir)
        processes = json.loads((newest / COMPLETE_MARKER).read_text()).get("processes") if newest else None
        if processes not in (None, state.num_processes):
            return None, (f"resume=auto: {newest} was written by {processes} processes, this launch has "
                          f"{state.num_processes}; optimizer shards and the data split across ranks depend on it. "
                          f"Launch {processes} processes to resume.")
        print(f"[align] resume=auto: continuing {stage + ' ' if stage else ''}from {newest.name}" if newest else
              "[align] resume=auto: no complete checkpoint yet, starting from the beginning", flush=True)
        return str(newest) if newest else None, None

    checkpoint, error = decided_by_main(state.is_main_process, state.num_processes, decide)
    if error:
        raise ConfigError(error)
    return checkpoint


def train_stage(trainer, checkpoint: str | None, run_dir: Path, phase: str = "training",
                end_phase: str = "the final evaluation") -> None:
    """`trainer.train()` from `checkpoint` (or the start). A stop signal ends it at the next step boundary that can
    be checkpointed, or after its `on_train_end` work (`end_phase`: align's final held-out evaluation), and raises
    `Stopped` once that step's checkpoint is kept (`stop_if_requested`)."""
    if trainer.accelerator.is_main_process:
        mark_started(run_dir)
    # Right after the Trainer's flow callback: callbacks that evaluate at step ends see the stop and skip.
    trainer.callback_handler.callbacks.insert(1, Preemption(getattr(trainer, "checkpoint_step_multiple", 1),
                                                            end_phase=end_phase))
    STOP.phase = phase
    trainer.train(resume_from_checkpoint=checkpoint)
    stop_if_requested(trainer)


def stop_if_requested(trainer) -> None:
    """A phase boundary after training (or its final evaluation): on a stop request, keep a complete checkpoint of
    the current step, which the `Preemption` callback saved, or saved now for a signal that came after the last
    step, and raise `Stopped`. A resume from it trains no further and redoes only what came after training."""
    def keep() -> str:
        folder = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        accelerator = trainer.accelerator  # rank 0's view: it writes the marker
        if decided_by_main(accelerator.is_main_process, accelerator.num_processes, lambda: not is_complete(folder)):
            trainer._save_checkpoint(trainer.model_wrapped, trial=None)  # what the Trainer calls at a save step
        return str(folder)

    STOP.check(keep)


def kept(run_dir: Path) -> str:
    """What a resume of the run in `run_dir` continues from, in words (for the line a stop ends with)."""
    complete = [path for _, path in checkpoints(run_dir) if is_complete(path)]
    if complete:
        return str(complete[-1])
    if (run_dir / "warm_start" / "final").is_dir():
        return f"the warm-started model {run_dir / 'warm_start' / 'final'} (no training checkpoint yet)"
    return f"the run directory {run_dir} (no checkpoint yet)"


def stopped_summary(cfg: DictConfig, stopped) -> dict:
    """End a run that a stop signal stopped: trackers flushed, one line from rank 0, the job requeued where SIGUSR1
    asked for it under Slurm; the summary carries the exit status every rank ends with."""
    if os.environ.get("SLURM_JOB_ID"):
        # A requeue (or the preemption itself) sends SIGTERM to every task, SIGKILL after KillWait: it must not
        # kill a process before the tracker is flushed and the process group left cleanly.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = distributed_state()
    finish_tracking(cfg.logger, state.is_main_process)
    state.wait_for_everyone()

    def decide() -> int:
        code, next_step = after_stop(stopped.requeue, stopped.interrupted)
        print(f"[align] {stopped}; {next_step}", flush=True)
        return code

    # One status for all: srun --kill-on-bad-exit would end rank 0 early otherwise.
    code = decided_by_main(state.is_main_process, state.num_processes, decide)
    return {"stopped_during": stopped.phase, "kept": stopped.kept, "exit_code": code}


def save_final(trainer, tokenizer, directory: Path) -> None:
    """HF-format export: safetensors weights (a LoRA run: its adapter) + tokenizer, and the trainer state."""
    with disk_full_reported(directory, Path(trainer.args.output_dir)):
        trainer.save_model(str(directory))  # collective under ZeRO-3; writes on the main process
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(directory)
            # A pickle of TrainingArguments: config.yaml already records them, and exports stay pickle-free.
            (directory / "training_args.bin").unlink(missing_ok=True)
        trainer.save_state()


def mark_run_finished(trainer, run_dir: Path) -> None:
    """The final model is exported: a later resume=auto of this run has nothing to redo at this max_steps."""
    if trainer.accelerator.is_main_process:
        mark_finished(run_dir, trainer.state.global_step)


def open_run(config: AlignConfig, cfg: DictConfig, detail: str = "") -> RunContext:
    """The shared run directory with the resolved config (credentials redacted) written by rank 0, announced once
    with `detail` appended, tracking started, and the checkpoint a resume=auto continues from (chosen on rank 0)."""
    state = distributed_state()
    run_dir, run_name = shared_run_dir(config, state)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    if state.is_main_process:
        claim_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        launch = describe_launch(state.num_processes, state.distributed_type.value, state.device.type,
                                 os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"))
        print(f"[align] run directory: {run_dir} ({launch}){detail}", flush=True)
    report_to = start_tracking(config.logger, run_dir, run_name, resolved, state.is_main_process,
                               resumable=config.resume == "auto")
    return RunContext(dir=run_dir, name=run_name, report_to=report_to, state=state, model_path=config.model.path,
                      checkpoint=resume_checkpoint(config, run_dir, state))


def train_and_report(built: Built, method: Method, tokenizer, config: AlignConfig, run: RunContext) -> dict:
    """Train (from `run.checkpoint`), export the final model, plot, and report before -> after: held-out accuracy
    (with the degradation gate and the activation audit when configured) for a method that measures it during
    training, else the method's `metrics` from a final `evaluate()` (before: from `eval_on_start`, since an
    `evaluate()` before `train()` leaves DeepSpeed's engine unset). Returns the run's summary."""
    trainer, held_out = built.trainer, built.held_out_accuracy
    STOP.check(lambda: kept(run.dir))  # the model is loaded
    train_stage(trainer, run.checkpoint, run.dir)
    after = {}
    if method.metrics and trainer.eval_dataset is not None:
        STOP.phase = "the final evaluation"
        after = trainer.evaluate()
        stop_if_requested(trainer)
    save_final(trainer, tokenizer, run.dir / "final")
    mark_run_finished(trainer, run.dir)
    summary = {"run_dir": str(run.dir), "final_model": str(run.dir / "final")}
    if method.metrics:
        before = next((entry for entry in trainer.state.log_history if any(key in entry for key in method.metrics)),
                      {})
        summary.update(eval_before=before, eval_after=after)
    if held_out is not None:
        summary.update(accuracy_before=held_out.history[0][1], accuracy_after=held_out.history[-1][1])
    if run.state.is_main_process:
        summary.update(_report(summary, trainer, held_out, method.metrics, config, run))
    finish_tracking(config.logger, run.state.is_main_process)
    run.state.wait_for_everyone()
    return summary


def _report(summary: dict, trainer, held_out, metrics: tuple[str, ...], config: AlignConfig, run: RunContext) -> dict:
    """Rank 0's end of a run: the curves plot, the before -> after lines, the gate and the audit; what they add to
    the summary."""
    added = {"plot": str(plot_training_curves(trainer.state.log_history, held_out.history if held_out else [],
                                              run.dir / "curves.png", title=run.name))}
    for key in metrics:
        if key in summary["eval_after"] and key in summary["eval_before"]:
            name = key.removeprefix("eval_").replace("_", " ")
            print(f"[align] held-out {name}: {summary['eval_before'][key]:.4f} -> {summary['eval_after'][key]:.4f}",
                  flush=True)
    if held_out is not None:
        print(f"[align] held-out accuracy (greedy, no hint): {summary['accuracy_before']:.3f} -> "
              f"{summary['accuracy_after']:.3f}", flush=True)
        if config.eval.gate:
            added["gate"] = _gate_final_against_start(run.dir, config.eval.gate_alpha)
    if config.eval.audit and not metrics:  # a policy trained on prompts (the others report their `metrics`)
        added["audit"] = _audit_final_against_start(config, run.model_path, run.dir)
    print(f"[align] final model: {summary['final_model']}\n[align] plot: {added['plot']}", flush=True)
    return added


def _gate_final_against_start(run_dir: Path, alpha: float) -> dict:
    """Degradation gate of the final model against the starting one on the held-out items; writes gate.json and
    gate.md into the run directory and prints the verdict. Reporting only: the run's exit status is not changed."""
    files = step_files(run_dir)  # step 0 is the starting model even when this attempt resumed later
    first, last = min(files), max(files)
    try:
        report = run_gate([files[first]], [files[last]], alpha=alpha)
    except (GateInputError, ValueError, OSError) as err:  # e.g. eval settings changed between resumed attempts
        log.warning("degradation gate skipped: %s", err)
        return {"error": str(err)}
    write_reports(report, run_dir / "gate.json", run_dir / "gate.md")
    verdict = "DEGRADED" if report["degraded"] else "no significant degradation"
    print(f"[align] degradation gate, step {last} vs step {first}: {verdict} (one-sided p = {report['p_value']:.4g}, "
          f"alpha {alpha}); report: {run_dir / 'gate.md'}", flush=True)
    return {"degraded": report["degraded"], "p_value": report["p_value"], "report": str(run_dir / "gate.md")}


def _audit_final_against_start(config: AlignConfig, start: str, run_dir: Path) -> dict:
    """Effective-rank audit (align.audit) of the final model against `start` into <run_dir>/audit/. Reporting only:
    a failure is a warning, and the run's exit status is not changed."""
    cfg = AuditConfig(base=start, aligned=str(run_dir / "final"), target=config.eval.audit_target,
                      control=config.eval.audit_control, dtype="bfloat16" if bf16_available() else "float32",
                      trust_remote_code=config.model.trust_remote_code)
    try:
        audit_report.write(run_audit(cfg, run_dir / "audit"), run_dir / "audit")
    except (AuditInputError, ModelLoadError, OSError, ValueError) as err:  # e.g. an unreadable checkpoint
        log.warning("activation audit skipped: %s", err)
        return {"error": str(err)}
    print(f"[align] activation audit (final vs start): {run_dir / 'audit' / audit_report.MARKDOWN}", flush=True)
    return {"report": str(run_dir / "audit" / audit_report.MARKDOWN)}
