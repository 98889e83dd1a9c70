"""Stop signals in every phase of a run (align.preemption): SIGTERM / SIGUSR1 / SIGINT sent to a real `align.train`
process during the warm start, model loading, reference scoring, training and the final evaluation. Each run ends
with exactly one `[align] stopped by ...` line naming the phase and what was kept, the documented exit status, no
traceback, and `resume=auto` then finishes the run from what was kept.

Signals are aimed by waiting for what the run itself writes (a log line, a file). Model loading and the final
evaluation print nothing while they run and are over in a blink on the tiny model: for those two the process is
started through tests/resume/stop_hooks.py, which holds that call until the signal has arrived.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.checkpoints import is_complete
from align.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from align.train import run
from tests.conftest import REPO, compose

pytestmark = pytest.mark.slow

STEPS = 3
GRPO = ["recipe=grpo-arithmetic-tiny", "warm_start.max_steps=0", f"trainer.max_steps={STEPS}",
        "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4", "algorithm.max_completion_length=16",
        "data.synthetic.num_train=64", "eval.max_samples=8", "eval.max_new_tokens=16", "eval.gate=false",
        "resume=auto"]


def grpo(out: Path, *changes: str) -> list[str]:
    """GRPO's overrides writing into `out`, with `changes` (key=value) replacing or adding settings."""
    settings = dict(arg.split("=", 1) for arg in [*GRPO, f"trainer.output_dir={out}", *changes])
    return [f"{key}={value}" for key, value in settings.items()]


