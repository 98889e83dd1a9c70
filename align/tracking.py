"""Experiment tracking (W&B, TensorBoard, none), run naming and secret hygiene.

Secrets never come from config: W&B reads WANDB_API_KEY from the environment (or `wandb login`). Anything that
looks like a credential is redacted before a config is written to disk or sent to a tracker.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from align.config import LoggerConfig

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


def start_tracking(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, is_main_process: bool) -> list[str]:
    """Start the tracker on the main process and return TRL's `report_to` list (the same on every rank)."""
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
        wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
                   name=run_name, dir=str(run_dir), config=redact(config), mode=cfg.mode)
    return ["wandb"]


def finish_tracking(cfg: LoggerConfig, is_main_process: bool) -> None:
    if cfg.backend == "wandb" and is_main_process:
        import wandb

        if wandb.run is not None:
            wandb.finish()
