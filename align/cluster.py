"""Start-up under Slurm without a launcher: each `srun` task is one training process.

`srun python -m align.train ...` (the multi-node sbatch template) and the Slurm sweep launcher (submitit runs the
task function in every task of a job) start one process per task but set only SLURM_* variables. torch.distributed,
accelerate and DeepSpeed read RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT, so
`adopt_slurm_environment()` (called first thing in `align.train`) derives those from the Slurm step:

    rank = SLURM_PROCID, world size = SLURM_STEP_NUM_TASKS, local rank = SLURM_LOCALID,
    local world size = this node's entry of SLURM_STEP_TASKS_PER_NODE ("4(x2),2" -> 4, 4, 2),
    master = first host of SLURM_STEP_NODELIST ("gpu[01-02,07]" -> gpu01), port = 10000 + SLURM_JOB_ID % 20000.

It does nothing outside a step of several tasks (the batch script itself, one task, a laptop) and nothing when a
launcher already set RANK (torchrun, `accelerate launch`). The port depends on the job id only, so a requeued job
(same id) meets at the same address, and two jobs sharing a node do not collide unless their ids are 20000 apart.

The distributed backend: with `ALIGN_ACCELERATE_CONFIG=<accelerate config yaml>` (e.g. launch/accelerate/zero3.yaml)
the variables `accelerate launch --config_file <yaml>` would export for it are set (DeepSpeed ZeRO stage, offload,
mixed precision), and TrainingArguments picks DeepSpeed up from them. Without it the run is DDP (NCCL on GPUs; on a
machine without CUDA, ACCELERATE_USE_CPU=true selects gloo, which DeepSpeed must not see: it picks its CPU
accelerator itself).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("align")

PORT_BASE = 10000
PORT_SPAN = 20000  # ports 10000-29999: below Linux's ephemeral range (32768+), above the well-known ones


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list -> host names, in order: "a[01-03,07],b5" -> a01 a02 a03 a07 b5.

    Several bracket groups in one name multiply out ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2); zero padding follows
    the range's lower bound, as Slurm does.
    """
    hosts: list[str] = []
    for name in _split_top_level(nodelist.strip()):
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", name):
            suffixes = _expand_ranges(ranges) if ranges else [""]
            expanded = [prefix + literal + suffix for prefix in expanded for suffix in suffixes]
        hosts += expanded
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    """Split on the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    parts.append(nodelist[start:])
    if depth != 0:
        raise ValueError(f"unbalanced brackets in Slurm node list '{nodelist}'")
    return [p for p in parts if p]


def _expand_ranges(ranges: str) -> list[str]:
    out = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not high:
            out.append(low)
            continue
        out += [f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1)]
    return out


def expand_tasks_per_node(tasks_per_node: str) -> list[int]:
    """SLURM_TASKS_PER_NODE -> one count per node: "4(x2),2" -> [4, 4, 2]."""
    counts = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"cannot read Slurm tasks per node '{tasks_per_node}'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def master_port(job_id: str | int) -> int:
    """The rendezvous port of a job: 10000 + job id mod 20000 (the sbatch template computes the same)."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def torch_distributed_env(slurm_env: Mapping[str, str], hostnames: list[str] | None = None) -> dict[str, str]:
    """The torch.distributed variables for this Slurm task, or {} when there is nothing to set.

    `slurm_env` is the process environment; `hostnames` the expanded step node list when the caller already has it
    (from `scontrol show hostnames`), else it is parsed from SLURM_STEP_NODELIST / SLURM_JOB_NODELIST. Variables a
    launcher or the user already set (RANK, MASTER_ADDR, MASTER_PORT, ...) are never overridden.
    """
    world = slurm_env.get("SLURM_STEP_NUM_TASKS")  # set by srun only, so the batch script itself is left alone
    if world is None or int(world) < 2 or "RANK" in slurm_env or "SLURM_PROCID" not in slurm_env:
        return {}
    nodelist = slurm_env.get("SLURM_STEP_NODELIST") or slurm_env["SLURM_JOB_NODELIST"]
    hosts = hostnames or expand_nodelist(nodelist)
    per_node = slurm_env.get("SLURM_STEP_TASKS_PER_NODE") or slurm_env.get("SLURM_TASKS_PER_NODE")
    counts = expand_tasks_per_node(per_node) if per_node else [int(world) // len(hosts)] * len(hosts)
    node = slurm_env.get("SLURMD_NODENAME")
    index = hosts.index(node) if node in hosts else int(slurm_env.get("SLURM_NODEID", 0))
    env = {
        "RANK": slurm_env["SLURM_PROCID"],
        "WORLD_SIZE": str(int(world)),
        "LOCAL_RANK": slurm_env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(counts[min(index, len(counts) - 1)]),
        "NODE_RANK": str(index),
        "MASTER_ADDR": hosts[0],
        "MASTER_PORT": str(master_port(slurm_env["SLURM_JOB_ID"])),
    }
    return {key: value for key, value in env.items() if key not in slurm_env}


def accelerate_config_env(accelerate_config: Mapping) -> dict[str, str]:
    """The variables `accelerate launch --config_file` exports for a config's engine and precision: for
    `distributed_type: DEEPSPEED`, ACCELERATE_USE_DEEPSPEED and the `deepspeed_config` fields; the mixed precision."""
    env = {}
    if accelerate_config.get("mixed_precision") is not None:
        env["ACCELERATE_MIXED_PRECISION"] = str(accelerate_config["mixed_precision"]).lower()
    if str(accelerate_config.get("distributed_type", "")).upper() == "DEEPSPEED":
        env["ACCELERATE_USE_DEEPSPEED"] = "true"
        names = {"zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                 "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                 "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                 "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING",
                 "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT",
                 "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
                 "deepspeed_config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE"}
        for key, value in (accelerate_config.get("deepspeed_config") or {}).items():
            if key in names and value is not None:
                env[names[key]] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _scontrol_hostnames(nodelist: str) -> list[str] | None:
    """Slurm's own expansion when scontrol is installed (the parser above is the fallback)."""
    if not nodelist or shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    except (subprocess.SubprocessError, OSError):
        return None
    return out or None


def adopt_slurm_environment(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the torch.distributed (and, with ALIGN_ACCELERATE_CONFIG, the accelerate) variables for this Slurm task
    in `environ`; return what was set. A no-op outside a multi-task Slurm step and under torchrun / accelerate."""
    added: dict[str, str] = {}
    config_file = environ.get("ALIGN_ACCELERATE_CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ALIGN_ACCELERATE_CONFIG={config_file}: no such file")
        settings = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        added.update({k: v for k, v in accelerate_config_env(settings).items() if k not in environ})
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    distributed = torch_distributed_env(environ, _scontrol_hostnames(nodelist)) \
        if int(environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "RANK" not in environ else {}
    added.update(distributed)
    if distributed and "ACCELERATE_USE_CPU" not in environ:
        import torch  # not at the top: seconds to import, and align.train imports this module before validating

        deepspeed = {**environ, **added}.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
        if not torch.cuda.is_available() and not deepspeed:
            added["ACCELERATE_USE_CPU"] = "true"  # multi-process CPU (gloo); DeepSpeed picks its CPU accelerator
    environ.update(added)
    if distributed and environ.get("RANK") == "0":
        log.info("Slurm step: %s processes, rendezvous at %s:%s", environ["WORLD_SIZE"], environ["MASTER_ADDR"],
                 environ["MASTER_PORT"])
    return added
