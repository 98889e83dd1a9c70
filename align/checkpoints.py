"""Checkpoints that are complete or visibly not, `resume=auto`, and save-and-requeue on preemption.

A checkpoint directory counts as complete only once it holds `COMPLETE_MARKER`, written atomically by rank 0 after
every rank has finished writing its part (weights, optimizer shards, RNG states, the trainer's algorithm state). A
crash or SIGKILL mid-save therefore leaves a directory without the marker, which `resume=auto` sets aside with a
warning instead of loading. Rotation of old checkpoints (`trainer.save_total_limit`) runs only after the marker, so
at every instant at least one complete checkpoint exists once one has been written.

Preemption: Slurm sends SIGUSR1 before the time limit (`--signal=USR1@<seconds>`) and SIGTERM on preemption. The
`Preemption` callback turns either into "save at the end of this optimizer step, then stop"; `run` then asks Slurm to
requeue the job, and the requeued job continues from that checkpoint with `resume=auto`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

log = logging.getLogger("align")

COMPLETE_MARKER = "align_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Exit status of a run that stopped for preemption outside Slurm: EX_TEMPFAIL, "try again" (with resume=auto).
EXIT_PREEMPTED = 75


def write_json_atomic(obj, path: Path) -> None:
    """Write JSON durably under a temporary name, then rename: readers see the old file or the new one, never half."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(staging, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the directories, to disk."""
    for path in sorted(Path(folder).rglob("*"), reverse=True) + [Path(folder)]:
        if not path.is_symlink() and path.exists():
            _fsync(path)


def is_complete(checkpoint: Path) -> bool:
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-<step>` directory in `run_dir`, complete or not, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in run_dir.iterdir() if (m := _CHECKPOINT.match(path.name))]
    return sorted(p for p in found if p[1].is_dir())


def newest_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint. Incomplete ones (a save cut short) are renamed `incomplete-checkpoint-<step>`
    with a warning, so neither resume nor the rotation of old checkpoints ever counts them. Call on rank 0 only."""
    newest = None
    for _, path in checkpoints(run_dir):
        if is_complete(path):
            newest = path
            continue
        aside = path.with_name(f"incomplete-{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        log.warning("checkpoint %s was not completely written (interrupted save: no %s); it is ignored and kept "
                    "as %s for inspection.", path, COMPLETE_MARKER, aside.name)
    return newest


class CompleteCheckpoints:
    """Mixin for `transformers.Trainer` subclasses (list it before the Trainer class): marks each checkpoint
    complete once all of it is on disk, and writes the subclass's extra state into it.

    Subclasses return their algorithm state from `checkpoint_state()` (file name -> JSON-able dict) and restore it
    in `_load_optimizer_and_scheduler`, which the Trainer calls with the checkpoint on resume.
    """

    def checkpoint_state(self) -> dict[str, dict]:
        return {}

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and folder.is_dir() and not is_complete(folder):
            shutil.rmtree(folder)  # leftovers of an interrupted save of this very step: never mix two attempts
        self.accelerator.wait_for_everyone()
        # The Trainer deletes old checkpoints at the end of its save; that waits until the new one is complete.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            for name, state in self.checkpoint_state().items():
                write_json_atomic(state, folder / name)
        fsync_tree(folder)  # every rank: what it wrote is on disk before the marker says so (node failures)
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        if self.args.should_save:
            write_json_atomic({"step": self.state.global_step, "processes": self.accelerator.num_processes},
                              folder / COMPLETE_MARKER)
            _fsync(folder)  # the marker's directory entry
            rotate_checkpoints(output_dir=str(folder.parent), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint)


class Preemption(TrainerCallback):
    """SIGUSR1 / SIGTERM: save a checkpoint at the end of an optimizer step and stop training.

    Use as a context manager around `trainer.train()` (the handlers are installed for its whole duration, including
    checkpoint loading and the first evaluation, and restored however it ends), and register it before callbacks
    that do expensive work at step ends, which skip when `control.should_training_stop` is set.

    Ranks may receive the signal at different steps, so each step ends with an all-reduce (max) of the request and
    all of them stop at the same step. A trainer whose state is only consistent every `step_multiple` optimizer
    steps (GRPO reusing one generation over several steps) stops at the next such step. A request on the last step
    still saves a checkpoint there. SIGUSR1 (Slurm's `--signal`, sent before the time limit) asks for a requeue;
    SIGTERM (preemption, scancel) only saves: a preempting Slurm requeues the job by itself, a cancelled job ends.
    """

    def __init__(self, accelerator, step_multiple: int = 1):
        self.accelerator, self.step_multiple = accelerator, step_multiple
        self.received: int = 0  # the signal number, set by the handler (which does nothing else: it is async)
        self.stopped_at: int | None = None
        self.requeue = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = self.received or signum

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():  # Python delivers signals to the main thread
            log.warning("training runs outside the main thread: SIGUSR1 / SIGTERM will not checkpoint and stop it")
            return self
        self._previous = {s: signal.signal(s, self._handle) for s in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kwargs):
        # (requested, asks for a requeue), agreed over the ranks
        flags = torch.tensor([float(bool(self.received)), float(self.received == signal.SIGUSR1)],
                             device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="max")
        requested, requeue = (bool(v) for v in flags.tolist())
        if not requested or (state.global_step % self.step_multiple and state.global_step < state.max_steps):
            return
        control.should_save = True
        if state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_at, self.requeue = state.global_step, requeue
            if self.accelerator.is_main_process:
                name = signal.Signals(self.received).name if self.received else "a signal on another rank"
                print(f"[align] received {name}: saving a checkpoint at step {state.global_step}, then stopping",
                      flush=True)


def requeue_or_exit_code(requeue: bool) -> int:
    """After a preemption save: with `requeue` and under Slurm, ask Slurm to requeue this job (it restarts with the
    same command, which resumes with resume=auto) and return 0; otherwise EXIT_PREEMPTED ("run me again")."""
    job = os.environ.get("SLURM_JOB_ID")
    if not (requeue and job):
        return EXIT_PREEMPTED
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        problem = result.stderr.strip() if result.returncode else None
    except OSError as err:  # no scontrol on this node
        problem = str(err)
    if problem:
        print(f"[align] scontrol requeue {job} failed ({problem}); resubmit the job with resume=auto to continue",
              flush=True)
        return EXIT_PREEMPTED
    print(f"[align] Slurm job {job} requeued; it resumes from the checkpoint", flush=True)
    return 0
