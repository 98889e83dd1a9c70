"""The console is for a person: compact step lines instead of metric dicts, a launch line in words, align's own
--help, dependency noise silenced, and a config error that imports nothing heavy."""

import json
import logging
import subprocess
import sys

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

import align.console
import align.progress
from align.console import (
    DPO_COLUMNS,
    GRPO_COLUMNS,
    REWARD_MODEL_COLUMNS,
    config_groups,
    describe_launch,
    phase_progress,
    quiet_dependencies,
    recipe_summary,
    step_line,
)
from align.progress import ConsoleProgress
from tests.conftest import REPO

# One GRPO logging step as the Trainer hands it to callbacks (keys as in trainer_state.json).
GRPO_LOG = {
    "loss": 0.0123, "grad_norm": 0.52, "learning_rate": 3e-05, "num_tokens": 26214.0, "reward": 0.6149,
    "reward_std": 0.31, "kl": 0.00412, "groups/zero_variance_frac": 0.25, "groups/solved_frac": 0.5,
    "timing/generation_s": 9.19, "timing/update_s": 4.35, "perf/tokens_per_s": 1234.5, "heldout_accuracy": 0.7071,
    "clip_ratio/region_mean": 0.0, "completions/mean_length": 35.5, "entropy": 5.31, "epoch": 0.024,
}
# What the run prints in their place and nothing of a dependency's: the strings each known noise source printed.
NOISE = ("Running in WANDB offline mode", "Setting accelerator to CPU", "is_gradient_checkpointing", "fontManager",
         "LOAD REPORT", "Map:", "Tokenizing train dataset", "Loading weights", "Writing model shards", "it/s]",
         "{'loss'", "'learning_rate'")


def test_grpo_step_line_shows_the_few_numbers_that_matter():
    line = step_line(GRPO_LOG, 20, 120, GRPO_COLUMNS)
    assert line == "step 20/120 | reward 0.615 | kl 0.00412 | zero-var 0.25 | acc 0.707 | 1.2k tok/s"


def test_columns_show_only_what_was_logged_and_held_out_logs_read_as_such():
    without_kl = {k: v for k, v in GRPO_LOG.items() if k not in ("kl", "heldout_accuracy")}
    assert step_line(without_kl, 3, 6, GRPO_COLUMNS) == "step 3/6 | reward 0.615 | zero-var 0.25 | 1.2k tok/s"
    assert step_line({"learning_rate": 1e-5, "epoch": 0.1}, 3, 6, GRPO_COLUMNS) is None
    reward_model_eval = {"eval_loss": 0.5213, "eval_accuracy": 0.8125, "eval_runtime": 3.2, "epoch": 1.0}
    assert step_line(reward_model_eval, 0, 6, REWARD_MODEL_COLUMNS) == "held-out step 0/6 | loss 0.521 | acc 0.812"
    dpo = {"loss": 0.69, "rewards/margins": 0.0123, "policy/preference_accuracy": 0.55, "perf/tokens_per_s": 2.5e6}
    assert step_line(dpo, 1, 60, DPO_COLUMNS) == "step 1/60 | loss 0.69 | margin 0.0123 | pref acc 0.55 | 2.5M tok/s"
    assert step_line({"train_runtime": 95.26, "train_loss": 0.1}, 120, 120, GRPO_COLUMNS, label="warm start") == \
        "warm start step 120/120 done in 95.3 s"


def _callback_state(step: int, max_steps: int) -> tuple[TrainingArguments, TrainerState, TrainerControl]:
    state = TrainerState(max_steps=max_steps, global_step=step, is_world_process_zero=True)
    return TrainingArguments(output_dir="unused", report_to=[]), state, TrainerControl()


def test_callback_prints_the_compact_line_not_the_dict(capsys):
    args, state, control = _callback_state(20, 120)
    capsys.readouterr()  # whatever building TrainingArguments printed
    progress = ConsoleProgress(GRPO_COLUMNS)
    progress.on_train_begin(args, state, control)
    progress.on_log(args, state, control, logs=dict(GRPO_LOG))
    progress.on_train_end(args, state, control)
    out = capsys.readouterr()
    assert out.out == "step 20/120 | reward 0.615 | kl 0.00412 | zero-var 0.25 | acc 0.707 | 1.2k tok/s\n"
    assert out.err == "", "no bar without a terminal (CI, Slurm log files)"


def test_callback_on_a_terminal_draws_a_bar_whose_postfix_carries_the_numbers(monkeypatch, capsys):
    monkeypatch.setattr(align.progress, "interactive", lambda: True)
    args, state, control = _callback_state(0, 120)
    progress = ConsoleProgress(GRPO_COLUMNS)
    progress.on_train_begin(args, state, control)
    state.global_step = 20
    progress.on_step_end(args, state, control)
    progress.on_log(args, state, control, logs=dict(GRPO_LOG))
    assert progress.bar.n == 20
    assert progress.bar.postfix == "reward 0.615, kl 0.00412, zero-var 0.25, acc 0.707, 1.2k tok/s"
    progress.on_train_end(args, state, control)
    assert "step 20/120 | reward 0.615" in capsys.readouterr().out


