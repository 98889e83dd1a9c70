"""One or two steps of every method on the real SmolLM2-135M-Instruct, through `align.train` as a user runs them:
GRPO with a LoRA adapter on named modules (then the degradation gate on its eval files), SFT, the Gaussian reward
model on the real backbone, best-of-N with that reward model, and multi-reference DPO with the real model as policy
and as a reference. Batches and lengths are tiny: these check that the pieces fit, not what they learn."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from align.best_of_n import main as best_of_n
from align.gate.cli import main as gate
from align.models import SMOLLM2
from align.train import run
from tests.conftest import compose
from tests.real_model.conftest import SMALL_GRPO, SMALL_PAIRS

LAYERS = 30


def logged(run_dir: Path, key: str) -> list[float]:
    return [e[key] for e in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if key in e]


def test_grpo_with_lora_on_named_modules_then_the_gate(smollm2, tmp_path):
    summary = run(compose(["recipe=grpo-arithmetic-smollm2-135m", *SMALL_GRPO, f"trainer.output_dir={tmp_path}/run",
                           "model.lora.r=4", "model.lora.target_modules=[q_proj,down_proj]"]))
    run_dir, final = Path(summary["run_dir"]), Path(summary["final_model"])
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["down_proj", "q_proj"] and adapter["r"] == 4
    with safe_open(final / "adapter_model.safetensors", "pt") as weights:
        wrapped = {key.split(".lora_")[0].rsplit(".", 1)[-1] + f"@{key.split('.layers.')[1].split('.')[0]}"
                   for key in weights.keys()}
    assert wrapped == {f"{name}@{layer}" for name in ("q_proj", "down_proj") for layer in range(LAYERS)}
    assert len(logged(run_dir, "reward")) == 1 and all(math.isfinite(x) for x in logged(run_dir, "loss"))

    rows = [json.loads(line) for line in (run_dir / "eval/step-0.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["task"] for r in rows} == {"synthetic/arithmetic_chat"}
    report = json.loads((run_dir / "gate.json").read_text())
    assert report["baseline"][0].endswith("step-0.jsonl") and report["candidate"][0].endswith("step-1.jsonl")
    assert summary["gate"]["degraded"] == report["degraded"]
    # The gate CLI reads the same eval files (run directory = its final measurement) and agrees.
    status = gate(["--baseline", str(run_dir / "eval/step-0.jsonl"), "--candidate", str(run_dir),
                   "--json", str(tmp_path / "gate.json")])
    again = json.loads((tmp_path / "gate.json").read_text())
    assert status == int(again["degraded"]) and again["tasks"][0]["n"] == 4
    assert again["degraded"] == report["degraded"]


def test_sft_full_fine_tuning(smollm2, tmp_path):
    summary = run(compose(["model=smollm2-135m", "data=arithmetic_chat", "algorithm=sft", "algorithm.max_length=128",
                           "trainer.max_steps=2", "trainer.per_device_train_batch_size=2", "trainer.learning_rate=5e-5",
                           "data.synthetic.num_train=8", "data.synthetic.num_eval=2", "eval.max_new_tokens=8",
                           f"trainer.output_dir={tmp_path}/run"]))
    run_dir = Path(summary["run_dir"])
    assert len(logged(run_dir, "loss")) == 2 and all(math.isfinite(x) for x in logged(run_dir, "loss"))
    before = AutoModelForCausalLM.from_pretrained(smollm2).state_dict()
    after = AutoModelForCausalLM.from_pretrained(summary["final_model"], use_safetensors=True).state_dict()
    assert after.keys() == before.keys()
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])


def test_gaussian_reward_model_on_the_real_backbone(smollm2_reward_model):
    final = Path(smollm2_reward_model["final_model"])
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == LAYERS
    after = smollm2_reward_model["eval_after"]
    assert 0.0 <= after["eval_accuracy"] <= 1.0 and after["eval_sigma_mean"] > 0
    assert all(math.isfinite(x) for x in logged(Path(smollm2_reward_model["run_dir"]), "loss"))


def test_best_of_n_with_the_real_policy_and_reward_model(smollm2_reward_model, tmp_path):
    out = tmp_path / "best.jsonl"
    best_of_n(["--policy", SMOLLM2, "--reward-model", smollm2_reward_model["final_model"], "--num-prompts", "2",
               "--n", "2", "--max-new-tokens", "12", "--batch-size", "2", "--select", "0.25", "--all",
               "--out", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        keys = [c["key"] for c in line["candidates"]]
        assert len(keys) == 2 and line["reward"] == max(keys) and line["sigma"] > 0
        assert line["completion"] == line["candidates"][keys.index(max(keys))]["completion"]


def test_multiref_dpo_with_the_real_model_as_policy_and_reference(smollm2, tmp_path):
    summary = run(compose(["recipe=multiref-dpo-prefs-smollm2-135m", *SMALL_PAIRS, "model.lora.r=4",
                           f"algorithm.references=[{SMOLLM2},embedded:tiny]", "algorithm.validation_size=8",
                           f"algorithm.cache_dir={tmp_path}/logps", f"trainer.output_dir={tmp_path}/run"]))
    run_dir = Path(summary["run_dir"])
    for name in ("smollm2-135m-instruct", "tiny"):
        weights = logged(run_dir, f"weights/{name}")
        assert len(weights) == 2 and all(0.0 <= w <= 1.0 for w in weights), name
    assert 0.0 <= summary["eval_after"]["eval_preference_accuracy"] <= 1.0
    assert (Path(summary["final_model"]) / "adapter_model.safetensors").is_file()
