"""GRPO vs SAGE vs SAGE-LIGHT on the embedded task, from one shared warm-started checkpoint.

    python benchmarks/sage.py                      # warm start once, then 3 methods x 3 seeds, 40 steps each
    python benchmarks/sage.py --init runs/x/warm_start/final --seeds 1 2 3 --steps 40

The recipe `sage-arithmetic-tiny` makes the reward sparse: its warm start imitates a teacher who always forgets
carries, so problems with a carry are rarely solved and their groups collapse. The same warm start teaches
the policy to write and use hints; during RL every hint is written by the policy itself (a few are copied into the
results). All methods start from the same checkpoint and take the same number of optimizer steps with the same
batch; the runs of one seed go side by side (GRPO, SAGE, SAGE-LIGHT), so wall-clock ratios compare like with like.

Per method (mean and spread over seeds): fraction of collapsed groups among the groups trained on (and, for SAGE,
in the unhinted probe), fraction of training prompts never solved by the end, held-out accuracy greedy without hints
before and after, and wall-clock of the RL stage relative to GRPO. Writes benchmarks/results/sage.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.train import run  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from tests.conftest import compose  # noqa: E402

RECIPE = "sage-arithmetic-tiny"
METHODS = ("grpo", "sage", "sage_light")


def grpo_variant(workdir: Path) -> str:
    """The SAGE recipe with algorithm=grpo and its SAGE-only keys removed: GRPO with identical hyperparameters."""
    recipe = OmegaConf.to_container(OmegaConf.load(REPO / "recipes" / f"{RECIPE}.yaml"))
    defaults = [{"override /algorithm": "grpo"} if d == {"override /algorithm": "sage"} else d
                for d in recipe["defaults"]]
    if defaults == recipe["defaults"]:
        raise RuntimeError(f"{RECIPE} no longer selects `override /algorithm: sage`; update grpo_variant().")
    recipe["defaults"] = defaults
    for key in ("hint", "schedule"):
        recipe["algorithm"].pop(key, None)
    path = workdir / "grpo-arithmetic-tiny-sparse.yaml"
    path.write_text("# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.create(recipe)))
    return str(path)


def warm_start(workdir: Path) -> str:
    """The recipe's warm start (plus one SAGE step, which `run` always takes); returns the checkpoint path."""
    out = workdir / "warm-start"
    run(compose([f"recipe={RECIPE}", f"trainer.output_dir={out}", "trainer.max_steps=1", "eval.enabled=false"]))
    return str(out / "warm_start" / "final")


def one_run(method: str, init: str, seed: int, steps: int, workdir: Path, grpo_recipe: str, eval_samples: int,
            rl_rows: int):
    recipe = grpo_recipe if method == "grpo" else RECIPE
    overrides = [f"recipe={recipe}", f"model.path={init}", "warm_start.max_steps=0", f"trainer.seed={seed}",
                 f"data.max_train_rows={rl_rows}",
                 f"trainer.max_steps={steps}", f"trainer.output_dir={workdir / f'{method}-seed{seed}'}",
                 "eval.every_steps=0", f"eval.max_samples={eval_samples}"]
    if method == "sage_light":
        overrides.append("algorithm.schedule=sage_light")
    start = time.perf_counter()
    summary = run(compose(overrides))
    seconds = time.perf_counter() - start
    run_dir = Path(summary["run_dir"])
    history = [e for e in json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
               if "groups/solved_frac" in e]
    result = {
        "seconds": seconds,
        "accuracy_before": summary["accuracy_before"],
        "accuracy_after": summary["accuracy_after"],
        "collapsed_frac_trained": statistics.fmean(1 - e["groups/solved_frac"] for e in history),
        "never_solved_frac_final": history[-1]["groups/never_solved_frac"],
        "reward_mean": statistics.fmean(e["reward"] for e in history),
    }
    if method != "grpo":
        result["hints_requested"] = sum(e["sage/hints_requested"] for e in history)
        result["hints_parsed"] = sum(e["sage/hints_parsed"] for e in history)
        result["level_frac"] = {lv: statistics.fmean(e[f"sage/level_{lv}_frac"] for e in history) for lv in range(4)}
        result["hint_generation_s"] = sum(e["timing/hint_generation_s"] for e in history)
    if method == "sage":
        result["collapsed_frac_probe"] = statistics.fmean(e["sage/collapsed_frac_before"] for e in history)
    hints = run_dir / "hints-rank0.jsonl"
    result["example_hints"] = [json.loads(line) for line in hints.read_text().splitlines()[:3]] if hints.exists() \
        else []
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="warm-started checkpoint (default: run the recipe's warm start)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--rl-rows", type=int, default=128,
                        help="RL trains on the first N training prompts, so each is seen several times (SAGE-LIGHT's "
                             "levels only act on prompts seen again); the warm start uses all of them")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sage.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="align-sage-bench-"))
    init = args.init or warm_start(workdir)
    grpo_recipe = grpo_variant(workdir)
    runs = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            runs[method].append(one_run(method, init, seed, args.steps, workdir, grpo_recipe, args.eval_samples,
                                        args.rl_rows))
            print(f"[bench] seed {seed} {method}: {runs[method][-1]['accuracy_before']:.3f} -> "
                  f"{runs[method][-1]['accuracy_after']:.3f}", flush=True)

    summary = {}
    for method, results in runs.items():
        ratio = [r["seconds"] / g["seconds"] for r, g in zip(results, runs["grpo"], strict=True)]
        summary[method] = {
            "heldout_accuracy_after": spread([r["accuracy_after"] for r in results]),
            "heldout_gain": spread([r["accuracy_after"] - r["accuracy_before"] for r in results]),
            "collapsed_frac_trained": spread([r["collapsed_frac_trained"] for r in results]),
            "never_solved_frac_final": spread([r["never_solved_frac_final"] for r in results]),
            "wall_clock_vs_grpo": spread(ratio),
        }
        if method == "sage":
            summary[method]["collapsed_frac_probe"] = spread([r["collapsed_frac_probe"] for r in results])
    report = {
        "benchmark": f"GRPO vs SAGE vs SAGE-LIGHT, embedded 2-digit addition, sparse reward (recipe {RECIPE})",
        "setup": {"init": init, "seeds": args.seeds, "optimizer_steps": args.steps, "rl_prompts": args.rl_rows,
                  "prompts_per_step": 8, "num_generations": 8, "eval_samples": args.eval_samples,
                  "heldout_accuracy_before": runs["grpo"][0]["accuracy_before"],
                  "eval": "greedy, no hint", "threads": "2 CPU cores, runs sequential"},
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
