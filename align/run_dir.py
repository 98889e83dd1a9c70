"""Run directories that align owns: it writes only into a directory it created or one that holds an align run.

`RUN_MARKER` (`.align-run`, JSON) is written when align takes an empty or new directory for a run: when, and by
which align version. Once training begins (the SFT warm start or the main trainer) the marker records `started`,
and from then on the directory holds work that only `resume=auto` may continue. A run that failed before that (a
late config error, a model that would not load) leaves a directory that a rerun with the same name simply reuses.
A non-empty directory without the marker belongs to someone else and is never written to: checkpoint folders in it
would be taken for interrupted saves or rotated away, and its README.md replaced by a model card. The exception is a
run directory align wrote before it had the marker: its config.yaml and a checkpoint with align's completion marker
identify it as a started run (or, for a run saved without checkpoints, its exported final model). When a run has
exported its final model, the marker records `finished` with the step reached: `resume=auto` then has
nothing to redo unless `trainer.max_steps` asks for more.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from align import __version__
from align.checkpoints import COMPLETE_MARKER, checkpoints, is_complete, write_json_atomic
from align.config import AlignConfig, ConfigError, hydra_multirun
from align.tracking import redact

RUN_MARKER = ".align-run"


class RunFinished(Exception):
    """resume=auto found the run already finished with nothing more to train: not an error (a requeued job that
    completed meanwhile ends here with status 0)."""


class RunDir(Enum):
    NEW = "new"  # missing or empty
    PREPARED = "prepared"  # an align run directory whose training never began
    STARTED = "started"  # an align run directory with work in it
    FOREIGN = "foreign"  # not empty, and no align run


def _marker(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _unmarked_align_run(directory: Path) -> bool:
    return (directory / "config.yaml").is_file() and (
        any(directory.glob(f"checkpoint-*/{COMPLETE_MARKER}")) or (directory / "final" / "config.json").is_file())


def run_dir_kind(directory: Path) -> RunDir:
    """What `directory` holds, as far as writing a run into it goes."""
    directory = Path(directory)
    marker = _marker(directory)
    if marker is not None:
        return RunDir.STARTED if marker.get("started") else RunDir.PREPARED
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return RunDir.NEW
    return RunDir.STARTED if _unmarked_align_run(directory) else RunDir.FOREIGN


def claim_run_dir(directory: Path) -> None:
    """Create `directory` (if needed) and mark it as an align run directory; a marker already there is kept."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _marker(directory) is None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        started = {"started": now} if _unmarked_align_run(directory) else {}
        write_json_atomic({"created": now, "align_version": __version__, **started}, directory / RUN_MARKER)


def mark_started(directory: Path) -> None:
    """Record that training began in `directory` (a claimed run directory): a rerun without resume=auto is refused
    from now on. Call on the main process."""
    marker = _marker(directory)
    if marker is None:
        raise FileNotFoundError(f"{directory} is not an align run directory (no {RUN_MARKER})")
    if not marker.get("started"):
        write_json_atomic({**marker, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, Path(directory) / RUN_MARKER)


def mark_finished(directory: Path, step: int) -> None:
    """Record that the run in `directory` is complete at optimizer step `step` (its final model exported). Call on
    the main process."""
    marker = _marker(directory) or {}
    write_json_atomic({**marker, "finished": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step}},
                      Path(directory) / RUN_MARKER)


