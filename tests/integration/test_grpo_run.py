"""End-to-end GRPO runs on the embedded tiny model: artefacts, metrics, loss variants, tracking."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from align.train import run
from tests.conftest import compose

STEP_METRICS = [
    "groups/zero_variance_frac", "groups/solved_frac", "groups/within_group_std", "reward", "reward_std",
    "timing/generation_s", "timing/reward_s", "timing/ref_logprobs_s", "timing/other_s", "timing/update_s",
    "timing/step_s", "perf/tokens_per_s",
]


def trainer_log(run_dir: Path) -> list[dict]:
    return [e for e in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def test_grpo_run_leaves_a_complete_run_directory(tiny_run):
    summary = run(compose(tiny_run + ["eval.every_steps=1"]))
    run_dir = Path(summary["run_dir"])
    for artefact in ("config.yaml", "final/model.safetensors", "final/tokenizer_config.json", "curves.png",
                     "eval/step-0.jsonl", "eval/step-2.jsonl", "gate.json", "gate.md", "trainer_state.json"):
        assert (run_dir / artefact).exists(), artefact
    assert not [p for p in (run_dir / "final").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")], "no pickles"
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")  # plain transformers loads it
    assert model.config.model_type == "qwen2"
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    for step in (0, 1, 2):  # before training, every step, after
        rows = [json.loads(line) for line in (run_dir / f"eval/step-{step}.jsonl").read_text().splitlines()]
        assert [r["doc_id"] for r in rows] == list(range(8)) and {r["task"] for r in rows} == {"synthetic/arithmetic"}
        assert all(r["step"] == step and r["metric"] == "boxed_match" and 0.0 <= r["confidence"] <= 1.0 for r in rows)
    gate = json.loads((run_dir / "gate.json").read_text())
    assert gate["baseline"][0].endswith("step-0.jsonl") and gate["candidate"][0].endswith("step-2.jsonl")
    assert summary["gate"]["degraded"] == gate["degraded"] and gate["tasks"][0]["n"] == 8


def test_every_optimizer_step_logs_group_phase_and_throughput_metrics(tiny_run):
    summary = run(compose(tiny_run + ["trainer.max_steps=3", "eval.enabled=false"]))
    entries = trainer_log(Path(summary["run_dir"]))
    assert [e["step"] for e in entries] == [1, 2, 3]
    previous_tokens = 0
    for entry in entries:
        missing = [k for k in STEP_METRICS if k not in entry]
        assert not missing, missing
        assert entry["timing/ref_logprobs_s"] == 0, "beta 0 and on-policy batches need no extra log-prob forward"
        for phase in ("generation", "reward", "update"):
            assert 0 < entry[f"timing/{phase}_s"] < entry["timing/step_s"], phase
        # On-policy: the tokens trained on in a step are exactly the tokens TRL counted when generating them.
        trained = entry["perf/tokens_per_s"] * entry["timing/step_s"]
        assert trained == pytest.approx(entry["num_tokens"] - previous_tokens, rel=1e-6)
        previous_tokens = entry["num_tokens"]
        assert 0.0 <= entry["groups/zero_variance_frac"] <= 1.0


def test_reused_generation_batches_still_report_throughput(tiny_run):
    """steps_per_generation 2: generation every other step, but every step trains on (and counts) tokens."""
    summary = run(compose(tiny_run + ["trainer.max_steps=2", "eval.enabled=false", "algorithm.steps_per_generation=2"]))
    entries = trainer_log(Path(summary["run_dir"]))
    assert entries[0]["timing/generation_s"] > 0 and entries[1]["timing/generation_s"] == 0
    assert all(e["perf/tokens_per_s"] > 0 for e in entries)
    assert entries[0]["timing/ref_logprobs_s"] > 0, "old-policy log-probs are needed when a batch is reused"


def test_algorithm_settings_reach_trl():
    from omegaconf import OmegaConf

    from align.methods.grpo.trainer import grpo_config

    config = OmegaConf.to_object(compose(["algorithm=gspo", "algorithm.beta=0.02", "+algorithm.trl.top_k=5"]))
    args = grpo_config(config.algorithm, {"output_dir": "/tmp/unused", "bf16": False}, [1.0])
    assert (args.importance_sampling_level, args.loss_type, args.epsilon, args.epsilon_high, args.beta, args.top_k) == (
        "sequence", "grpo", 3e-4, 4e-4, 0.02, 5)


def test_every_loss_type_trls_grpo_loss_implements_is_accepted():
    import inspect

    from trl import GRPOTrainer

    from align.methods.grpo.config import grpo_loss_types

    loss_source = inspect.getsource(GRPOTrainer._compute_loss)
    assert {"grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"} <= set(grpo_loss_types())
    assert all(f'"{name}"' in loss_source for name in grpo_loss_types()), "a listed loss type TRL's loss never reads"


@pytest.mark.parametrize("overrides", [
    ["algorithm.loss_type=grpo"],
    ["algorithm.loss_type=dr_grpo"],
    ["algorithm.loss_type=bnpo"],
    ["algorithm.loss_type=cispo"],
    ["algorithm.loss_type=sapo"],
    ["algorithm.loss_type=luspo", "algorithm.importance_sampling_level=sequence"],  # LUSPO is sequence-level
    ["algorithm.loss_type=vespo"],
    ["algorithm=gspo"],
    ["algorithm.beta=0.04"],  # loads a reference model: the ref_logprobs phase is measured
])
def test_loss_variants_train(tiny_run, overrides):
    summary = run(compose(tiny_run + ["eval.enabled=false", "trainer.max_steps=1"] + overrides))
    [entry] = trainer_log(Path(summary["run_dir"]))
    assert torch.isfinite(torch.tensor(entry["loss"]))
    if "algorithm.beta=0.04" in overrides:
        assert entry["timing/ref_logprobs_s"] > 0 and "kl" in entry


def test_sft_run(tiny_run):
    overrides = [o for o in tiny_run if not o.startswith("algorithm.")]
    summary = run(compose(overrides + ["algorithm=sft", "trainer.max_steps=3", "trainer.learning_rate=3e-3"]))
    entries = trainer_log(Path(summary["run_dir"]))
    assert entries[-1]["loss"] < entries[0]["loss"]
    assert (Path(summary["run_dir"]) / "final" / "model.safetensors").exists()


def test_warm_start_then_grpo(tiny_run):
    summary = run(compose(tiny_run + ["warm_start.max_steps=2", "eval.enabled=false"]))
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "warm_start" / "final" / "model.safetensors").exists()
    assert (run_dir / "final" / "model.safetensors").exists()


def test_lora_run_exports_an_adapter(tiny_run):
    summary = run(compose(tiny_run + ["model.lora.r=4", "eval.enabled=false", "trainer.max_steps=1"]))
    final = Path(summary["run_dir"]) / "final"
    assert (final / "adapter_model.safetensors").exists()


def test_tensorboard_logger_writes_events(tiny_run):
    summary = run(compose(tiny_run + ["logger=tensorboard", "eval.enabled=false", "trainer.max_steps=1"]))
    assert list((Path(summary["run_dir"]) / "tensorboard").rglob("events.out.tfevents.*"))


def test_wandb_offline_run_logs_config_but_never_the_key(tiny_run, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = run(compose(tiny_run + ["logger=wandb", "logger.tags=[test]", "eval.enabled=false",
                                      "trainer.max_steps=1"]))
    run_dir = Path(summary["run_dir"])
    # finish() returns before W&B's service process has flushed and closed the offline log; teardown waits for
    # it, as the atexit hook does when a real run's process ends. Reading earlier races the service (seen in CI).
    import wandb

    wandb.teardown()
    wandb_files = list((run_dir / "wandb").rglob("*"))
    [record] = [f for f in wandb_files if f.name.endswith(".wandb")]  # the offline run's protobuf log
    data = record.read_bytes()
    assert b"embedded:tiny" in data and b"loss_type" in data, "align's full config is logged to the run"
    assert b"groups/zero_variance_frac" in data, "step metrics reach W&B"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_periodic_checkpoints_are_hf_format_with_trainer_state(tiny_run):
    summary = run(compose(tiny_run + ["trainer.save_steps=1", "trainer.save_total_limit=5", "eval.enabled=false"]))
    run_dir = Path(summary["run_dir"])
    for step in (1, 2):
        checkpoint = run_dir / f"checkpoint-{step}"
        assert (checkpoint / "model.safetensors").exists() and (checkpoint / "trainer_state.json").exists()
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
        AutoModelForCausalLM.from_pretrained(checkpoint)


def test_attempts_of_a_resumed_run_log_to_one_wandb_run(tiny_run, tmp_path, monkeypatch):
    import wandb

    from align.tracking import resumable_run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "resumable"
    for steps in (1, 2):  # the second attempt continues the first from its checkpoint
        run(compose(tiny_run + ["logger=wandb", "eval.enabled=false", f"trainer.output_dir={out}", "resume=auto",
                                f"trainer.max_steps={steps}", "trainer.save_steps=1"]))
        wandb.teardown()
    attempts = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(name.endswith(f"-{resumable_run_id(out)}") for name in attempts)
