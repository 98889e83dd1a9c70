"""GRPO vs SAGE vs SAGE-LIGHT on prompts the policy cannot solve, from one shared warm-started checkpoint.

    python benchmarks/sage.py                      # warm start once, then 3 methods x 5 seeds
    python benchmarks/sage.py --init runs/x/warm_start/final --seeds 1 2 3 4 5 --steps 80
    python benchmarks/sage.py --init runs/x/warm_start/final --length-split-ab 2   # the loss's length split, on / off

The task (written by this script, `hard_split`): 3-digit additions of every carry count. The recipe
`sage-arithmetic-tiny`'s warm start imitates a teacher who always forgets carries, so the warm-started policy adds
columns correctly (0.77-0.89 greedy on problems without a carry, depending on the warm start) but gets problems with
a carry wrong (0.02-0.07 with one, 0.00 with two) and rarely samples a right one: its groups on those prompts
collapse. RL trains on the first
--rl-rows problems (a quarter of them with two carries); a first trial that trained on the two-carry problems alone
taught every method to always carry (easy split 0.89 -> 0.12). The same warm start
teaches the policy to write and use hints; during RL every hint is written by the policy itself (a few are copied
into the results). Held-out: 100 problems each with 0, 1 and 2 carries (`easy`, `one_carry`, `hard`), never seen in
training, solved greedy without hints before and after.

All methods start from the same checkpoint and take the same number of optimizer steps with the same batch; the runs
of one seed go side by side (GRPO, SAGE, SAGE-LIGHT), so wall-clock ratios compare like with like.

Per method, over seeds (mean with a 95% t-interval): held-out accuracy per split after training and its gain, the
fraction of collapsed groups among the groups trained on (and, for SAGE, in the unhinted probe), the fraction of
training prompts never solved by the end, and the RL stage's wall clock relative to GRPO with its split into
phases (generation, hint writing, hinted re-rolls, update). Writes benchmarks/results/sage.json.
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

from align.data.synthetic import arithmetic  # noqa: E402
from align.train import run  # noqa: E402
from benchmarks.common import interval95  # noqa: E402
from tests.conftest import compose  # noqa: E402

RECIPE = "sage-arithmetic-tiny"
METHODS = ("grpo", "sage", "sage_light")
SPLITS = {"easy": 0, "one_carry": 1, "hard": 2}  # held-out split -> carries of its problems
HELD_OUT_PER_SPLIT = 100
TASK = ["algorithm.max_completion_length=80", "eval.max_new_tokens=80"]  # 3-digit solutions run to ~70 bytes
PHASES = ("generation", "hint_writing", "hinted_rollout", "reward", "other", "update")


def hard_split(workdir: Path, train_rows: int) -> list[str]:
    """Write the task; returns its data overrides.

    Training: `train_rows` 3-digit additions of every carry count with sloppy demonstrations (the warm start's; RL
    takes the first --rl-rows of them). Test: every split, disjoint from training.
    """
    train = arithmetic(train_rows, digits=3, sloppy_fraction=1.0, seed=0)
    seen, test = {r["prompt"][0]["content"] for r in train}, []
    for carries in SPLITS.values():
        pool = [r for r in arithmetic(3000, digits=3, seed=10 + carries, exclude=seen) if r["carries"] == carries]
        test += pool[:HELD_OUT_PER_SPLIT]
        seen |= {r["prompt"][0]["content"] for r in pool[:HELD_OUT_PER_SPLIT]}
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.source={data}", "data.eval_split=test", f"eval.max_samples={len(test)}", *TASK]


def split_accuracy(run_dir: Path, step: int) -> dict[str, float]:
    """Held-out accuracy per split from the run's per-sample file at `step` (doc_id = row of the test split)."""
    rows = [json.loads(line) for line in (run_dir / "eval" / f"step-{step}.jsonl").read_text().splitlines()]
    return {name: statistics.fmean(r["correct"] for r in rows if r["doc_id"] // HELD_OUT_PER_SPLIT == i)
            for i, name in enumerate(SPLITS)}


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


def warm_start(workdir: Path, task: list[str]) -> str:
    """The recipe's warm start on the task (plus one SAGE step, which `run` always takes); returns its checkpoint."""
    out = workdir / "warm-start"
    run(compose([f"recipe={RECIPE}", *task, f"trainer.output_dir={out}", "trainer.max_steps=1",
                 "eval.enabled=false"]))
    return str(out / "warm_start" / "final")


def one_run(method: str, init: str, seed: int, steps: int, workdir: Path, grpo_recipe: str, task: list[str]) -> dict:
    recipe = grpo_recipe if method == "grpo" else RECIPE
    overrides = [f"recipe={recipe}", *task, f"model.path={init}", "warm_start.max_steps=0", f"trainer.seed={seed}",
                 f"trainer.max_steps={steps}", f"trainer.output_dir={workdir / f'{method}-seed{seed}'}",
                 "eval.every_steps=0"]
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
        "accuracy_before": split_accuracy(run_dir, 0),
        "accuracy_after": split_accuracy(run_dir, steps),
        "collapsed_frac_trained": statistics.fmean(1 - e["groups/solved_frac"] for e in history),
        "never_solved_frac_final": history[-1]["groups/never_solved_frac"],
        "reward_mean": statistics.fmean(e["reward"] for e in history),
        "phase_seconds": {phase: sum(e.get(f"timing/{phase}_s", 0.0) for e in history) for phase in PHASES},
    }
    if method != "grpo":
        result["hints_requested"] = sum(e["sage/hints_requested"] for e in history)
        result["hints_parsed"] = sum(e["sage/hints_parsed"] for e in history)
        result["level_frac"] = {lv: statistics.fmean(e[f"sage/level_{lv}_frac"] for e in history) for lv in range(4)}
    if method == "sage":
        result["collapsed_frac_probe"] = statistics.fmean(e["sage/collapsed_frac_before"] for e in history)
    hints = run_dir / "hints-rank0.jsonl"
    result["example_hints"] = [json.loads(line) for line in hints.read_text().splitlines()[:3]] if hints.exists() \
        else []
    return result