def finished_step(directory: Path) -> int | None:
    """The optimizer step at which the run in `directory` finished, or None if it has not."""
    finished = (_marker(directory) or {}).get("finished")
    return finished.get("step") if isinstance(finished, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Which directory a run writes into, and whether it may


def _hydra_context() -> tuple[str | None, int | None, str | None]:
    """(recipe choice, multirun job number, sweep directory name) under Hydra; the last two only in a multirun."""
    if not HydraConfig.initialized():
        return None, None, None
    recipe = HydraConfig.get().runtime.choices.get("recipe")
    sweep = hydra_multirun()
    return (recipe, None, None) if sweep is None else (recipe, sweep.job.num, Path(sweep.sweep.dir).name)


def planned_run_dir(config: AlignConfig) -> tuple[Path, str]:
    """(directory, name) of this run as `shared_run_dir` describes them; a default name holds this second."""
    t = config.trainer
    recipe, job, sweep = _hydra_context()
    name = t.run_name or f"{recipe or config.algorithm.name}-{sweep or time.strftime('%Y%m%d-%H%M%S')}"
    name = name if job is None else f"{name}-{job}"
    directory = Path(t.output_dir) / (str(job) if job is not None else "") if t.output_dir else \
        Path(t.output_root) / name
    return directory, name


def run_dir_problem(directory: Path, config: AlignConfig) -> str | None:
    """Why this run may not write into `directory`, or None."""
    blocker = next((path for path in (directory, *directory.parents) if path.exists()), None)
    if blocker is not None and not blocker.is_dir():  # a file where the run directory, or a folder above it, goes
        key = "trainer.output_dir" if config.trainer.output_dir else "trainer.output_root"
        return f"{key}: {blocker} is a file, not a directory; choose a new or empty directory."
    kind = run_dir_kind(directory)
    if kind is RunDir.FOREIGN and config.trainer.output_dir:
        return f"trainer.output_dir {directory} is not empty and holds no align run; choose an empty or new directory."
    if kind is RunDir.FOREIGN:
        return (f"run directory {directory} is not empty and holds no align run; choose another trainer.run_name or "
                f"trainer.output_root.")
    if kind is RunDir.STARTED and config.resume == "auto":
        return _changed_run_settings(directory / "config.yaml", config) or _finished_run_problem(directory, config)
    if kind is RunDir.STARTED:
        return (f"run directory {directory} already holds a run; continue it with resume=auto, or choose another "
                f"trainer.run_name or trainer.output_dir.")
    return None


def _finished_run_problem(directory: Path, config: AlignConfig) -> str | None:
    """For resume=auto on a finished run: RunFinished when trainer.max_steps asks for nothing more; an error when it
    asks for more but no checkpoint can continue it (training from scratch would replace the finished model)."""
    step = finished_step(directory)
    if step is None:
        return None
    if config.trainer.max_steps <= step:
        raise RunFinished(f"[align] resume=auto: the run in {directory} already finished at step {step} (final "
                          f"model: {directory / 'final'}); nothing to do. Raise trainer.max_steps to train further.")
    if not any(is_complete(path) for _, path in checkpoints(directory)):
        return (f"resume=auto: the run in {directory} finished at step {step} without a checkpoint to continue from "
                f"(trainer.save_steps was 0), so trainer.max_steps={config.trainer.max_steps} cannot continue it; "
                f"start a new run from its final model: model.path={directory / 'final'}.")
    return None


# Settings that define what a run computes, or the data order a checkpoint's position refers to: resuming with any of
# them changed would silently mix two experiments. The rest of trainer.* (e.g. a larger max_steps to train further,
# save_steps), eval, logger and resume may change between attempts.
_RUN_DEFINING = ("model", "data", "algorithm", "reward", "warm_start", "trainer.seed",
                 "trainer.per_device_train_batch_size", "trainer.gradient_accumulation_steps")


def _changed_run_settings(saved_config: Path, config: AlignConfig) -> str | None:
    """An error message when resuming `saved_config`'s run with settings that change what it computes, else None."""
    saved = OmegaConf.load(saved_config)
    current = OmegaConf.create(redact(OmegaConf.to_container(OmegaConf.structured(config), resolve=True)))
    changed = [key for key in _RUN_DEFINING
               if OmegaConf.select(saved, key, default=None) != OmegaConf.select(current, key, default=None)]
    if not changed:
        return None
    return (f"resume=auto: the run in {saved_config.parent} was started with different {', '.join(changed)} "
            f"settings (see its config.yaml); resuming would mix two experiments. Use the same settings, or another "
            f"trainer.run_name for a new run.")


def check_run_dir(config: AlignConfig) -> None:
    """Refuse (ConfigError), before anything loads, a run directory this run may not write into. Every rank checks
    for itself (they see the same files); `align.runs.shared_run_dir` checks rank 0's choice again when it opens
    the run."""
    problem = run_dir_problem(planned_run_dir(config)[0], config)
    if problem:
        raise ConfigError(problem)
