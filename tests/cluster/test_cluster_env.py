"""align.cluster (Slurm task variables -> torch.distributed's) and the W&B names of sweep points: pure functions on
hand-written environments, no Slurm needed."""

import subprocess

import pytest

from align.cluster import (
    accelerate_config_env,
    adopt_slurm_environment,
    expand_nodelist,
    expand_tasks_per_node,
    master_port,
    torch_distributed_env,
)
from align.tracking import REDACTED, sweep_names
from tests.conftest import REPO

NODELISTS = {
    "vm": ["vm"],
    "node[01-03,07]": ["node01", "node02", "node03", "node07"],
    "a[1-2],b5,c[08-10]": ["a1", "a2", "b5", "c08", "c09", "c10"],
    "gpu-a100-[9-11]": ["gpu-a100-9", "gpu-a100-10", "gpu-a100-11"],
    "r[1-2]n[1-2]": ["r1n1", "r1n2", "r2n1", "r2n2"],
    "x[001-002],y": ["x001", "x002", "y"],
}


@pytest.mark.parametrize("nodelist, hosts", NODELISTS.items())
def test_compressed_nodelists_expand_in_order(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.slow  # the first test to ask for the cluster may start it
@pytest.mark.parametrize("nodelist", NODELISTS)
def test_the_parser_agrees_with_scontrol(slurm, nodelist):
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert expand_nodelist(nodelist) == out.stdout.split()


def test_unbalanced_brackets_are_an_error():
    with pytest.raises(ValueError, match="unbalanced"):
        expand_nodelist("node[01-03")


def test_tasks_per_node_expand():
    assert expand_tasks_per_node("8") == [8]
    assert expand_tasks_per_node("4(x2),2") == [4, 4, 2]
    with pytest.raises(ValueError):
        expand_tasks_per_node("4x2")


def step_env(**overrides) -> dict:
    """Task 5 of an srun step of 2 nodes x 4 tasks (job 123456), as Slurm sets it on gpu02."""
    env = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_STEP_NODELIST": "gpu[01-02]",
           "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_TASKS_PER_NODE": "4(x2)",
           "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURMD_NODENAME": "gpu02", "PATH": "/usr/bin"}
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def test_a_task_of_a_multi_node_step_gets_its_rank_and_the_rendezvous():
    assert torch_distributed_env(step_env()) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "1",
        "MASTER_ADDR": "gpu01", "MASTER_PORT": str(10000 + 123456 % 20000)}


def test_uneven_tasks_per_node_and_the_job_variables_as_fallback():
    env = step_env(SLURM_STEP_NODELIST=None, SLURM_STEP_TASKS_PER_NODE=None, SLURM_JOB_NODELIST="n[1-2]",
                   SLURM_TASKS_PER_NODE="3,1", SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="3", SLURM_LOCALID="0",
                   SLURMD_NODENAME="n2")
    got = torch_distributed_env(env)
    assert (got["WORLD_SIZE"], got["LOCAL_WORLD_SIZE"], got["NODE_RANK"], got["MASTER_ADDR"]) == ("4", "1", "1", "n1")


def test_hostnames_from_scontrol_are_used_when_given():
    assert torch_distributed_env(step_env(), hostnames=["head", "gpu02"])["MASTER_ADDR"] == "head"


@pytest.mark.parametrize("why, env", [
    ("the batch script itself (no srun step)", step_env(SLURM_STEP_NUM_TASKS=None, SLURM_STEP_NODELIST=None)),
    ("a one-task step", step_env(SLURM_STEP_NUM_TASKS="1", SLURM_PROCID="0")),
    ("torchrun / accelerate launch already set RANK", step_env(RANK="5")),
    ("not under Slurm", {"PATH": "/usr/bin"}),
])
def test_nothing_is_set(why, env):
    assert torch_distributed_env(env) == {}, why


