"""The real SmolLM2-135M-Instruct sharded over two CPU processes by DeepSpeed ZeRO-3: GRPO with a LoRA adapter
generates (weights gathered per forward), trains and saves, as `accelerate launch` runs it for a user."""

from __future__ import annotations

import json
import math

import pytest

from tests.distributed.test_distributed import launch
from tests.real_model.conftest import SMALL_GRPO

pytestmark = pytest.mark.distributed


def test_grpo_with_lora_zero3_two_processes(smollm2, tmp_path):
    run_dir = tmp_path / "run"
    result = launch("cpu_zero3.yaml", ["-m", "align.train", "recipe=grpo-arithmetic-smollm2-135m", *SMALL_GRPO,
                                       "model.lora.r=4", f"trainer.output_dir={run_dir}"])
    assert "(2 processes, DeepSpeed ZeRO-3 on CPU)" in result.stdout
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    # held-out results gathered from both ranks, each of the 4 rows once
    rows = (run_dir / "eval" / "step-1.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["doc_id"] for line in rows) == [0, 1, 2, 3]
