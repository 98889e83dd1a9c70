"""Two CPU processes under accelerate launch: DDP, ZeRO-2 and ZeRO-3 runs, and layout invariance of the losses."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.distributed


def launch(config: str | None, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if config == "cpu_ddp.yaml":
        env["ACCELERATE_USE_CPU"] = "true"  # DeepSpeed picks its CPU accelerator itself; this flag would disable it
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "launch" / "accelerate" / config)] if config else [sys.executable]
    result = subprocess.run(command + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.mark.parametrize("config, engine", [("cpu_ddp.yaml", "DDP"), ("cpu_zero2.yaml", "DeepSpeed ZeRO-2"),
                                            ("cpu_zero3.yaml", "DeepSpeed ZeRO-3")])
def test_grpo_two_processes(config, engine, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(config, ["-m", "align.train", f"trainer.output_dir={run_dir}", "trainer.max_steps=2",
                             "trainer.per_device_train_batch_size=4", "algorithm.num_generations=4",
                             "algorithm.max_completion_length=16", "data.synthetic.num_train=64",
                             "data.synthetic.num_eval=6", "eval.max_new_tokens=8", "eval.batch_size=4"])
    assert result.stdout.count("[align] run directory:") == 1, "one run directory, announced by rank 0 only"
    assert f"(2 processes, {engine} on CPU)" in result.stdout
    # rank 0's compact step lines, and none of the noise the ranks' dependencies print (DeepSpeed's compiler probes,
    # deprecation warnings from its collectives); accelerate's launcher process is not align's to quiet
    assert "step 2/2 | reward " in result.stdout
    assert not [noise for noise in ("gcc ", "is deprecated", "{'loss'") if noise in result.stdout + result.stderr]
    assert (run_dir / "final" / "model.safetensors").exists()
    assert (run_dir / "config.yaml").exists()
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    # held-out results gathered from both ranks, every row exactly once
    indices = [json.loads(line)["doc_id"] for line in (run_dir / "eval" / "step-2.jsonl").read_text().splitlines()]
    assert indices == list(range(6))


WORKER = str(REPO / "tests" / "distributed" / "invariance_worker.py")


def worker(tmp_path: Path, name: str, config: str | None, batch: int, accumulation: int) -> dict:
    out = tmp_path / name / "result.json"
    out.parent.mkdir()
    launch(config, [WORKER, str(out), str(batch), str(accumulation)])
    return json.loads(out.read_text())


def test_same_global_batch_gives_same_losses_and_weights(tmp_path):
    """1 process x batch 8 == 2 processes x batch 4 (DDP, ZeRO-2, ZeRO-3) == 1 process x batch 4 x accumulation 2.

    Losses to 1e-5 absolute, every weight tensor's sum to 1e-4 after 3 optimizer steps at lr 1e-3.
    """
    reference = worker(tmp_path, "1x8", None, 8, 1)
    layouts = {"1x4x2": worker(tmp_path, "1x4x2", None, 4, 2)}
    for config in ("cpu_ddp.yaml", "cpu_zero2.yaml", "cpu_zero3.yaml"):
        layouts[f"2x4-{config}"] = worker(tmp_path, f"2x4-{config}", config, 4, 1)
    assert len(reference["losses"]) == 3
    moved = [k for k, v in reference["weights"].items() if abs(v - reference["initial_weights"][k]) > 1e-3]
    assert len(moved) > len(reference["weights"]) // 2, "training must change the weights for the test to mean anything"
    for name, result in layouts.items():
        assert result["losses"] == pytest.approx(reference["losses"], abs=1e-5), name
        for key, value in reference["weights"].items():
            assert result["weights"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), (name, key)


def test_sage_zero3_each_rank_hints_its_own_groups(hint_writer, tmp_path):
    """ZeRO-3, 2 processes: only rank 0's groups collapse (the reward succeeds on rank 1 only), so only rank 0
    writes hints and re-rolls, while rank 1 joins every collective generation round with a filler. No deadlock."""
    from tests.conftest import SAGE_TEMPLATES, sage_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sage_rows(32, seed=3)))
    run_dir = tmp_path / "run"
    reward = "reward.sources=[{name: 'tests.methods.sage_rewards:only_rank_one'}]"
    launch("cpu_zero3.yaml", ["-m", "align.train", "algorithm=sage", f"model.path={hint_writer}",
                              f"data.source={data}", reward, f"trainer.output_dir={run_dir}", "trainer.max_steps=2",
                              "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                              "algorithm.max_completion_length=16", "eval.enabled=false", *SAGE_TEMPLATES])
    state = json.loads((run_dir / "trainer_state.json").read_text())
    steps = [e for e in state["log_history"] if "sage/collapsed_frac_before" in e]
    assert [e["step"] for e in steps] == [1, 2]
    for entry in steps:
        assert entry["sage/collapsed_frac_before"] == 0.5  # rank 0's 2 groups of 4
        assert entry["sage/hints_requested"] == 2.0 and entry["sage/hints_parsed"] == 2.0
        assert entry["sage/level_3_frac"] == 0.5 and entry["sage/level_0_frac"] == 0.5
    hints = (run_dir / "hints-rank0.jsonl").read_text().splitlines()
    assert len(hints) == 4 and not (run_dir / "hints-rank1.jsonl").exists()
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "cpu_zero3.yaml"])
def test_sage_loss_split_by_prompt_length_two_processes(config, hint_writer, tmp_path):
    """Each process trains one solved (short prompts) and one hinted (long prompts) group, so its loss forwards the
    two lengths separately: two forwards before one backward (DDP), the same number of forwards on both ranks
    (ZeRO-3)."""
    from tests.conftest import SAGE_TEMPLATES, sage_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sage_rows(32, seed=3)))
    run_dir = tmp_path / "run"
    long_hint = "algorithm.hint.solve_template='{question}\nHint: {hint}\n" + "Work column by column. " * 8 + "'"
    launch(config, ["-m", "align.train", "algorithm=sage", f"model.path={hint_writer}", f"data.source={data}",
                    "reward.sources=[{name: 'tests.methods.sage_rewards:first_group_only'}]",
                    f"trainer.output_dir={run_dir}", "trainer.max_steps=2", "trainer.per_device_train_batch_size=8",
                    "algorithm.num_generations=4", "algorithm.max_completion_length=16", "eval.enabled=false",
                    *SAGE_TEMPLATES, long_hint])  # hinted prompts far longer than plain ones: the split saves most
    state = json.loads((run_dir / "trainer_state.json").read_text())
    steps = [e for e in state["log_history"] if "sage/level_0_frac" in e]
    assert [e["sage/level_0_frac"] for e in steps] == [0.5, 0.5]  # one unhinted group per process, every step
    assert all(math.isfinite(e["loss"]) for e in state["log_history"] if "loss" in e)


@pytest.mark.parametrize("algorithm", ["fgrpo", "fhal"])
def test_fgrpo_and_fhal_zero3_two_processes(algorithm, tmp_path):
    run_dir = tmp_path / "run"
    launch("cpu_zero3.yaml", ["-m", "align.train", f"algorithm={algorithm}", f"trainer.output_dir={run_dir}",
                              "trainer.max_steps=2", "trainer.per_device_train_batch_size=4",
                              "algorithm.num_generations=4", "algorithm.max_completion_length=16",
                              "algorithm.pairs_per_step=2" if algorithm == "fhal" else "algorithm.divergence=js",
                              "data.synthetic.num_train=64", "eval.enabled=false"])
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    key = "fhal/pair_accuracy" if algorithm == "fhal" else "fgrpo/clamp_frac"
    assert [e["step"] for e in history if key in e] == [1, 2]
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("objective", ["gaussian_anchor", "causal_rm"])
def test_reward_model_zero3_two_processes(objective, tmp_path):
    """Both ranks train one model; CausalRM's propensity / noise models see every row's features (gathered), and the
    held-out metrics are printed once, by rank 0."""
    run_dir = tmp_path / "run"
    result = launch("cpu_zero3.yaml", ["-m", "align.train", "recipe=reward-gaussian-prefs-tiny",
                                       f"algorithm.objective={objective}", f"trainer.output_dir={run_dir}",
                                       "trainer.max_steps=3", "trainer.per_device_train_batch_size=8",
                                       "algorithm.data.synthetic.num_train=200",
                                       "algorithm.data.synthetic.num_eval=50"])
    record = json.loads((run_dir / "final" / "config.json").read_text())["align_reward"]
    assert record["objective"] == objective
    if objective == "causal_rm":
        assert record["rho_estimated"] and 0 < record["propensity_min"] < record["propensity_max"] <= 1
    else:
        assert len(record["anchor_thresholds"]) == 2
    assert result.stdout.count("[align] held-out accuracy") == 1


def test_grpo_scored_by_a_reward_model_zero3_two_processes(gaussian_reward_model, tmp_path):
    run_dir = tmp_path / "run"
    launch("cpu_zero3.yaml", ["-m", "align.train", "reward=reward_model",
                              f"reward.sources.0.kwargs.path={gaussian_reward_model['final_model']}",
                              "reward.sources.0.kwargs.quantile=0.25", f"trainer.output_dir={run_dir}",
                              "trainer.max_steps=2", "trainer.per_device_train_batch_size=4",
                              "algorithm.num_generations=4", "algorithm.max_completion_length=16",
                              "data.synthetic.num_train=64", "eval.enabled=false"])
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "rewards/reward_model/mean" in e] == [1, 2]
    assert (run_dir / "final" / "model.safetensors").exists()


def test_multiref_dpo_tsw_zero3_two_processes(tmp_path):
    """Both ranks precompute their share of every reference's log-probs, then train with one bandit: the ranks
    compare the bandit's state after every step (a mismatch fails the run), an odd validation subset exercises the
    padded sharding, and the checkpoint holds the state of the logged steps."""
    from align.models import resolve_model_path

    for tilt in ("0", "2", "0.5", "-1"):  # built once here rather than by both ranks at once
        resolve_model_path(f"embedded:tiny-pref:{tilt}")
    run_dir = tmp_path / "run"
    result = launch("cpu_zero3.yaml", ["-m", "align.train", "recipe=multiref-dpo-prefs-tiny",
                                       "algorithm.weighting=tsw", "algorithm.loss=mrpo", "algorithm.bandit_pairs=9",
                                       "algorithm.validation_size=40", "algorithm.data.synthetic.num_train=160",
                                       "algorithm.data.synthetic.num_eval=40", f"trainer.output_dir={run_dir}",
                                       "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.save_steps=2",
                                       "trainer.per_device_train_batch_size=4"])
    assert result.stdout.count("[align] held-out preference accuracy") == 1
    assert result.stdout.count("(train, 120 pairs): computed") == 3
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    arms = [int(e["arm"]) for e in history if "arm" in e]
    assert len(arms) == 3 and all(0 <= arm < 3 for arm in arms)
    state = json.loads((run_dir / "checkpoint-2" / "multiref_state.json").read_text())
    assert [arm for arm, _ in state["weighting"]["history"]] == arms[:2]
    assert (run_dir / "final" / "model.safetensors").exists()


def test_two_process_grpo_resumes_exactly_mid_epoch_after_the_first(tmp_path):
    """Resume mid-epoch in a later epoch under DDP: the prompt sampler sits behind accelerate's shard and skip
    wrappers there, and must still get its epoch (else the first epoch's order would be replayed)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from tests.resume.test_exact_resume import DENSE_REWARD, losses

    # 3 prompts x 4 completions = one epoch per 3 steps (2 prompts per step over both ranks); checkpoint 4 is
    # one step into the second epoch.
    args = ["-m", "align.train", "trainer.max_steps=7", "trainer.save_steps=2", "trainer.save_total_limit=5",
            "trainer.per_device_train_batch_size=4", "algorithm.num_generations=4",
            "algorithm.max_completion_length=16", "data.synthetic.num_train=6", "eval.enabled=false", DENSE_REWARD]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch("cpu_ddp.yaml", args + [f"trainer.output_dir={straight}"])
    resumed.mkdir()
    shutil.copy(straight / "config.yaml", resumed / "config.yaml")
    marker = json.loads((straight / ".align-run").read_text())
    del marker["finished"]  # as if stopped right after saving checkpoint-4
    (resumed / ".align-run").write_text(json.dumps(marker))
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    result = launch("cpu_ddp.yaml", args + [f"trainer.output_dir={resumed}", "resume=auto"])
    assert "resume=auto: continuing from checkpoint-4" in result.stdout
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(1, 8))
    for step in range(5, 8):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), f"loss of step {step}"
    weights_a, weights_b = (load_file(d / "final" / "model.safetensors") for d in (straight, resumed))
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=1e-6, msg=key)
