"""Shared fixtures: offline, deterministic, CPU-only; configs composed exactly as `python -m align.train` does."""

from __future__ import annotations

import json
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

    from align.compose import resolve_recipe_args
    from align.methods import register_configs

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


# --- SAGE: a tiny policy that writes hints ---------------------------------------------------------------------------

HINT = {"level_1": "one", "level_2": "two", "level_3": "three"}
SAGE_TEMPLATES = [
    "algorithm.hint.system_prompt=null",
    "algorithm.hint.user_template='Hints for: {question}\nSolution: {solution}'",
    "algorithm.hint.solve_template='{question}\nHint: {hint}'",
    "algorithm.hint.max_tokens=64",
]


def sage_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic 2-digit additions whose gold hint is always HINT."""
    from align.data.synthetic import arithmetic

    rows = arithmetic(n, digits=2, seed=seed)
    return [{**r, "hints": json.dumps(HINT)} for r in rows]


@pytest.fixture(scope="session")
def hint_writer(tmp_path_factory) -> str:
    """A tiny policy warm-started (through `align.train`, warm_start.hints_column) to write HINT greedily; the run
    also takes one SAGE step end to end. Returns the warm-started model's path."""
    from align.train import run

    root = tmp_path_factory.mktemp("hint-writer")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sage_rows(64)))
    cfg = compose(["algorithm=sage", "model=tiny", f"data.source={data}", "reward.sources=[{name: boxed_match}]",
                   "trainer=cpu", f"trainer.output_dir={root / 'run'}", "trainer.max_steps=1",
                   "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                   "algorithm.max_completion_length=16", "warm_start.max_steps=150", "warm_start.learning_rate=3e-3",
                   "warm_start.per_device_train_batch_size=16", "warm_start.hints_column=hints", "eval.enabled=false",
                   *SAGE_TEMPLATES])
    run(cfg)
    return str(root / "run" / "warm_start" / "final")




# --- Reward models: a tiny Gaussian reward model trained on the known-truth preference data --------------------------

REWARD_MODEL_RUN = ["recipe=reward-gaussian-prefs-tiny", "trainer.max_steps=40",
                    "trainer.per_device_train_batch_size=16", "trainer.logging_steps=10",
                    "algorithm.data.synthetic.num_train=640", "algorithm.data.synthetic.num_eval=160"]


@pytest.fixture(scope="session")
def gaussian_reward_model(tmp_path_factory) -> dict:
    """A tiny anchor-guided Gaussian reward model trained for 40 steps through `align.train`; returns the run summary
    (final_model = its checkpoint directory, eval_before / eval_after = held-out metrics)."""
    from align.train import run

    root = tmp_path_factory.mktemp("gaussian-rm")
    return run(compose([*REWARD_MODEL_RUN, f"trainer.output_dir={root / 'run'}"]))
