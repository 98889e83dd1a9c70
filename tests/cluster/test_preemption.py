"""Preemption under real Slurm: SIGUSR1 to a running job of launch/slurm/multinode.sbatch (which asks for
--requeue) makes the trainer save at the next step boundary, requeue the job and exit; the requeued job resumes
from that checkpoint with resume=auto and finishes with the same weights and losses as an uninterrupted run."""

import re
import subprocess
import sys
import time
import uuid

import pytest
import torch
from safetensors.torch import load_file

from align.checkpoints import COMPLETE_MARKER
from tests.cluster.test_slurm import cancel, job_env
from tests.conftest import REPO
from tests.resume.test_exact_resume import DENSE_REWARD, losses

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 8
OVERRIDES = ["warm_start.max_steps=0", f"trainer.max_steps={STEPS}", "trainer.per_device_train_batch_size=8",
             "algorithm.num_generations=4", "algorithm.max_completion_length=32", "data.synthetic.num_train=64",
             "eval.enabled=false", DENSE_REWARD]


def job_state(job: str) -> str:
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in info.split() if f.startswith("JobState=")), "GONE")


def wait_for(condition, seconds: float, what: str, name: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:.0f} s; cancelled: {cancel(name)!r}")
        time.sleep(0.2)


def test_sigusr1_saves_requeues_and_the_requeued_job_finishes_identically(slurm, tmp_path):
    name = f"align-test-{uuid.uuid4().hex[:8]}"
    env = {**job_env(), "RECIPE": "grpo-arithmetic-tiny", "RUN_NAME": "preempted", "PYTHON": sys.executable,
           "ALIGN_ACCELERATE_CONFIG": "launch/accelerate/cpu_ddp.yaml", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "slurm.out"
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
         "--cpus-per-task=1", "--mem=4G", "--time=10", f"--output={log}",
         str(REPO / "launch" / "slurm" / "multinode.sbatch"), *OVERRIDES, f"trainer.output_root={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job = submit.stdout.strip().split(";")[0]
    run_dir = tmp_path / "preempted"

    first_step = re.compile(r"^step \d+/\d+ \|", re.MULTILINE)  # the console's line per training step
    wait_for(lambda: log.exists() and first_step.search(log.read_text()), 180, "the first training step", name)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=USR1@180 sends near the limit
    wait_for(lambda: "requeued; it continues from there" in log.read_text(), 120, "the requeue", name)
    saved = [p for p in run_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists()]
    assert len(saved) == 1 and not (run_dir / "final").exists(), "saved at the step boundary, did not finish"
    stopped_at = int(saved[0].name.split("-")[1])
    assert 1 <= stopped_at < STEPS

    # Slurm holds a requeued job for cred_expire + 1 s before it may start; release it now.
    wait_for(lambda: job_state(job) in ("PENDING", "REQUEUED", "REQUEUE_HOLD"), 60, "the requeued state", name)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    wait_for(lambda: job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 300, "the requeued run", name)
    text = log.read_text()
    assert job_state(job) in ("COMPLETED", "GONE"), text[-4000:]
    assert "(restart 1)" in text and f"resume=auto: continuing from checkpoint-{stopped_at}" in text, text[-4000:]
    assert (run_dir / "final" / "model.safetensors").exists()

    # The same run uninterrupted, in a plain process with the job's thread count.
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "align.train", "recipe=grpo-arithmetic-tiny", *OVERRIDES,
                    f"trainer.output_dir={reference}"], cwd=REPO, env={**job_env(), "PYTHONUNBUFFERED": "1"},
                   check=True, capture_output=True, timeout=300)
    a, b = losses(reference), losses(run_dir)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in range(stopped_at + 1, STEPS + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), f"loss of step {step}"
    weights_a, weights_b = (load_file(d / "final" / "model.safetensors") for d in (reference, run_dir))
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=1e-6, msg=key)
