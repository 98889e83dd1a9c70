"""The command line as users run it: console script, Hydra launchers, multirun sweeps."""

import subprocess
import sys

from tests.conftest import REPO


def align_train(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "align.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


def test_console_script_prints_the_composed_config():
    script = REPO / ".venv" / "bin" / "align-train"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "align.train"]
    result = subprocess.run(command + ["recipe=grpo-arithmetic-tiny", "--cfg", "job"], cwd="/", capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "sloppy_fraction: 0.5" in result.stdout and "name: grpo" in result.stdout


def test_slurm_and_local_launchers_compose():
    slurm = align_train("hydra/launcher=slurm", "--cfg", "hydra")
    assert slurm.returncode == 0, slurm.stderr
    assert "submitit_folder" in slurm.stdout and "gpus_per_node: 8" in slurm.stdout
    local = align_train("hydra/launcher=local", "--cfg", "hydra")
    assert local.returncode == 0 and "BasicLauncher" in local.stdout


def test_multirun_sweep_gives_each_point_its_own_run_directory(tmp_path):
    result = align_train("-m", f"trainer.output_root={tmp_path}", "algorithm.loss_type=grpo,dr_grpo",
                         "trainer.max_steps=1", "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                         "algorithm.max_completion_length=8", "eval.enabled=false", "data.synthetic.num_train=32")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if (p / "final" / "model.safetensors").exists())
    assert len(runs) == 2 and runs[0].name.endswith("-0") and runs[1].name.endswith("-1")
    assert "loss_type: dr_grpo" in (runs[1] / "config.yaml").read_text()