def test_callback_draws_a_bar_over_held_out_batches_while_the_trainer_evaluates(monkeypatch, capsys):
    monkeypatch.setattr(align.progress, "interactive", lambda: True)
    args, state, control = _callback_state(0, 6)
    progress = ConsoleProgress(REWARD_MODEL_COLUMNS)
    for _ in range(3):
        progress.on_prediction_step(args, state, control, eval_dataloader=[None] * 13)
    assert (progress.eval_bar.n, progress.eval_bar.total) == (3, 13)
    progress.on_evaluate(args, state, control)
    assert progress.eval_bar is None
    assert "held-out eval" in capsys.readouterr().err


def test_callback_is_silent_on_other_ranks(capsys):
    args, state, control = _callback_state(20, 120)
    state.is_world_process_zero = False
    capsys.readouterr()
    ConsoleProgress(GRPO_COLUMNS).on_log(args, state, control, logs=dict(GRPO_LOG))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("args, words", [
    ((1, "NO", "cpu"), "1 process on CPU"),
    ((2, "MULTI_CPU", "cpu"), "2 processes, DDP on CPU"),
    ((2, "DEEPSPEED", "cpu", "3"), "2 processes, DeepSpeed ZeRO-3 on CPU"),
    ((8, "MULTI_GPU", "cuda"), "8 processes, DDP on GPU"),
    ((16, "DEEPSPEED", "cuda", None), "16 processes, DeepSpeed on GPU"),
])
def test_launch_in_words(args, words):
    assert describe_launch(*args) == words


def test_recipe_summary_is_the_first_sentence_of_its_comment():
    assert recipe_summary(REPO / "recipes" / "grpo-arithmetic-tiny.yaml") == (
        "Quickstart: SFT warm start of the embedded tiny model on 2-digit addition, then GRPO against the answer "
        "verifier.")
    groups = config_groups(REPO / "configs")
    assert {"algorithm", "model", "hydra/launcher"} <= set(groups) and "recipe" not in groups
    assert "sage_light" in groups["algorithm"] and "slurm" in groups["hydra/launcher"]


def test_phase_progress_draws_only_on_a_terminal_and_on_the_main_process(monkeypatch, capsys):
    assert phase_progress(range(3), "held-out eval") == range(3), "no terminal: the plain iterable"
    monkeypatch.setattr(align.console, "interactive", lambda: True)
    assert phase_progress(range(3), None) == range(3), "not the main process"
    assert list(phase_progress(range(3), "held-out eval")) == [0, 1, 2]
    assert "held-out eval" in capsys.readouterr().err


def test_known_dependency_noise_is_dropped_at_its_source():
    quiet_dependencies("none")
    deepspeed, seen = logging.getLogger("DeepSpeed"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    deepspeed.addHandler(handler)  # DeepSpeed's own logger does not propagate: listen on it directly
    try:
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                          "detect it.")
        deepspeed.warning("ZeRO-3 needs more memory")  # anything else still reaches the person
    finally:
        deepspeed.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["ZeRO-3 needs more memory"]


def test_logger_none_imports_transformers_without_the_wandb_line():
    code = ("import os; os.environ['WANDB_MODE'] = 'offline'\n"
            "from align.console import quiet_dependencies; quiet_dependencies('none')\n"
            "from transformers import Trainer; print(os.environ['WANDB_MODE'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "offline\n", "the notice is gone and WANDB_MODE is as the user set it"


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level packages in `python -X importtime` output."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


HEAVY = {"torch", "transformers", "trl", "datasets", "deepspeed", "accelerate", "peft"}


def test_help_is_aligns_own_and_loads_nothing_heavy():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "align.train", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("usage: python -m align.train")
    assert "  grpo-arithmetic-tiny\n    Quickstart: SFT warm start" in out
    assert "algorithm:" in out and "sage_light" in out and "hydra/launcher: local, slurm" in out
    assert "docs/" in out and "--hydra-help" in out
    assert not HEAVY & _imported(result.stderr)


def test_config_error_is_reported_before_anything_heavy_is_imported():
    """A config error must print within ~2 s: composition, validation and the error report import no torch,
    transformers or TRL (measured by what is imported, not by a clock)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "align.train", "trainer.max_steps=-1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["align: error: trainer.max_steps must be >= 1, got -1."], errors
    assert not HEAVY & _imported(result.stderr), HEAVY & _imported(result.stderr)


@pytest.mark.slow
def test_a_run_prints_compact_lines_and_no_dependency_noise(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "align.train", "recipe=grpo-arithmetic-tiny", f"trainer.output_dir={run_dir}",
         "trainer.max_steps=2", "warm_start.max_steps=2", "trainer.per_device_train_batch_size=8",
         "algorithm.num_generations=4", "algorithm.max_completion_length=8", "data.synthetic.num_train=32",
         "data.synthetic.num_eval=4", "eval.max_new_tokens=8", "eval.every_steps=1", "eval.gate=false"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"[align] run directory: {run_dir} (1 process on CPU)", lines[:3]
    assert "warm start step 2/2 | loss " in result.stdout
    assert any(line.startswith("step 1/2 | reward ") and " | acc " in line and line.endswith(" tok/s")
               for line in lines), lines
    console = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in console], console[-3000:]
    # Only the console changed: every metric still reaches trainer_state.json.
    logged = [e for e in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert {"timing/generation_s", "completions/mean_length", "perf/tokens_per_s", "heldout_accuracy"} <= \
        set(logged[0])
