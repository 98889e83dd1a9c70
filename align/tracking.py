"""Experiment tracking (W&B, TensorBoard, none), run naming and secret hygiene.

Secrets never come from config: W&B reads WANDB_API_KEY from the environment (or `wandb login`). Anything that
looks like a credential is redacted before a config is written to disk or sent to a tracker.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from align.config import LoggerConfig, hydra_multirun

# Whole key names (or their last `_`-separated part): `hf_token`, `wandb_api_key`, `password`; not `max_new_tokens`.
_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """A copy of a nested dict/list with the values of credential-like keys replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def sweep_names(group: str | None, run_name: str, sweep: dict | None) -> tuple[str | None, str]:
    """(W&B group, W&B run name). Outside a sweep (`sweep` None): `logger.group` and the run's name.

    Under a Hydra multirun sweep, `sweep` = {"dir": hydra.sweep.dir, "overrides": the point's overrides as typed
    (hydra.overrides.task), "exclude": hydra.job.config.override_dirname.exclude_keys}: the group is the sweep's
    name unless logger.group is set: the last component of the sweep directory, shared by all points and unchanged
    when Slurm requeues one (the default directory, a timestamp, gives "sweep-<timestamp>"); the run is named by
    the point's overrides as hydra.job.override_dirname is ("lr=1e-05,seed=1", sorted), with credential-like values
    redacted. A point without overrides keeps the run's name.
    """
    if sweep is None:
        return group, run_name
    if group is None:
        group = Path(sweep["dir"]).name
        group = f"sweep-{group}" if group[:1].isdigit() else group
    items = []
    for override in sweep.get("overrides") or []:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in (sweep.get("exclude") or []):
            continue
        secret = _SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1])
        items.append(f"{key}={REDACTED}" if secret and value else override)
    return group, ",".join(sorted(items)) or run_name


def _hydra_sweep() -> dict | None:
    """This process's sweep (see `sweep_names`), or None when not a point of a Hydra multirun."""
    hydra_cfg = hydra_multirun()
    if hydra_cfg is None:
        return None
    return {"dir": hydra_cfg.sweep.dir, "overrides": list(hydra_cfg.overrides.task),
            "exclude": list(hydra_cfg.job.config.override_dirname.exclude_keys)}


def resumable_run_id(run_dir: Path) -> str:
    """A W&B run id fixed by the run directory: every attempt of a resumed run (resume=auto) logs to one W&B run."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def start_tracking(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, is_main_process: bool,
                   resumable: bool = False) -> list[str]:
    """Start the tracker on the main process and return TRL's `report_to` list (the same on every rank).

    `resumable` (resume=auto): W&B continues the run of an earlier attempt in the same directory, if there is one.
    """
    if cfg.backend == "none":
        return []
    if cfg.backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")  # read by transformers' callback
        return ["tensorboard"]
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs the wandb package: pip install 'align[wandb]'.") from err
    if is_main_process and wandb.run is None:
        # Initialised here (not by transformers' callback) so the run carries align's full config, tags and group;
        # the callback then reuses this run, and every metric is logged against train/global_step.
        group, name = sweep_names(cfg.group, run_name, _hydra_sweep())
        wandb.init(project=cfg.project, entity=cfg.entity, group=group, tags=list(cfg.tags) or None,
                   name=name, dir=str(run_dir), config=redact(config), mode=cfg.mode,
                   **({"id": resumable_run_id(run_dir), "resume": "allow"} if resumable else {}))
    return ["wandb"]


def finish_tracking(cfg: LoggerConfig, is_main_process: bool) -> None:
    if cfg.backend == "wandb" and is_main_process:
        import wandb

        if wandb.run is not None:
            wandb.finish()
