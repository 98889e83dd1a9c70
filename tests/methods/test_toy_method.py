"""The steps docs/architecture.md gives for adding a method, proved end to end: a toy method registered from a test
module runs through `python -m align.train` with validation, checkpoints carrying its state, and resume=auto."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from align.registry import METHODS
from tests.methods.toy_method import scaled_loss

TOY = ["algorithm=toy", "eval.max_samples=8", "eval.max_new_tokens=8", "eval.gate=false",
       "data.synthetic.num_train=64", "data.synthetic.num_eval=8", "trainer.per_device_train_batch_size=8",
       "trainer.learning_rate=1e-3", "trainer.save_steps=2", "trainer.save_total_limit=null"]


def train(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGN_METHODS": "tests.methods.toy_method", "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "align.train", *TOY, *overrides], env=env, capture_output=True,
                          text=True, timeout=600)


def test_scaled_loss_is_the_loss_times_the_scale():
    import torch

    assert scaled_loss(torch.tensor(3.0), 0.5).item() == 1.5
    assert "toy" in METHODS and METHODS["toy"].steps == "tests.methods.toy_method"


def test_a_toy_method_is_validated_by_its_own_limits_and_checks():
    bad_scale = train("algorithm.scale=-1")
    assert bad_scale.returncode == 2, bad_scale.stderr
    assert "algorithm.scale must be > 0, got -1" in bad_scale.stderr
    lora = train("model.lora.r=4")
    assert lora.returncode == 2 and "algorithm=toy trains every weight" in lora.stderr


@pytest.mark.slow
def test_a_toy_method_trains_checkpoints_its_state_and_resumes(tmp_path):
    out = tmp_path / "toy"
    first = train(f"trainer.output_dir={out}", "trainer.max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "checkpoint-4" / "toy_state.json").read_text()) == {"losses_computed": 4}
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 4

    more = train(f"trainer.output_dir={out}", "trainer.max_steps=6", "resume=auto")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resume=auto: continuing from checkpoint-4" in more.stdout
    # 6, not 2: the counter came back from checkpoint-4's toy_state.json.
    assert json.loads((out / "checkpoint-6" / "toy_state.json").read_text()) == {"losses_computed": 6}