def start(args: list[str], log: Path, hold: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """`python -m align.train args` (or through stop_hooks, holding the call `hold` = "MODULE:FUNCTION CALL"),
    stdout and stderr into `log` (a file, not a pipe: a full pipe would stall the run)."""
    command = ["-m", "tests.resume.stop_hooks", *hold.split(), "--"] if hold else ["-m", "align.train"]
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *command, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for(process: subprocess.Popen, condition, log: Path, what: str) -> None:
    deadline = time.monotonic() + 600
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{what} never happened:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def in_log(log: Path, text: str):
    return lambda: text in log.read_text()


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    """(exit status, the output) once the process ends on its own."""
    try:
        code = process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the run did not stop:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


def stopped_by(signum: int, args: list[str], log: Path, condition, what: str) -> tuple[int, str]:
    """Start `python -m align.train args`, send `signum` once `condition()` holds (`what` names it for a failure),
    and return (exit status, output) once the run has stopped by itself."""
    process = start(args, log)
    wait_for(process, condition, log, what)
    process.send_signal(signum)
    return finish(process, log)


def stop_line(output: str) -> str:
    """The one line a stopped run ends with; no traceback anywhere."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("[align] stopped")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def steps_trained(run_dir: Path) -> list[int]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["step"] for entry in history if "loss" in entry]


def fake_scontrol(tmp_path: Path) -> tuple[dict, Path]:
    """Environment of a Slurm job (SLURM_JOB_ID) whose `scontrol` records its arguments: the requeue path runs for
    real up to the Slurm command."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    return {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def test_sigterm_in_the_warm_start_keeps_a_warm_start_checkpoint_that_resume_continues(tmp_path, capfd):
    out = tmp_path / "run"
    args = grpo(out, "warm_start.max_steps=12", "warm_start.per_device_train_batch_size=8", "trainer.max_steps=1")
    log = tmp_path / "stopped.log"
    code, output = stopped_by(signal.SIGTERM, args, log, in_log(log, "warm start: SFT for 12 steps"), "the warm start")

    line = stop_line(output)
    match = re.fullmatch(rf"\[align\] stopped by SIGTERM during the warm start; kept: {out}/warm_start/checkpoint-"
                         rf"(\d+); run again with resume=auto to continue", line)
    assert match and code == EXIT_PREEMPTED, line
    step = int(match.group(1))
    assert 1 <= step < 12 and is_complete(out / "warm_start" / f"checkpoint-{step}")
    assert not (out / "warm_start" / "final").exists() and not list(out.glob("checkpoint-*"))

    capfd.readouterr()
    summary = run(compose(args))
    assert f"resume=auto: continuing the warm start from checkpoint-{step}" in capfd.readouterr().out
    assert Path(summary["final_model"], "model.safetensors").is_file()
    assert (out / "warm_start" / "final" / "model.safetensors").is_file()
    assert not list((out / "warm_start").glob("checkpoint-*")), "a finished warm start needs no checkpoints"
    warm_start = json.loads((out / "warm_start" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in warm_start if "loss" in e] == list(range(1, 13)), "each step once, none past the end"


def test_sigusr1_during_model_loading_under_slurm_requeues_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = grpo(out)
    env, calls = fake_scontrol(tmp_path)
    log = tmp_path / "stopped.log"
    process = start(args, log, hold="align.models:load_causal_lm 1", env=env)
    wait_for(process, in_log(log, "[test] holding"), log, "the model load")
    process.send_signal(signal.SIGUSR1)
    code, output = finish(process, log)

    assert stop_line(output) == (f"[align] stopped by SIGUSR1 during model loading; kept: the run directory {out} "
                                 f"(no checkpoint yet); Slurm job 4242 requeued; it continues from there with "
                                 f"resume=auto")
    assert code == 0 and calls.read_text().split() == ["requeue", "4242"]
    assert not (out / "eval").exists(), "stopped before training"

    summary = run(compose(args))  # what the requeued job runs
    assert steps_trained(out) == list(range(1, STEPS + 1)) and Path(summary["final_model"]).is_dir()


def test_sigterm_during_reference_scoring_keeps_the_scored_references(tmp_path, capfd):
    out, cache = tmp_path / "run", tmp_path / "reference-cache"
    args = ["recipe=multiref-dpo-prefs-tiny", "trainer.max_steps=2", "algorithm.data.synthetic.num_train=150",
            "algorithm.data.synthetic.num_eval=20", "algorithm.validation_size=20", "algorithm.bandit_pairs=16",
            f"algorithm.cache_dir={cache}", f"trainer.output_dir={out}", "resume=auto"]
    log = tmp_path / "stopped.log"
    # SIGTERM while the second reference is scored
    code, output = stopped_by(signal.SIGTERM, args, log, in_log(log, "[align] reference 1/3"), "the first reference")

    line = stop_line(output)
    match = re.fullmatch(rf"\[align\] stopped by SIGTERM during reference scoring; kept: the log-probs of ([23]) of "
                         rf"3 references, cached in {cache}; run again with resume=auto to continue", line)
    assert match and code == EXIT_PREEMPTED, line
    scored = int(match.group(1))

    capfd.readouterr()
    summary = run(compose(args))
    lines = capfd.readouterr().out.splitlines()
    cache_hit = {k: all("cache hit" in line for line in lines if line.startswith(f"[align] reference {k}/3"))
                 for k in (1, 2, 3)}
    assert cache_hit == {k: k <= scored for k in (1, 2, 3)}, lines
    assert Path(summary["final_model"], "model.safetensors").is_file()


def test_sigint_in_training_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    args = grpo(out)
    log = tmp_path / "stopped.log"
    # SIGINT while the first optimizer step is under way
    code, output = stopped_by(signal.SIGINT, args, log, (out / "eval" / "step-0.jsonl").exists,
                              "the evaluation before training")

    assert stop_line(output) == (f"[align] stopped by SIGINT during training; kept: {out}/checkpoint-1; run again "
                                 f"with resume=auto to continue")
    assert code == EXIT_INTERRUPTED and "Ctrl-C again to stop at once" in output
    assert is_complete(out / "checkpoint-1") and not (out / "final").exists()

    run(compose(args))
    assert steps_trained(out) == list(range(1, STEPS + 1))


def test_a_second_sigint_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "stopped.log"
    process = start(grpo(out, "trainer.max_steps=50"), log)
    wait_for(process, (out / "eval" / "step-0.jsonl").exists, log, "the evaluation before training")
    process.send_signal(signal.SIGINT)
    wait_for(process, in_log(log, "Ctrl-C again to stop at once"), log, "the first Ctrl-C's notice")
    process.send_signal(signal.SIGINT)
    code, output = finish(process, log)

    assert stop_line(output).startswith("[align] stopped at once by Ctrl-C during training; kept: the complete "
                                        "checkpoints only")
    assert code == EXIT_INTERRUPTED


def test_sigterm_in_the_final_evaluation_keeps_the_last_step_and_resume_only_finishes(tmp_path, capfd):
    out = tmp_path / "run"
    args = grpo(out)
    log = tmp_path / "stopped.log"
    process = start(args, log, hold="align.evaluation:evaluate_held_out 2")  # the first call is before training
    wait_for(process, in_log(log, "[test] holding"), log, "the final evaluation")
    process.send_signal(signal.SIGTERM)
    code, output = finish(process, log)

    assert stop_line(output) == (f"[align] stopped by SIGTERM during the final evaluation; kept: {out}/checkpoint-"
                                 f"{STEPS}; run again with resume=auto to continue")
    assert code == EXIT_PREEMPTED and is_complete(out / f"checkpoint-{STEPS}") and not (out / "final").exists()
    measured = (out / "eval" / f"step-{STEPS}.jsonl").stat().st_mtime_ns

    capfd.readouterr()
    summary = run(compose(args))
    printed = capfd.readouterr().out
    assert f"continuing from checkpoint-{STEPS}" in printed and "held-out accuracy after training" in printed
    assert steps_trained(out) == list(range(1, STEPS + 1)), "no step past max_steps"
    assert (out / "eval" / f"step-{STEPS}.jsonl").stat().st_mtime_ns == measured, "the final evaluation is not redone"
    assert Path(summary["final_model"], "model.safetensors").is_file()
