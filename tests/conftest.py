"""Shared fixtures: offline, deterministic, CPU-only; configs composed exactly as `python -m align.train` does."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded model and user-recipe links are built into a private cache, never the user's ~/.cache/align.
os.environ.setdefault("ALIGN_CACHE", tempfile.mkdtemp(prefix="align-test-cache-"))


def compose(overrides: list[str]):
    """The Hydra config `python -m align.train <overrides>` would run with (recipe paths resolved the same way)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from align.config import register_configs
    from align.train import resolve_recipe_args

    register_configs()
    overrides = resolve_recipe_args(overrides)
    searchpath = [o for o in overrides if o.startswith("hydra.searchpath=")]
    overrides = [o for o in overrides if not o.startswith("hydra.")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        if searchpath:  # user recipe files live outside configs/: compose through the Hydra search path
            overrides = overrides + searchpath
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture
def tiny_run(tmp_path):
    """Overrides that keep a run tiny and inside tmp_path."""
    return [
        f"trainer.output_dir={tmp_path / 'run'}",
        "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=8",
        "algorithm.num_generations=4",
        "algorithm.max_completion_length=16",
        "data.synthetic.num_train=64",
        "data.synthetic.num_eval=8",
        "eval.max_new_tokens=16",
    ]
