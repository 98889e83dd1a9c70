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

from align import __version__
from align.checkpoints import COMPLETE_MARKER, write_json_atomic

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
