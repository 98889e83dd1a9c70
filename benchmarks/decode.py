"""Inference-time decoding on held-out arithmetic: accuracy against generated tokens per prompt.

    python benchmarks/decode.py                          # warm start once, then every method x 3 seeds
    python benchmarks/decode.py --init runs/x/warm_start/final --prompts 40 --seeds 1 2 3 --ns 2 4 8 16

The policy is the warm-started tiny model (the SFT warm start of `grpo-arithmetic-tiny`, the quickstart's starting
point); the prompts are the first `--prompts` of the embedded task's held-out split; the reward is the boxed_match
verifier (the gold answer: an oracle, reported as such). Methods: greedy, sampling, best-of-N, SMC with the final-only
potential (soft best-of-N with resampling), SMC with lookahead rollouts, and power sampling (no reward), each N in
`--ns`. The prefix twist needs a reward that scores partial text (a trained reward model), so it is not in this run.
Per (method, N): accuracy and generated tokens per prompt (mean, min, max over seeds), reward calls per prompt.
Writes benchmarks/results/decode.json and decode.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.config import DataConfig  # noqa: E402
from align.decode.cli import load_policy, reward_source  # noqa: E402
from align.decode.io import load_prompts  # noqa: E402
from align.decode.methods import decode  # noqa: E402
from align.decode.particles import Settings  # noqa: E402
from align.train import run  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from tests.conftest import compose  # noqa: E402

RECIPE = "grpo-arithmetic-tiny"


def warm_start(workdir: Path) -> str:
    """The recipe's warm start (plus the one GRPO step `run` always takes); returns the checkpoint path."""
    out = workdir / "warm-start"
    run(compose([f"recipe={RECIPE}", f"trainer.output_dir={out}", "trainer.max_steps=1", "eval.enabled=false"]))
    return str(out / "warm_start" / "final")


def configurations(ns: list[int], block: int, max_new_tokens: int) -> list[tuple[str, int, str, Settings]]:
    """(label, N, method, settings) for every point of the curve."""
    base = Settings(block=block, max_new_tokens=max_new_tokens, lam=4.0, kappa=0.5)
    points = [("greedy", 1, "greedy", base), ("sample", 1, "sample", base)]
    for n in ns:
        points += [("best_of_n", n, "best_of_n", Settings(n=n, block=block, max_new_tokens=max_new_tokens,
                                                          selection="argmax_reward")),
                   ("smc_final", n, "smc", Settings(n=n, block=block, max_new_tokens=max_new_tokens, variant="final",
                                                     lam=4.0, selection="argmax_reward")),
                   ("smc_lookahead", n, "smc", Settings(n=n, block=block, max_new_tokens=max_new_tokens,
                                                         variant="lookahead", lam=4.0, rollouts=2,
                                                         selection="argmax_reward")),
                   ("power", n, "power", Settings(n=n, block=block, max_new_tokens=max_new_tokens, alpha=4.0,
                                                  tau=0.25, lam=0.0))]
    return points


def measure(model, tokenizer, prompts, answers, verifier, method: str, settings: Settings, seed: int) -> dict:
    start = time.perf_counter()
    rows = decode(model, tokenizer, prompts, answers, method, settings, source=verifier, batch_size=len(prompts),
                  seed=seed)
    scores = verifier(prompts=prompts, completions=[r["completion"] for r in rows], answer=answers)
    return {"accuracy": sum(scores) / len(scores),
            "generated_tokens": sum(r["generated_tokens"] for r in rows) / len(rows),
            "reward_calls": sum(r["reward_calls"] for r in rows) / len(rows),
            "seconds": time.perf_counter() - start}


def plot(summary: dict, path: Path) -> None:
    import matplotlib  # lazy: only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in summary.items():
        xs = [p["generated_tokens"]["mean"] for p in points]
        ys = [p["accuracy"]["mean"] for p in points]
        err = [[y - p["accuracy"]["min"] for y, p in zip(ys, points)],
               [p["accuracy"]["max"] - y for y, p in zip(ys, points)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per prompt (log)")
    ax.set_ylabel("held-out accuracy (boxed_match)")
    ax.set_title("Decoding the warm-started tiny model: accuracy vs compute (mean, min-max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="warm-started checkpoint (default: run the recipe's warm start)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode.json"))
    parser.add_argument("--resume", action="store_true", help="keep the points already in --out, measure the rest")
    args = parser.parse_args()

    torch.set_num_threads(2)
    init = args.init or warm_start(Path(tempfile.mkdtemp(prefix="align-decode-bench-")))
    model, tokenizer = load_policy(init)
    prompts, answers = load_prompts("synthetic", "prompt", args.prompts)
    verifier = reward_source("boxed_match", {})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else {}
    for label, n, method, settings in configurations(args.ns, args.block, args.max_new_tokens):
        key = f"{label}@{n}"
        if key in runs:  # --resume: measured by an earlier, interrupted run with the same settings
            continue
        runs[key] = [{"seed": seed, **measure(model, tokenizer, prompts, answers, verifier, method, settings, seed)}
                     for seed in args.seeds]
        print(f"[bench] {key}: accuracy {[r['accuracy'] for r in runs[key]]}, "
              f"{runs[key][0]['generated_tokens']:.0f} tokens/prompt, {runs[key][0]['seconds']:.1f} s", flush=True)
        write_report(out, args, init, runs)
    summary = write_report(out, args, init, runs)
    plot(summary, out.with_suffix(".png"))
    print(json.dumps({k: [(p["n"], round(p["accuracy"]["mean"], 3), round(p["generated_tokens"]["mean"]))
                          for p in v] for k, v in summary.items()}, indent=1))


def write_report(out: Path, args: argparse.Namespace, init: str, runs: dict) -> dict:
    """Write the JSON report of the runs so far (after every point, so an interrupted run keeps what it measured);
    returns its summary."""
    summary: dict[str, list] = {}
    for key, results in runs.items():
        label, n = key.split("@")
        summary.setdefault(label, []).append({"n": int(n), **{m: spread([r[m] for r in results]) for m in
                                                             ("accuracy", "generated_tokens", "reward_calls")}})
    report = {"benchmark": "decoding methods on held-out 2-digit addition, warm-started tiny model, boxed_match "
                           "verifier (gold answer: an oracle)",
              "setup": {"init": init, "prompts": args.prompts, "data": DataConfig().source, "seeds": args.seeds,
                        "ns": args.ns, "block": args.block, "max_new_tokens": args.max_new_tokens, "lambda": 4.0,
                        "kappa": 0.5, "lookahead_rollouts": 2, "power": {"alpha": 4.0, "tau": 0.25},
                        "selection": "argmax_reward (sample for power)", "threads": "2 CPU cores"},
              "summary": summary, "runs": runs}
    out.write_text(json.dumps(report, indent=2))
    return summary


if __name__ == "__main__":
    main()
