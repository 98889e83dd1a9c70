"""Degradation gate: how often it flags (false-positive rate and power), and what answer confidence costs.

1. Simulated pairs of models on n items (baseline accuracy 0.7, items of varying difficulty, the candidate's per-item
   correctness correlated with the baseline's as for two checkpoints of one model): the share of trials flagged
   at alpha 0.05, for a true drop of 0, 1, 2 and 3 accuracy points, for each aggregation (4 equal tasks).
2. Greedy held-out evaluation of the embedded tiny model with the answer-confidence recorder vs without it,
   interleaved pairs in one process: the time ratio.

    python benchmarks/gate.py [--trials 400] [--pairs 5]   ->  benchmarks/results/gate.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from align.gate.stats import AGGREGATES, gate

RESULTS = Path(__file__).parent / "results" / "gate.json"


def simulated_pair(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness of two related models: each item has a difficulty p_i (mean 0.7); the candidate keeps the
    baseline's answer with probability 0.9 and otherwise redraws it, from p_i lowered by `drop / 0.1` so that its
    expected accuracy is `drop` lower."""
    p = rng.beta(2.1, 0.9, size=n)
    base = rng.random(n) < p
    redraw = rng.random(n) < 0.1
    shifted = np.clip(p - drop / 0.1, 0.0, 1.0)
    cand = np.where(redraw, rng.random(n) < shifted, base)
    return base.astype(float), cand.astype(float)


def flag_rates(n: int, drops: list[float], trials: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rates = {}
    for drop in drops:
        flagged = dict.fromkeys(AGGREGATES, 0)
        measured = []
        for trial in range(trials):
            pairs = [simulated_pair(rng, n // 4, drop) for _ in range(4)]
            measured.append(np.mean([c.mean() - b.mean() for b, c in pairs]))
            tasks = {f"task{k}": pair for k, pair in enumerate(pairs)}
            for aggregate in AGGREGATES:
                flagged[aggregate] += gate(tasks, 0.05, aggregate, permutations=2000, seed=trial).degraded
        rates[f"{drop:.2f}"] = {"mean_measured_difference": float(np.mean(measured)),
                                **{a: flagged[a] / trials for a in AGGREGATES}}
        print(f"n={n} drop={drop:.2f}: {rates[f'{drop:.2f}']}", flush=True)
    return rates


def confidence_cost(pairs: int) -> dict:
    """Seconds of greedy generation with and without the confidence recorder, interleaved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.data.synthetic import arithmetic
    from align.evaluation import generate_greedy
    from align.generation import Decoding, chat_prompt_ids, generate
    from align.models import ensure_tiny

    path = ensure_tiny()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [row["prompt"] for row in arithmetic(64, seed=1)]

    def plain():  # the same generation helper, without the confidence recorder
        generate(model, tokenizer, chat_prompt_ids(tokenizer, prompts), Decoding(max_new_tokens=48))

    def with_confidence():
        generate_greedy(model, tokenizer, prompts, max_new_tokens=48, batch_size=64)

    times = {"plain": [], "with_confidence": []}
    for _ in range(pairs):
        for name, fn in (("plain", plain), ("with_confidence", with_confidence)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [c / p for c, p in zip(times["with_confidence"], times["plain"])]
    return {"prompts": len(prompts), "max_new_tokens": 48, "ratio_median": float(np.median(ratios)),
            "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    result = {"alpha": 0.05, "trials": args.trials, "tasks": 4, "flag_rate": {}}
    for n in (500, 2000):
        result["flag_rate"][str(n)] = flag_rates(n, [0.0, 0.01, 0.02, 0.03], args.trials)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    result["confidence_cost"] = confidence_cost(args.pairs)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["confidence_cost"]))


if __name__ == "__main__":
    main()
