"""Step-time overhead of align's GRPO trainer over plain TRL.

    .venv/bin/python benchmarks/overhead.py                       # 5 pairs x (3 warm-up + 20 timed) steps
    .venv/bin/python benchmarks/overhead.py --pairs 2 --steps 5 --warmup 1 --out /tmp/overhead.json
    .venv/bin/python benchmarks/overhead.py --model smollm2 --init <warm-started SmolLM2> --pairs 2 --steps 3 \
        --warmup 1 --threads 1 --out benchmarks/results/overhead_smollm2.json

`--model smollm2` is the real chat model with the settings of `recipe=grpo-arithmetic-smollm2-135m`: 3-digit word
problems (`arithmetic_chat`), batch 32 (4 prompts x 8 completions), up to 64 completion tokens, a LoRA adapter
(r 16) on both trainers, starting from the recipe's SFT warm start (or `--init`), target ratio 1.02.

`align.methods.grpo.trainer.AlignGRPOTrainer` (per-phase timing, group statistics) and `trl.GRPOTrainer` are built from
the same GRPOConfig (the one `align.train.run` builds, from `training_arguments`), the same reward functions
(`boxed_match` 1.0 + `format_boxed` 0.1; guarded for align, bare for TRL), the same data (synthetic 2-digit
addition) and a freshly loaded copy of the same model (by default the embedded one after a short SFT warm start,
so rewards and losses are non-zero) with the same seed. Runs alternate A B / B A / A B ... so drift cancels;
within a pair both trainers should generate the same completions, which the logged losses/entropies confirm.

Step time is measured identically for both trainers by a callback pair outside every other callback: the first
`on_step_begin` and the last `on_step_end` (generation, rewards, forward/backward and the optimizer step;
logging comes after `on_step_end` and is covered by the secondary "cycle" time, begin to next begin).
Per run: median (and mean) over the timed steps; per pair: ratio align / TRL. Writes JSON + a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "overhead.json"
TINY = {"task": "arithmetic", "digits": 2, "lora_r": 0, "lora_alpha": 16, "warm_start_recipe": "sft-arithmetic-tiny",
        "target_ratio": 1.05}
# --model presets: a real model brings its own task, sizes, adapter, warm start and target (issue 15: <= 1.02).
PRESETS = {
    "smollm2": {"model": "embedded:smollm2-135m-instruct", "task": "arithmetic_chat", "digits": 3, "lora_r": 16,
                "lora_alpha": 32, "batch_size": 32, "max_completion_length": 64, "warm_start_steps": 30,
                "warm_start_recipe": "grpo-arithmetic-smollm2-135m", "target_ratio": 1.02},
}
ALIGN, TRL = "align", "trl"
# Metrics TRL logs every step that depend only on the completions and the model: equal in a pair iff both trainers
# generated the same completions and computed the same update.
FINGERPRINT_KEYS = ("loss", "entropy", "reward", "completions/mean_length", "grad_norm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="A/B pairs (order alternates: align first, then TRL first)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps at the start of each run")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; unset leaves torch's default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=16, help="per_device_train_batch_size (completions per step)")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--model", default="embedded:tiny",
                   help=f"policy to start from (a path or embedded:tiny), or a preset: {', '.join(PRESETS)}")
    p.add_argument("--warm-start-steps", type=int, default=300,
                   help="SFT the model this many steps first (sft-arithmetic-tiny recipe; a preset's own recipe) so "
                        "rewards, advantages and losses are non-zero as in real training; 0 benchmarks the untrained "
                        "model")
    p.add_argument("--init", help="an already warm-started model to start from (skips the warm start)")
    p.add_argument("--no-prime", action="store_true",
                   help="skip the discarded priming run of each trainer before the first pair")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; the markdown table goes next to it")
    p.set_defaults(**TINY)
    known, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS.get(known.model, {}))  # a preset changes the defaults; explicit options still win
    args = p.parse_args(argv)
    for name in ("pairs", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


# --- building both trainers identically -----------------------------------------------------------------------------


def align_config(opts: argparse.Namespace, max_steps: int):
    from align.config import (
        AlignConfig,
        DataConfig,
        LoggerConfig,
        LoraConfig,
        ModelConfig,
        RewardConfig,
        RewardSourceConfig,
        SyntheticConfig,
        TrainerConfig,
        validate,
    )
    from align.methods.grpo.config import GRPOAlgorithmConfig

    config = AlignConfig(
        model=ModelConfig(path=opts.model, dtype="float32", lora=LoraConfig(r=opts.lora_r, alpha=opts.lora_alpha)),
        data=DataConfig(source="synthetic", synthetic=SyntheticConfig(task=opts.task, digits=opts.digits,
                                                                      operators=["+"])),
        algorithm=GRPOAlgorithmConfig(loss_type="dapo", num_generations=opts.num_generations, beta=0.0,
                                      max_completion_length=opts.max_completion_length),
        reward=RewardConfig(sources=[RewardSourceConfig(name="boxed_match", weight=1.0),
                                     RewardSourceConfig(name="format_boxed", weight=0.1)]),
        trainer=TrainerConfig(seed=opts.seed, max_steps=max_steps, learning_rate=1e-4,
                              per_device_train_batch_size=opts.batch_size, gradient_accumulation_steps=1,
                              logging_steps=1, save_steps=0),
        logger=LoggerConfig(backend="none", log_completions=False),
    )
    validate(config, processes=1)
    return config


def grpo_config(config, output_dir: str):
    """The GRPOConfig `align.train.run` builds (same builder), with the benchmark's fixed overrides."""
    from align.methods.common import training_arguments
    from align.methods.grpo.trainer import grpo_config as build

    common = training_arguments(config, Path(output_dir), report_to=[], run_name="overhead-bench")
    common.update(bf16=False, fp16=False, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    return build(config.algorithm, common, [float(s.weight) for s in config.reward.sources],
                 log_completions=config.logger.log_completions, trust_remote_code=config.model.trust_remote_code)


class StepClock:
    """Wall time of each optimizer step, from the first `on_step_begin` to the last `on_step_end` callback."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self
        self.begins: list[float] = []
        self.ends: list[float] = []

        class Begin(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.begins.append(time.perf_counter())

        class End(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.ends.append(time.perf_counter())

        self.begin, self.end = Begin(), End()

    def attach(self, trainer) -> None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for quiet in (PrinterCallback, ProgressCallback):  # no per-step log dicts on stdout, for either trainer
            trainer.remove_callback(quiet)
        trainer.callback_handler.callbacks.insert(0, self.begin)  # before every other callback
        trainer.callback_handler.callbacks.append(self.end)  # after every other callback, align's included

    def step_times(self) -> list[float]:
        return [e - b for b, e in zip(self.begins, self.ends, strict=True)]

    def cycle_times(self) -> list[float]:
        """Begin to next begin: the step plus logging and batch fetching (one fewer than the steps)."""
        return [b1 - b0 for b0, b1 in zip(self.begins, self.begins[1:])]


def warm_start(opts: argparse.Namespace, workdir: Path) -> str:
    """The warm-started model: the SFT recipe run for the tiny model; a preset's GRPO recipe with its SFT warm start
    and a single throw-away GRPO step of one short prompt group."""
    out = workdir / "sft"
    if opts.warm_start_recipe == "sft-arithmetic-tiny":
        overrides, final = [f"trainer.max_steps={opts.warm_start_steps}"], out / "final"
    else:
        overrides = [f"warm_start.max_steps={opts.warm_start_steps}", "trainer.max_steps=1",
                     "trainer.per_device_train_batch_size=8", "algorithm.max_completion_length=8"]
        final = out / "warm_start" / "final"
    subprocess.run([sys.executable, "-m", "align.train", f"recipe={opts.warm_start_recipe}", f"model.path={opts.model}",
                    *overrides, f"trainer.output_dir={out}", "eval.enabled=false"],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    return str(final)


def run_once(kind: str, opts: argparse.Namespace, shared: dict, timed_steps: int) -> dict:
    """One training run of `warmup + timed_steps` optimizer steps; returns its timings and logged metrics."""
    from transformers import set_seed
    from trl import GRPOTrainer

    from align.methods.common import peft_config as _peft_config
    from align.methods.grpo.trainer import AlignGRPOTrainer
    from align.models import load_causal_lm, load_tokenizer

    max_steps = opts.warmup + timed_steps
    config = align_config(opts, max_steps)
    cls = AlignGRPOTrainer if kind == ALIGN else GRPOTrainer
    with tempfile.TemporaryDirectory(prefix=f"overhead-{kind}-") as output_dir:
        set_seed(opts.seed)
        tokenizer = load_tokenizer(config.model.path)
        model = load_causal_lm(config.model.path, dtype=config.model.dtype)
        # align gets its guarded reward sources, TRL the bare functions: the guard's cost is part of the overhead.
        rewards = shared["rewards"] if kind == ALIGN else shared["bare_rewards"]
        trainer = cls(model=model, reward_funcs=rewards, args=grpo_config(config, output_dir),
                      train_dataset=shared["train"], processing_class=tokenizer, peft_config=_peft_config(config))
        clock = StepClock()
        clock.attach(trainer)
        gc.collect()
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        history = [dict(entry) for entry in trainer.state.log_history if "step" in entry and "loss" in entry]
        del trainer, model
        gc.collect()

    steps, cycles = clock.step_times(), clock.cycle_times()
    if len(steps) != max_steps:
        raise RuntimeError(f"{kind}: timed {len(steps)} optimizer steps, expected {max_steps}")
    timed = steps[opts.warmup:]
    timed_cycles = cycles[opts.warmup:]
    return {
        "trainer": kind,
        "median_s": statistics.median(timed),
        "mean_s": statistics.fmean(timed),
        "cycle_median_s": statistics.median(timed_cycles) if timed_cycles else None,
        "train_wall_s": total,
        "warmup_step_times_s": steps[:opts.warmup],
        "step_times_s": timed,
        "cycle_times_s": timed_cycles,
        "logged": {key: [entry.get(key) for entry in history] for key in FINGERPRINT_KEYS},
    }


def max_abs_diff(a: list, b: list) -> float | None:
    """Largest |a_i - b_i| over the steps both runs logged a value for; None when there is nothing to compare."""
    diffs = [abs(x - y) for x, y in zip(a, b) if x is not None and y is not None]
    return max(diffs) if diffs else None


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


# --- reporting -------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {"processor": platform.processor(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def markdown(result: dict) -> str:
    c, m = result["config"], result["config"]["machine"]
    cpu = m.get("cpu_model") or m["processor"] or m["machine"]
    setup = (f"{c['pairs']} pairs x {c['steps']} timed steps (+{c['warmup']} warm-up), "
             f"batch {c['per_device_train_batch_size']}, G {c['num_generations']}, "
             f"max_completion_length {c['max_completion_length']}, threads {c['threads']}, {cpu} "
             f"({m['cpu_count']} CPUs, load avg {c['load_avg_1m_start']:.2f} -> {c['load_avg_1m_end']:.2f}); "
             f"torch {c['torch']}, trl {c['trl']}, transformers {c['transformers']}")
    lines = [
        f"### align GRPO overhead vs TRL ({result['timestamp']})",
        "",
        setup,
        "",
        "| pair | order | align median (ms) | TRL median (ms) | ratio | align mean (ms) | TRL mean (ms) | mean ratio |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, p in enumerate(result["pairs"]):
        lines.append(f"| {i} | {p['order']} | {p['align_s'] * 1e3:.1f} | {p['trl_s'] * 1e3:.1f} | {p['ratio']:.3f} | "
                     f"{p['align_mean_s'] * 1e3:.1f} | {p['trl_mean_s'] * 1e3:.1f} | {p['mean_ratio']:.3f} |")
    target = result["target_ratio"]
    verdict = "met" if result["ratio_median"] <= target else "NOT met"
    cycle = result["cycle_ratio_median"]
    diff = result["loss_max_abs_diff"]
    lines += [
        "",
        (f"ratio (align / TRL, per-pair median step time): median **{result['ratio_median']:.3f}**, "
         f"min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f}; target <= {target} {verdict}."),
        (f"Mean step time: align {result['align_mean_s'] * 1e3:.1f} ms, TRL {result['trl_mean_s'] * 1e3:.1f} ms; "
         f"cycle time (incl. logging) ratio median: {'n/a' if cycle is None else f'{cycle:.3f}'}."),
        (f"Sanity: max |loss align - loss TRL| within a pair = {'n/a' if diff is None else f'{diff:.3g}'}; "
         f"identical completions in every pair: {result['same_completions']}"
         + (" (all losses are 0: no reward for the untrained model)." if result["losses_all_zero"] else ".")),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    opts = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    import torch
    import transformers
    import trl

    from align.data import load_splits
    from align.rewards import BUILTIN_REWARDS, build_reward_sources, preflight

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"[overhead] warning: load average {load_start[0]:.2f} on {os.cpu_count()} CPUs; other processes "
              "compete for the cores and the timings will be noisy", file=sys.stderr, flush=True)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)

    base_model = opts.model = PRESETS.get(opts.model, {}).get("model", opts.model)
    warm_dir = tempfile.TemporaryDirectory(prefix="overhead-warm-start-")
    if opts.init:
        opts.model = opts.init
    elif opts.warm_start_steps:
        print(f"[overhead] SFT warm start of {opts.model} for {opts.warm_start_steps} steps", flush=True)
        opts.model = warm_start(opts, Path(warm_dir.name))
    config = align_config(opts, opts.warmup + opts.steps)
    train, _ = load_splits(config.data, required=("prompt", "answer"))
    rewards, _weights = build_reward_sources(config.reward.sources)
    preflight(rewards, train.select(range(2)).to_list())
    bare_rewards = [BUILTIN_REWARDS[s.name] for s in config.reward.sources]
    shared = {"train": train, "rewards": rewards, "bare_rewards": bare_rewards}  # identical objects in every run

    t0 = time.perf_counter()
    if not opts.no_prime:
        for kind in (ALIGN, TRL):
            print(f"[overhead] priming {kind} ({opts.warmup + 1} steps, discarded)", flush=True)
            run_once(kind, opts, shared, timed_steps=1)

    runs, pairs = [], []
    for i in range(opts.pairs):
        order = (ALIGN, TRL) if i % 2 == 0 else (TRL, ALIGN)
        pair = {}
        for position, kind in enumerate(order):
            r = run_once(kind, opts, shared, timed_steps=opts.steps)
            r.update(pair=i, position=position)
            runs.append(r)
            pair[kind] = r
            print(f"[overhead] pair {i} {kind:5s}: median {r['median_s'] * 1e3:.1f} ms, "
                  f"mean {r['mean_s'] * 1e3:.1f} ms", flush=True)
        a, b = pair[ALIGN], pair[TRL]
        diffs = {key: max_abs_diff(a["logged"][key], b["logged"][key]) for key in FINGERPRINT_KEYS}
        pairs.append({
            "align_s": a["median_s"], "trl_s": b["median_s"], "ratio": a["median_s"] / b["median_s"],
            "order": f"{order[0]}-first",
            "align_mean_s": a["mean_s"], "trl_mean_s": b["mean_s"], "mean_ratio": a["mean_s"] / b["mean_s"],
            "cycle_ratio": (a["cycle_median_s"] / b["cycle_median_s"]) if a["cycle_median_s"] else None,
            "loss_max_abs_diff": diffs["loss"],
            "fingerprint_max_abs_diff": diffs,
        })

    ratios = [p["ratio"] for p in pairs]
    cycle_ratios = [p["cycle_ratio"] for p in pairs if p["cycle_ratio"] is not None]
    align_runs = [r for r in runs if r["trainer"] == ALIGN]
    trl_runs = [r for r in runs if r["trainer"] == TRL]
    fingerprint = [_max(p["fingerprint_max_abs_diff"][k] for k in ("entropy", "completions/mean_length"))
                   for p in pairs]
    args = grpo_config(config, tempfile.gettempdir())
    result = {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "mean_ratio_median": statistics.median(p["mean_ratio"] for p in pairs),
        "cycle_ratio_median": statistics.median(cycle_ratios) if cycle_ratios else None,
        "align_mean_s": statistics.fmean(t for r in align_runs for t in r["step_times_s"]),
        "trl_mean_s": statistics.fmean(t for r in trl_runs for t in r["step_times_s"]),
        "target_ratio": opts.target_ratio,
        "pairs": pairs,
        "loss_max_abs_diff": _max(p["loss_max_abs_diff"] for p in pairs),
        # The untrained tiny model earns no reward, so every loss is 0 and agrees trivially: then only
        # `same_completions` says the two runs of a pair did the same work.
        "losses_all_zero": all(v == 0 for r in runs for v in r["logged"]["loss"] if v is not None),
        # Entropy and completion length agree exactly only if both trainers sampled the same completions.
        "same_completions": all(d == 0.0 for d in fingerprint),
        "runs": runs,
        "config": {
            "steps": opts.steps, "warmup": opts.warmup, "pairs": opts.pairs, "primed": not opts.no_prime,
            "seed": opts.seed,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "generation_batch_size": args.generation_batch_size,
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "learning_rate": args.learning_rate, "loss_type": args.loss_type, "beta": args.beta,
            "model": base_model, "init": opts.init, "warm_start_steps": 0 if opts.init else opts.warm_start_steps,
            "dtype": "float32", "lora_r": opts.lora_r,
            "data": f"synthetic:{opts.task} digits={config.data.synthetic.digits} "
                    f"operators={list(config.data.synthetic.operators)}",
            "rewards": {s.name: s.weight for s in config.reward.sources},
            "threads": torch.get_num_threads(), "threads_flag": opts.threads,
            "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
            "machine": machine_info(),
            "load_avg_1m_start": load_start[0], "load_avg_1m_end": os.getloadavg()[0],
        },
        "total_wall_s": time.perf_counter() - t0,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    out = opts.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    print(f"[overhead] wrote {out} and {out.with_suffix('.md')} ({result['total_wall_s']:.0f} s)", flush=True)
    return result


if __name__ == "__main__":
    main()
