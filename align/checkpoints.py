"""Checkpoints that are complete or visibly not, and `resume=auto`.

A checkpoint directory counts as complete only once it holds `COMPLETE_MARKER`, written atomically by rank 0 after
every rank has finished writing its part (weights, optimizer shards, RNG states, the trainer's algorithm state). A
crash or SIGKILL mid-save therefore leaves a directory without the marker, which `resume=auto` sets aside with a
warning instead of loading. The marker records the size and SHA-256 of every file in the checkpoint; `resume=auto`
checks them and sets aside a checkpoint that was truncated or changed since (a half-copied folder, bit rot), falling
back to the newest one that verifies. Rotation of old checkpoints (`trainer.save_total_limit`) runs only after the
marker and only over checkpoints that carry one, so at every instant at least one complete checkpoint exists once
one has been written, and rotation never deletes a folder align did not complete (the warm start's own checkpoints
are removed once its final model is exported: `align.train`). A save that runs out of disk space ends
the run with one line naming the newest complete checkpoint (`DiskFullError`).

Stop signals (SIGUSR1 before a Slurm time limit, SIGTERM, Ctrl-C) save a checkpoint at a step boundary:
`align.preemption`. A checkpoint of the last step resumes without training past it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from align.files import file_sha256

log = logging.getLogger("align")

COMPLETE_MARKER = "align_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


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


def file_digest(path: Path) -> dict:
    """{"size", "sha256"} of one file, read in chunks."""
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def checkpoint_files(checkpoint: Path) -> list[str]:
    """Every file in `checkpoint` (relative, POSIX-style, sorted), but the completion marker."""
    folder = Path(checkpoint)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != COMPLETE_MARKER)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What differs between a complete checkpoint and the files its marker records (None: it verifies). Sizes are
    compared first, so a truncated or missing file is found without reading the rest. A marker without `files`
    (written before align recorded them) has nothing to check."""
    folder = Path(checkpoint)
    try:
        recorded = json.loads((folder / COMPLETE_MARKER).read_text()).get("files", {})
    except (OSError, ValueError) as err:
        return f"its {COMPLETE_MARKER} is unreadable ({err})"
    for name, saved in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != saved["size"]:
            return f"{name} has {path.stat().st_size} bytes, {saved['size']} when saved"
    for name, saved in recorded.items():
        if file_digest(folder / name)["sha256"] != saved["sha256"]:
            return f"{name} has the recorded size but other bytes (its SHA-256 differs)"
    return None


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-<step>` directory in `run_dir`, complete or not, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in run_dir.iterdir() if (m := _CHECKPOINT.match(path.name))]
    return sorted(p for p in found if p[1].is_dir())


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints in `checkpoint_dir` that carry align's completion marker (not verified), oldest first."""
    return [path for _, path in checkpoints(checkpoint_dir) if is_complete(path)]


def newest_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint in `checkpoint_dir` whose files match its marker (call only on an align run
    directory, and on rank 0 only). Walking from the newest down, checkpoints that fail are renamed with a warning
    that names the file and what differs, so neither resume nor rotation counts them again: incomplete ones (a save
    cut short) to `incomplete-checkpoint-<step>-<time>`, corrupt ones to `corrupt-checkpoint-<step>-<time>`."""
    newest = None
    for _, path in reversed(checkpoints(checkpoint_dir)):
        if not is_complete(path):
            _set_aside(path, "incomplete", f"was not completely written (interrupted save: no {COMPLETE_MARKER})")
        elif newest is None:
            problem = checkpoint_problem(path)
            if problem:
                _set_aside(path, "corrupt", f"is corrupt: {problem}")
            else:
                newest = path
    return newest


def _set_aside(checkpoint: Path, why: str, what: str) -> None:
    aside = checkpoint.with_name(f"{why}-{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    checkpoint.rename(aside)
    log.warning("checkpoint %s %s; it is ignored and kept as %s for inspection.", checkpoint, what, aside.name)


def rotate_checkpoints(checkpoint_dir: Path, save_total_limit: int | None, best: str | None = None) -> None:
    """Delete the oldest complete checkpoints until `save_total_limit` are left, never the newest nor `best`.

    Unlike transformers' rotation, which counts every `checkpoint-*` folder (a foreign `checkpoint-200` would make
    it delete this run's newer ones), only checkpoints with align's completion marker count or are deleted."""
    if not save_total_limit or save_total_limit <= 0:
        return
    complete = complete_checkpoints(checkpoint_dir)
    protected = set(complete[-1:]) | ({Path(best)} if best else set())
    excess = len(complete) - max(save_total_limit, len(protected))
    for path in [path for path in complete if path not in protected][:max(excess, 0)]:
        shutil.rmtree(path)


class DiskFullError(RuntimeError):
    """A save ran out of disk space; the message names the newest complete checkpoint to resume from."""


class CheckpointStateError(RuntimeError):
    """A checkpoint lacks the method's state file, so it cannot be resumed exactly; the message says what to do."""


# Bytes below which a torch writer failure counts as a full disk: torch's zip writer reports a failed write as
# "unexpected pos" without the errno, and the partial file it leaves behind has used up the space.
_NEARLY_FULL = 1 << 20


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        text = str(e)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text \
                or "Disk quota exceeded" in text:
            return True
    torch_writer_failed = any("unexpected pos" in str(e) or "PytorchStreamWriter failed" in str(e) for e in chain)
    existing = next((p for p in [Path(folder), *Path(folder).parents] if p.exists()), Path("/"))
    return torch_writer_failed and shutil.disk_usage(existing).free < _NEARLY_FULL


@contextmanager
def disk_full_reported(folder: Path, checkpoint_dir: Path):
    """Turn a write into `folder` that runs out of disk space (however the library reports it) into a
    `DiskFullError` naming the newest complete checkpoint in `checkpoint_dir`; other errors pass unchanged."""
    try:
        yield
    except Exception as err:
        if not _is_disk_full(err, folder):
            raise
        complete = complete_checkpoints(checkpoint_dir)
        newest = f"the newest complete checkpoint is {complete[-1]}" if complete else "no checkpoint is complete yet"
        raise DiskFullError(f"the disk is full: writing {folder} failed and it is not marked complete; {newest}. "
                            f"Free some space, then run again with resume=auto.") from err


class CompleteCheckpoints:
    """Mixin for `transformers.Trainer` subclasses (list it before the Trainer class): marks each checkpoint
    complete once all of it is on disk, and saves and restores the subclass's algorithm state.

    A method with training state beyond the Trainer's (weights, optimizer, RNGs, step) names its JSON file in
    `algorithm_state_file` and overrides `algorithm_state()` and `load_algorithm_state(state)`. The file is written
    into every checkpoint before the completion marker, so the marker records its size and hash like any other
    file; a resume from a checkpoint without it (a foreign or older checkpoint) fails with a clear error rather than
    continuing with fresh state.
    """

    algorithm_state_file: str | None = None  # None: no state beyond the Trainer's

    def algorithm_state(self) -> dict:
        """The state to checkpoint, JSON-able (serialised at once: it may share objects with the trainer)."""
        return {}

    def load_algorithm_state(self, state: dict) -> None:
        """Restore what `algorithm_state()` returned (on resume, before training continues)."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        # The Trainer calls this with the checkpoint it resumes from (None when it starts afresh).
        super()._load_optimizer_and_scheduler(checkpoint)
        if not checkpoint or self.algorithm_state_file is None:
            return
        path = Path(checkpoint) / self.algorithm_state_file
        if not path.is_file():
            raise CheckpointStateError(f"{checkpoint} has no {self.algorithm_state_file}: it was not written by this "
                                       f"version of align's {type(self).__name__}, or its save was interrupted. "
                                       f"Move it aside to resume from an earlier checkpoint, or start a new run.")
        self.load_algorithm_state(json.loads(path.read_text()))

    def _run_epoch(self, *args, **kwargs):
        # A checkpoint of the last step (a stop signal there or in the final evaluation) resumes with nothing left
        # to train; the Trainer's loop has no check before a step and would train one past max_steps.
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        return super()._run_epoch(*args, **kwargs)

    def _issue_warnings_after_load(self, load_result):
        # A tied output embedding is written once (under its input embedding's name), so its key is "missing" from
        # every checkpoint by design: the Trainer would warn about it on each resume. Other missing keys still warn.
        tied = set(getattr(self.accelerator.unwrap_model(self.model), "all_tied_weights_keys", None) or ())
        missing = [key for key in load_result.missing_keys if key not in tied]
        if len(missing) < len(load_result.missing_keys):
            load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)

    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        with disk_full_reported(folder, folder.parent):
            self._save_complete_checkpoint(model, trial, folder)

    def _save_complete_checkpoint(self, model, trial, folder: Path):
        if self.args.should_save and folder.is_dir() and not is_complete(folder):
            # Leftovers of an interrupted save of this very step: never mix two attempts, never delete them.
            _set_aside(folder, "incomplete", f"was not completely written (no {COMPLETE_MARKER})")
        self.accelerator.wait_for_everyone()
        # The Trainer deletes old checkpoints at the end of its save; that waits until the new one is complete.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save and self.algorithm_state_file is not None:
            write_json_atomic(self.algorithm_state(), folder / self.algorithm_state_file)
        fsync_tree(folder)  # every rank: what it wrote is on disk before the marker says so (node failures)
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        files = self._digests(folder)
        if self.args.should_save:
            write_json_atomic({"step": self.state.global_step, "processes": self.accelerator.num_processes,
                               "files": files}, folder / COMPLETE_MARKER)
            _fsync(folder)  # the marker's directory entry
            rotate_checkpoints(folder.parent, limit, best=self.state.best_model_checkpoint)

    def _digests(self, folder: Path) -> dict[str, dict]:
        """{relative path: {size, sha256}} of every file in the checkpoint; the ranks hash a share each (the
        checkpoint is on a filesystem they all see, as the marker already assumes)."""
        # Lazy: accelerate loads torch, and the file helpers above serve run_dir and resume=auto without it.
        from accelerate.utils import gather_object

        rank, ranks = self.accelerator.process_index, self.accelerator.num_processes
        mine = [(name, file_digest(folder / name)) for name in checkpoint_files(folder)[rank::ranks]]
        return dict(sorted(gather_object(mine) if ranks > 1 else mine))