def test_exported_rendezvous_is_kept():
    got = torch_distributed_env(step_env(MASTER_ADDR="10.0.0.1", MASTER_PORT="29500"))
    assert "MASTER_ADDR" not in got and "MASTER_PORT" not in got and got["RANK"] == "5"


def test_master_port_stays_in_its_range_and_is_fixed_by_the_job_id():
    assert master_port("123456") == master_port(123456) == 13456
    assert all(10000 <= master_port(job) < 30000 for job in (0, 1, 19999, 20000, 987654321))


def test_accelerate_configs_map_to_the_variables_accelerate_launch_exports():
    from omegaconf import OmegaConf

    def load(name):
        return OmegaConf.to_container(OmegaConf.load(REPO / "launch" / "accelerate" / name))

    assert accelerate_config_env(load("cpu_zero3.yaml")) == {
        "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "auto", "ACCELERATE_GRADIENT_CLIPPING": "auto",
        "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}
    assert accelerate_config_env(load("zero3.yaml"))["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert accelerate_config_env(load("cpu_ddp.yaml")) == {"ACCELERATE_MIXED_PRECISION": "no"}


def test_adopt_sets_the_variables_and_cpu_mode_only_without_deepspeed():
    import torch

    environ = step_env()
    added = adopt_slurm_environment(environ)
    assert environ["RANK"] == "5" and environ["MASTER_ADDR"] == "gpu01" and added["WORLD_SIZE"] == "8"
    assert (environ.get("ACCELERATE_USE_CPU") == "true") == (not torch.cuda.is_available())

    environ = step_env(ALIGN_ACCELERATE_CONFIG=str(REPO / "launch" / "accelerate" / "cpu_zero3.yaml"))
    adopt_slurm_environment(environ)
    assert environ["ACCELERATE_USE_DEEPSPEED"] == "true" and environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert "ACCELERATE_USE_CPU" not in environ, "DeepSpeed picks its CPU accelerator itself; the flag would disable it"

    environ = {"PATH": "/usr/bin"}
    assert adopt_slurm_environment(environ) == {} and environ == {"PATH": "/usr/bin"}


def test_adopt_names_a_missing_accelerate_config():
    with pytest.raises(FileNotFoundError, match="ALIGN_ACCELERATE_CONFIG"):
        adopt_slurm_environment({"ALIGN_ACCELERATE_CONFIG": "/nonexistent/zero3.yaml"})


# --- W&B names of sweep points ---------------------------------------------------------------------------------------

SWEEP = {"dir": "runs/sweeps/20260101-120000", "overrides": ["trainer.seed=2", "recipe=grpo-arithmetic-tiny"],
         "exclude": []}


def test_outside_a_sweep_the_names_are_unchanged():
    assert sweep_names(None, "grpo-20260101", None) == (None, "grpo-20260101")
    assert sweep_names("mine", "grpo-20260101", None) == ("mine", "grpo-20260101")


def test_a_sweep_point_is_grouped_by_sweep_and_named_by_its_overrides():
    assert sweep_names(None, "x", SWEEP) == ("sweep-20260101-120000", "recipe=grpo-arithmetic-tiny,trainer.seed=2")
    assert sweep_names(None, "x", {**SWEEP, "dir": "/scratch/runs/sweeps/lr-scan"})[0] == "lr-scan"
    assert sweep_names("my-group", "x", SWEEP)[0] == "my-group", "logger.group wins"


def test_sweep_run_names_drop_excluded_keys_and_redact_credentials():
    sweep = {**SWEEP, "overrides": ["trainer.seed=2", "+reward.sources.0.kwargs.api_key=sk-123", "recipe=a"],
             "exclude": ["recipe"]}
    assert sweep_names(None, "x", sweep)[1] == f"+reward.sources.0.kwargs.api_key='{REDACTED}',trainer.seed=2"
    assert sweep_names(None, "fallback", {**SWEEP, "overrides": []})[1] == "fallback"
