"""GRPO on a real pretrained chat model: SmolLM2-135M-Instruct on the chat word-problem task, 3 seeds.

    .venv/bin/python benchmarks/real_model.py --workdir /tmp/real-model       # -> benchmarks/results/real_model.json
    .venv/bin/python benchmarks/real_model.py --workdir /tmp/real-model \
        --init /tmp/real-model/warm-start/warm_start/final --steps 10 --eval-every 5 --seeds 1 \
        algorithm.max_completion_length=48                        # the settings of the committed result

Protocol (recipe `grpo-arithmetic-smollm2-135m`, every setting the recipe's unless an option below changes it):
1. One SFT warm start (the recipe's: full fine-tuning on worked solutions), shared by all seeds: it is the same
   seed-independent work for each, so it runs once (`--init` reuses one). It runs as the recipe itself with a
   single throw-away GRPO step of one prompt, and its `warm_start/final` is the starting model of every seed.
2. Per seed: GRPO from that model (`model.path=<warm start>`, `warm_start.max_steps=0`, `trainer.seed`), with
   held-out accuracy (greedy, `eval.max_samples` problems) before, every `--eval-every` steps and after. The run's
   degradation gate (gate.json, final vs start, one-sided) is read back, and the same test run the other way round
   (start as the candidate, final as the baseline) says whether the gain is significant.
3. Per run, from its trainer_state.json: seconds per optimizer step, the share spent generating, generation
   tokens/s (completion tokens / generation time) and update tokens/s (prompt + completion tokens / update time);
   the process's peak RSS (each run is its own `python -m align.train` process, measured with os.wait4).

Every run uses `--threads` (1) CPU threads. A seed whose run directory in `--workdir` already holds gate.json and
bench-cost.json is read back, not rerun. Writes the JSON (`--out`) and a plot of held-out accuracy over steps per
seed (`--plot`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import spread  # noqa: E402

RECIPE = "grpo-arithmetic-smollm2-135m"


def train(overrides: list[str], log_path: Path, threads: int) -> dict:
    """`python -m align.train <overrides>` as its own process; its wall time and peak RSS (os.wait4)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "align.train", f"recipe={RECIPE}", "logger.backend=none",
                                    *overrides], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"align.train {' '.join(overrides)} failed; see {log_path}")
    return {"wall_s": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def warm_start(workdir: Path, threads: int, overrides: list[str]) -> tuple[str, dict]:
    """The recipe's warm start, plus one GRPO step of a single short prompt group (discarded). Its cost is also
    written to <workdir>/warm-start.json, where a later `--init <workdir>/warm-start/warm_start/final` finds it."""
    out = workdir / "warm-start"
    cost = train([*overrides, f"trainer.output_dir={out}", "trainer.max_steps=1", "eval.enabled=false",
                  "trainer.per_device_train_batch_size=8", "algorithm.max_completion_length=8"],
                 workdir / "warm-start.log", threads)
    (workdir / "warm-start.json").write_text(json.dumps(cost) + "\n")
    return str(out / "warm_start" / "final"), cost


def recorded_warm_start(init: str) -> dict | None:
    """The cost `warm_start` recorded for the model at `init`, if it made it."""
    record = Path(init).parents[2] / "warm-start.json"
    return json.loads(record.read_text()) if record.is_file() else None


def step_stats(run_dir: Path) -> dict:
    """Mean per-step timings and throughput over the run's optimizer steps (the first, which warms up, left out)."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    completions_per_step = state["train_batch_size"]  # one process, no gradient accumulation
    history = [e for e in state["log_history"] if "timing/step_s" in e]
    steps = history[1:] or history

    def mean(values):
        return statistics.fmean(values)

    step_s = [e["timing/step_s"] for e in steps]
    generation_s = [e["timing/generation_s"] for e in steps]
    update_s = [e["timing/update_s"] for e in steps]
    tokens = [e["perf/tokens_per_s"] * e["timing/step_s"] for e in steps]  # prompt + completion tokens trained on
    completion_tokens = [e["completions/mean_length"] * completions_per_step for e in steps]
    return {
        "steps_measured": len(steps),
        "step_s": mean(step_s), "step_s_median": statistics.median(step_s),
        "generation_share": sum(generation_s) / sum(step_s),
        "update_share": sum(update_s) / sum(step_s),
        "generation_tokens_per_s": sum(completion_tokens) / sum(generation_s),
        "update_tokens_per_s": sum(tokens) / sum(update_s),
        "step_tokens_per_s": sum(tokens) / sum(step_s),
        "completions_per_step": completions_per_step,
        "completion_mean_length": mean(e["completions/mean_length"] for e in steps),
        "reward_first": history[0]["reward"], "reward_last5": mean(e["reward"] for e in history[-5:]),
    }


def gain_test(run_dir: Path, alpha: float) -> dict:
    """The degradation gate run the other way round: is the starting model significantly worse than the final one?"""
    from align.gate.align_results import step_files
    from align.gate.cli import run_gate

    files = step_files(run_dir)
    report = run_gate([files[max(files)]], [files[min(files)]], alpha=alpha)
    return {"significant": report["degraded"], "p_value": report["p_value"]}


def grpo_seed(seed: int, init: str, workdir: Path, opts: argparse.Namespace) -> dict:
    from align.evaluation import measured_history

    run_dir = workdir / f"seed{seed}"
    record = run_dir / "bench-cost.json"
    if record.is_file() and (run_dir / "gate.json").is_file():  # finished by an earlier invocation: read it back
        cost = json.loads(record.read_text())
    else:
        cost = train([*opts.overrides, f"model.path={init}", "warm_start.max_steps=0", f"trainer.seed={seed}",
                      f"trainer.max_steps={opts.steps}", f"eval.every_steps={opts.eval_every}",
                      f"trainer.output_dir={run_dir}"], workdir / f"seed{seed}.log", opts.threads)
        record.write_text(json.dumps(cost) + "\n")
    curve = measured_history(run_dir, up_to=opts.steps)
    gate = json.loads((run_dir / "gate.json").read_text())
    return {
        "seed": seed,
        "accuracy_before": curve[0][1], "accuracy_after": curve[-1][1], "gain": curve[-1][1] - curve[0][1],
        "heldout_curve": curve,
        "gate_final_vs_start": {"degraded": gate["degraded"], "p_value": gate["p_value"]},
        "gain_test_start_vs_final": gain_test(run_dir, opts.alpha),
        **step_stats(run_dir),
        **cost,
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for r in runs:
        steps, accuracy = zip(*r["heldout_curve"])
        axis.plot(steps, accuracy, marker="o", label=f"seed {r['seed']}")
    axis.set(xlabel="GRPO optimizer step", ylabel="held-out accuracy (greedy)", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=20, help="GRPO optimizer steps per seed")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out accuracy every this many steps")
    parser.add_argument("--init", help="a warm-started model to reuse (default: run the recipe's warm start)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--workdir", type=Path, help="run directories (default: a new temporary directory)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_model.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "real_model_curve.png")
    parser.add_argument("--note", default="", help="a remark stored with the results (e.g. why settings changed)")
    parser.add_argument("overrides", nargs="*", help="further align.train overrides for every run (key=value)")
    opts = parser.parse_args()

    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="align-real-model-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    init = opts.init
    if init is None:
        init, warm_cost = warm_start(workdir, opts.threads, opts.overrides)
        print(f"[bench] warm start: {warm_cost}", flush=True)
    else:
        warm_cost = recorded_warm_start(init)
    runs = []
    for seed in opts.seeds:
        runs.append(grpo_seed(seed, init, workdir, opts))
        r = runs[-1]
        print(f"[bench] seed {seed}: {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}, gain p = "
              f"{r['gain_test_start_vs_final']['p_value']:.4g}, {r['step_s']:.1f} s/step, "
              f"{r['generation_share']:.0%} generating, peak {r['peak_rss_mib']:.0f} MiB", flush=True)

    report = {
        "benchmark": f"GRPO on SmolLM2-135M-Instruct, chat word problems (recipe {RECIPE}), {len(runs)} seeds",
        "setup": {"recipe": RECIPE, "overrides": opts.overrides, "seeds": opts.seeds, "grpo_steps": opts.steps,
                  "eval_every_steps": opts.eval_every, "init": init, "warm_start_shared": True,
                  "eval": "greedy, held-out problems of the recipe's task (eval.max_samples), exact boxed answer",
                  "gate": f"one-sided paired permutation test, alpha {opts.alpha}: gate_final_vs_start is align's "
                          "own (is the final model worse?), gain_test_start_vs_final the reverse (is it better?)",
                  "threads": opts.threads, "machine": f"{os.cpu_count()} CPU cores, runs one after another",
                  "align_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                                 text=True).stdout.strip()},
        "note": opts.note,
        "warm_start": warm_cost,
        "accuracy_before": runs[0]["accuracy_before"],
        "accuracy_after": spread([r["accuracy_after"] for r in runs]),
        "gain": spread([r["gain"] for r in runs]),
        "gain_significant_every_seed": all(r["gain_test_start_vs_final"]["significant"] for r in runs),
        "gate_flagged_any_seed": any(r["gate_final_vs_start"]["degraded"] for r in runs),
        "step_s": spread([r["step_s"] for r in runs]),
        "generation_share": spread([r["generation_share"] for r in runs]),
        "generation_tokens_per_s": spread([r["generation_tokens_per_s"] for r in runs]),
        "update_tokens_per_s": spread([r["update_tokens_per_s"] for r in runs]),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": runs,
        # warm start + every seed's run, as recorded when they ran (a read-back seed costs this invocation nothing)
        "total_wall_s": round((warm_cost or {}).get("wall_s", 0) + sum(r["wall_s"] for r in runs), 1),
        "this_invocation_wall_s": round(time.perf_counter() - start, 1),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, opts.plot, "SmolLM2-135M-Instruct: GRPO on 3-digit word problems")
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "setup")}, indent=2))


if __name__ == "__main__":
    main()