def length_split_ab(init: str, seed: int, steps: int, workdir: Path, task: list[str]) -> dict:
    """SAGE with the loss's forward split by prompt length (align's default) against TRL's one padded forward:
    the same seed twice each, alternating off / on / on / off so drift cancels; update and run seconds."""
    import align.methods.sage.trainer as sage_trainer

    shift_invariant = sage_trainer.position_shift_invariant
    runs = {"split": [], "one_forward": []}
    for i, mode in enumerate(("one_forward", "split", "split", "one_forward")):
        sage_trainer.position_shift_invariant = shift_invariant if mode == "split" else (lambda config: False)
        try:
            r = one_run("sage", init, seed, steps, workdir / f"ab{i}", "", task)
        finally:
            sage_trainer.position_shift_invariant = shift_invariant
        runs[mode].append({"seconds": r["seconds"], "update_seconds": r["phase_seconds"]["update"]})
        print(f"[bench] length split {mode}: update {r['phase_seconds']['update']:.1f} s, run {r['seconds']:.0f} s",
              flush=True)
    mean = {mode: {k: statistics.fmean(r[k] for r in rs) for k in ("seconds", "update_seconds")}
            for mode, rs in runs.items()}
    split, one = mean["split"], mean["one_forward"]
    return {"seed": seed, "runs": runs, "mean": mean,
            "update_ratio_split_vs_one_forward": split["update_seconds"] / one["update_seconds"],
            "run_ratio_split_vs_one_forward": split["seconds"] / one["seconds"]}


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for method, results in runs.items():
        summary[method] = {
            **{f"{split}_accuracy_after": interval95([r["accuracy_after"][split] for r in results])
               for split in SPLITS},
            **{f"{split}_gain": interval95([r["accuracy_after"][split] - r["accuracy_before"][split] for r in results])
               for split in SPLITS},
            "collapsed_frac_trained": interval95([r["collapsed_frac_trained"] for r in results]),
            "never_solved_frac_final": interval95([r["never_solved_frac_final"] for r in results]),
            "wall_clock_vs_grpo": interval95([r["seconds"] / g["seconds"] for r, g in zip(results, runs["grpo"],
                                                                                         strict=True)]),
            "phase_seconds_mean": {p: statistics.fmean(r["phase_seconds"][p] for r in results) for p in PHASES},
        }
        if method == "sage":
            summary[method]["collapsed_frac_probe"] = interval95([r["collapsed_frac_probe"] for r in results])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="warm-started checkpoint (default: run the recipe's warm start on the task)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--train-rows", type=int, default=2000, help="warm-start problems (every carry count)")
    parser.add_argument("--rl-rows", type=int, default=256,
                        help="RL trains on the first N of them, so each is seen several times (SAGE-LIGHT's levels "
                             "only act on prompts seen again)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sage.json"))
    parser.add_argument("--length-split-ab", type=int, metavar="SEED",
                        help="instead: SAGE with and without the loss's length split, 2 runs each of SEED from --init; "
                             "adds `length_split` to the existing --out")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="align-sage-bench-"))
    task = hard_split(workdir, args.train_rows)
    if args.length_split_ab is not None:
        if not args.init or not Path(args.out).exists():
            parser.error("--length-split-ab needs --init (the main run's warm start) and an existing --out")
        report = json.loads(Path(args.out).read_text())
        report["length_split"] = length_split_ab(args.init, args.length_split_ab, args.steps, workdir,
                                                 [*task, f"data.max_train_rows={args.rl_rows}"])
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(json.dumps(report["length_split"]["mean"], indent=2))
        return
    init = args.init or warm_start(workdir, task)
    task.append(f"data.max_train_rows={args.rl_rows}")
    grpo_recipe = grpo_variant(workdir)
    runs = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            runs[method].append(one_run(method, init, seed, args.steps, workdir, grpo_recipe, task))
            r = runs[method][-1]
            print(f"[bench] seed {seed} {method}: hard {r['accuracy_before']['hard']:.2f} -> "
                  f"{r['accuracy_after']['hard']:.2f}, easy {r['accuracy_before']['easy']:.2f} -> "
                  f"{r['accuracy_after']['easy']:.2f}, {r['seconds']:.0f} s", flush=True)
    report = {
        "benchmark": f"GRPO vs SAGE vs SAGE-LIGHT, 3-digit additions, warm start that forgets carries (recipe "
                     f"{RECIPE}); held-out split by carries (hard: two)",
        "setup": {"init": init, "seeds": args.seeds, "optimizer_steps": args.steps, "train_rows": args.train_rows,
                  "rl_rows": args.rl_rows,
                  "prompts_per_step": 8, "num_generations": 8, "held_out": {s: HELD_OUT_PER_SPLIT for s in SPLITS},
                  "heldout_accuracy_before": runs["grpo"][0]["accuracy_before"], "eval": "greedy, no hint",
                  "interval": "95% Student-t over seeds", "threads": "2 CPU cores, runs sequential"},
        "summary": summarise(runs),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
