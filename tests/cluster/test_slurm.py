"""Real Slurm: a Hydra sweep through the submitit launcher, and the multi-node sbatch template, on a single-node
cluster (launch/slurm/setup-test-cluster.sh starts one when Slurm is not already up; that needs root and apt).

The sweep's launcher settings apply to every point alike (hydra-submitit-launcher has no per-point resources), so
the whole 2-point sweep runs with 2 tasks per job: both points cover distributed start-up under srun (submitit runs
the training function in each task, align.cluster turns the Slurm variables into a 2-process gloo group). On 2 CPUs
the two jobs run one after the other.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TINY = ["recipe=grpo-arithmetic-tiny", "warm_start.max_steps=0", "trainer.max_steps=2", "trainer.save_steps=1",
        "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4", "algorithm.max_completion_length=16",
        "data.synthetic.num_train=64", "eval.enabled=false"]


def job_env() -> dict:
    # sbatch exports the submitting environment to the job: offline, one thread per process, the test's cache.
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def cancel(name: str) -> str:
    """Cancel this test's jobs (by their unique name) and describe what was left in the queue."""
    queue = subprocess.run(["squeue", "--name", name, "-h", "-o", "%i %T %R"], capture_output=True, text=True).stdout
    subprocess.run(["scancel", "--name", name], capture_output=True)
    return queue


def run_dirs(root: Path) -> list[Path]:
    """The run directories under `root`: those holding align's config.yaml and a final model."""
    return sorted(p.parent for p in root.rglob("config.yaml") if (p.parent / "final").is_dir())


def test_two_point_sweep_of_two_process_jobs(slurm, tmp_path):
    """`-m hydra/launcher=slurm ... trainer.seed=1,2`: one Slurm job per point, each job 2 srun tasks = 2 training
    processes; both runs train 2 steps, checkpoint, export and log to W&B (offline) under the sweep's group."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra: pip install "
                        "'align[slurm]'")
    pytest.importorskip("wandb", reason="needs the wandb extra")
    name = f"align-test-{uuid.uuid4().hex[:8]}"
    output_root = tmp_path / "runs"
    command = [sys.executable, "-m", "align.train", "-m", "hydra/launcher=slurm", *TINY, "trainer.seed=1,2",
               "logger=wandb", f"trainer.output_root={output_root}", f"hydra.launcher.name={name}",
               "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=2",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
    try:
        result = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sweep did not finish in 300 s; cancelled jobs: {cancel(name)!r}; logs under {output_root}")
    logs = {p.name: p.read_text() for p in output_root.glob("sweeps/*/.submitit/*/*_log.*")}
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(f"== {k}\n{v[-1500:]}" for k, v in logs.items())

    [sweep_dir] = output_root.glob("sweeps/*")
    [script] = sweep_dir.glob(".submitit/*/*_submission.sh")
    sbatch = script.read_text()
    for line in ("#SBATCH --ntasks-per-node=2", "#SBATCH --signal=USR1@180", "#SBATCH --requeue"):
        assert line in sbatch, f"{line} missing from the generated sbatch script"
    # submitit's per-task logs: 2 points x 2 tasks, and every run announced by its rank 0 only
    outs = [text for log, text in logs.items() if log.endswith("_log.out")]
    assert len(outs) == 4
    assert sum(text.count("[align] run directory:") for text in outs) == 2
    assert sum(text.count("(2 processes, DDP on CPU)") for text in outs) == 2

    runs = run_dirs(output_root)
    assert len(runs) == 2, runs
    seeds = set()
    for run in runs:
        seed = OmegaConf.load(run / "config.yaml").trainer.seed
        seeds.add(seed)
        state = json.loads((run / "trainer_state.json").read_text())
        assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
        assert (run / "checkpoint-2" / "model.safetensors").exists()
        assert (run / "final" / "model.safetensors").exists()
        [record] = list((run / "wandb").rglob("*.wandb"))  # the offline run's protobuf log
        data = record.read_bytes()
        assert f"sweep-{sweep_dir.name}".encode() in data, "W&B group = the sweep's name"
        point = sorted([*TINY, "logger=wandb", f"trainer.output_root={output_root}", f"trainer.seed={seed}"])
        # (the sweeper re-renders each point's overrides: eval.enabled=false comes back as eval.enabled=False)
        assert ",".join(point).lower().encode() in data.lower(), "W&B run name = the point's overrides"
    assert seeds == {1, 2}


def test_multinode_template_runs_deepspeed_zero3_over_two_tasks(slurm, tmp_path):
    """launch/slurm/multinode.sbatch as written, shrunk to this machine by sbatch options (1 node x 2 CPU tasks) and
    pointed at the CPU ZeRO-3 accelerate config: srun starts the 2 processes, the script's rendezvous and
    align.cluster bring them up as one DeepSpeed ZeRO-3 job."""
    name = f"align-test-{uuid.uuid4().hex[:8]}"
    env = {**job_env(), "RECIPE": "grpo-arithmetic-tiny", "RUN_NAME": "template", "PYTHON": sys.executable,
           "ALIGN_ACCELERATE_CONFIG": "launch/accelerate/cpu_zero3.yaml"}
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
         "--cpus-per-task=1", "--mem=4G", "--time=10", f"--output={tmp_path}/slurm-%j.out",
         str(REPO / "launch" / "slurm" / "multinode.sbatch"), *TINY[1:], f"trainer.output_root={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True)
    job = submit.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} did not finish in 240 s; cancelled: {cancel(name)!r}")
        time.sleep(2)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in info, log[-4000:]
    assert f":{10000 + int(job) % 20000}, run template," in log, "rendezvous port derived from the job id"
    assert log.count("(2 processes, DeepSpeed ZeRO-3 on CPU)") == 1, log[-4000:]
    run = tmp_path / "template"
    assert (run / "config.yaml").exists() and (run / "final" / "model.safetensors").exists()
    assert (run / "checkpoint-2").is_dir()
