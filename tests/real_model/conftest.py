"""The embedded SmolLM2-135M-Instruct, converted once per test session into the session's private ALIGN_CACHE."""

from __future__ import annotations

from pathlib import Path

import pytest

# Overrides that keep a run on the real model to seconds: few rows, tiny batches, short completions.
SMALL_GRPO = ["trainer.max_steps=1", "trainer.per_device_train_batch_size=4", "algorithm.num_generations=2",
              "algorithm.max_completion_length=16", "data.synthetic.num_train=16", "data.synthetic.num_eval=4",
              "data.synthetic.digits=2", "eval.max_samples=4", "eval.max_new_tokens=16", "eval.batch_size=4",
              "eval.every_steps=0", "warm_start.max_steps=0"]
SMALL_PAIRS = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=4", "trainer.logging_steps=1",
               "algorithm.data.synthetic.num_train=32", "algorithm.data.synthetic.num_eval=8",
               "algorithm.data.max_length=64"]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The converted checkpoint's directory (about 20-40 s on the first use in a session)."""
    from align.models import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def smollm2_reward_model(smollm2, tmp_path_factory) -> dict:
    """Two steps of the anchor-guided Gaussian reward model on the real backbone, through `align.train`; the run
    summary (final_model: the checkpoint directory)."""
    from align.train import run
    from tests.conftest import compose

    root = tmp_path_factory.mktemp("smollm2-rm")
    return run(compose(["recipe=reward-gaussian-prefs-smollm2-135m", *SMALL_PAIRS,
                        f"trainer.output_dir={root / 'run'}"]))
