"""How much data buys a useful per-response sigma from the anchor-guided Gaussian reward model, and does it matter?

    python benchmarks/gaussian_sigma.py                      # all three parts, seeds 1 2 3
    python benchmarks/gaussian_sigma.py --parts ideal        # part 1 only (seconds)
    python benchmarks/gaussian_sigma.py --parts tiny --tiny-steps 800 2400 --seeds 1 2

The known-truth world of align.data.preferences: a response's reward is N(mu, sigma^2), mu and sigma fixed by its
three words (15-word vocabulary, mu and sigma uncorrelated). Pairs carry the vote share of `annotators` simulated
annotators; each response in a pair carries one more utility draw (the external score the anchors threshold).

Part 1, "ideal" (what the data identifies): the Gaussian model with the true sufficient statistic as its features
(a word-count vector plus a constant; two bias-free linear heads exactly as align's: mu, and sigma^2 = softplus(v) +
1e-6), trained to convergence (full batch, Adam) on align's own losses (`gaussian_anchor_loss`, anchors from the
standardised scores' 25th / 75th percentiles as the trainer takes them). No backbone and no step budget stand
between the data and sigma, so this isolates the data: pairs, annotators per pair, anchors, lambda.

Part 2, "tiny" (what the trainer reaches): the embedded tiny transformer through `align.train` (recipe
reward-gaussian-prefs-tiny, 2 anchors, lr 1e-3 cosine over the run), sigma recovery measured at evenly spaced
checkpoints of each run, for the given run lengths and annotator counts.

Part 3, "pick" (does sigma change a decision): with the part-2 model that recovers sigma best, best-of-2 over
held-out pairs of responses whose true means are close (|mu_a - mu_b| <= 0.25) and true sigmas differ (by >= 0.3):
the pick by mu vs by the quantile reward mu + Phi^-1(q) sigma at q = 0.1 (pessimistic) and 0.9 (optimistic). Reports
how often the quantile changes the pick, and of those changes the share in the expected direction (pessimistic ->
the truly lower-sigma response; optimistic -> the higher-sigma one), with the true mean and sigma of the picks.

Writes benchmarks/results/gaussian_sigma.json (a run replaces only the parts it ran).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.data.preferences import WORDS, response_truth, synthetic_preferences  # noqa: E402
from align.methods.reward_model.math import anchor_thresholds, gaussian_anchor_loss, ordinal_labels  # noqa: E402
from align.rewards.gaussian import quantile_reward, variance_from_raw  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from benchmarks.reward_models import pearson, spearman  # noqa: E402

HELD_OUT_PAIRS = 400
DEFAULT = {"pairs": 2000, "annotators": 5, "anchors": 2, "lam": 0.1}
# One axis varied at a time around DEFAULT (the tiny benchmark's setting), plus the corner that has least of all.
IDEAL_GRID = ([{"annotators": a} for a in (1, 5, 25, 100)] + [{"pairs": p} for p in (100, 250, 500, 2000, 8000)]
              + [{"anchors": k} for k in (0, 1, 2)] + [{"lam": lam} for lam in (0.1, 1.0)]
              + [{"pairs": 250, "annotators": 1, "anchors": 0}])
WORD_PATTERN = re.compile(r"[a-z]+")


def word_counts(texts: list[str]) -> torch.Tensor:
    """(N, |WORDS| + 1): how often each vocabulary word occurs, and a constant 1."""
    index = {w: i for i, w in enumerate(WORDS)}
    x = torch.zeros(len(texts), len(WORDS) + 1)
    x[:, -1] = 1.0
    for row, text in enumerate(texts):
        for word in WORD_PATTERN.findall(text.lower()):
            if word in index:
                x[row, index[word]] += 1
    return x


def pair_data(pairs: int, annotators: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training pairs (ties, which carry no preference, dropped as the trainer drops them) and held-out pairs."""
    rows = synthetic_preferences(pairs + HELD_OUT_PAIRS, seed, annotators)
    train = [r for r in rows[:pairs] if r["votes_chosen"] != r["votes_rejected"]]
    return train, rows[pairs:]


def fit_ideal(train: list[dict], anchors: int, lam: float, seed: int, iterations: int = 1000
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the two linear heads on word counts; returns their weights (mu head, raw-variance head)."""
    torch.manual_seed(seed)
    x_w, x_l = word_counts([r["chosen"] for r in train]), word_counts([r["rejected"] for r in train])
    share = torch.tensor([r["votes_chosen"] / (r["votes_chosen"] + r["votes_rejected"]) for r in train])
    scores = np.array([r["score_chosen"] for r in train] + [r["score_rejected"] for r in train])
    scores = (scores - scores.mean()) / scores.std()  # the trainer standardises the external score
    n = len(train)
    taus = anchor_thresholds(scores, (25.0, 75.0) if anchors == 2 else (50.0,)) if anchors else (0.0,)
    labels = ordinal_labels(torch.tensor(scores), taus)
    a = (0.01 * torch.randn(x_w.shape[1])).requires_grad_()
    b = (0.01 * torch.randn(x_w.shape[1])).requires_grad_()
    optimizer = torch.optim.Adam([a, b], lr=0.05)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss, _, _ = gaussian_anchor_loss(x_w @ a, variance_from_raw(x_w @ b), x_l @ a, variance_from_raw(x_l @ b),
                                          share, labels[:n], labels[n:], taus, lam=lam if anchors else 0.0)
        loss.backward()
        optimizer.step()
    return a.detach(), b.detach()


def recovery(mu: np.ndarray, sigma: np.ndarray, texts: list[str]) -> dict:
    """Predicted mu and sigma against the truth over `texts` (each response once)."""
    true_mu, true_sigma = map(np.array, zip(*map(response_truth, texts)))
    return {"mu_pearson": pearson(mu, true_mu), "sigma_pearson": pearson(sigma, true_sigma),
            "sigma_spearman": spearman(sigma, true_sigma)}


def held_out_responses(held_out: list[dict]) -> dict[str, str]:
    """Each distinct held-out response -> the prompt it was written for (the truth does not depend on it)."""
    return {r[side]: r["prompt"] for r in held_out for side in ("chosen", "rejected")}


def ideal_run(setting: dict, seed: int) -> dict:
    s = {**DEFAULT, **setting}
    train, held_out = pair_data(s["pairs"], s["annotators"], seed)
    a, b = fit_ideal(train, s["anchors"], s["lam"], seed)
    texts = sorted(held_out_responses(held_out))
    x = word_counts(texts)
    return recovery((x @ a).numpy(), variance_from_raw(x @ b).sqrt().numpy(), texts)


def ideal_part(seeds: list[int]) -> list[dict]:
    results = []
    for setting in IDEAL_GRID:
        runs = [ideal_run(setting, seed) for seed in seeds]
        results.append({"setting": {**DEFAULT, **setting}, "varied": sorted(setting),
                        **{k: spread([r[k] for r in runs]) for k in runs[0]}})
        print(f"[bench] ideal {setting}: sigma corr {results[-1]['sigma_pearson']['mean']:.2f}", flush=True)
    return results


def tiny_run(steps: int, annotators: int, seed: int, workdir: Path, checkpoints: int) -> dict:
    """Train through align.train, saving `checkpoints` times; sigma recovery of each checkpoint and the final model."""
    from align.rewards.reward_model import RewardModelScorer
    from align.train import run
    from tests.conftest import compose

    out = workdir / f"tiny-{steps}-{annotators}-seed{seed}"
    overrides = ["recipe=reward-gaussian-prefs-tiny", "algorithm.objective=gaussian_anchor",
                 "algorithm.anchors.count=2", f"algorithm.data.synthetic.annotators={annotators}",
                 f"algorithm.data.synthetic.seed={seed}", f"trainer.seed={seed}", f"trainer.max_steps={steps}",
                 f"trainer.save_steps={steps // checkpoints}", "trainer.save_total_limit=null",
                 f"trainer.output_dir={out}", "trainer.logging_steps=100"]
    start = time.perf_counter()
    summary = run(compose(overrides))
    seconds = time.perf_counter() - start
    _, held_out = pair_data(DEFAULT["pairs"], annotators, seed)  # the run's own held-out pairs (same generator)
    responses = held_out_responses(held_out)
    curve = []
    for step in range(steps // checkpoints, steps + 1, steps // checkpoints):
        model = summary["final_model"] if step == steps else str(out / f"checkpoint-{step}")
        mu, sigma = RewardModelScorer(model).score(list(responses.values()), list(responses), 64)
        curve.append({"step": step, **recovery(mu.numpy(), sigma.numpy(), list(responses))})
    return {**curve[-1], "curve": curve, "seconds": seconds, "model": summary["final_model"], "seed": seed}


def tiny_part(steps_list: list[int], annotators_list: list[int], seeds: list[int], workdir: Path,
              checkpoints: int) -> list[dict]:
    results = []
    for steps, annotators in itertools.product(steps_list, annotators_list):
        runs = [tiny_run(steps, annotators, seed, workdir, checkpoints) for seed in seeds]
        at_step = {c["step"]: spread([r["curve"][i]["sigma_pearson"] for r in runs])
                   for i, c in enumerate(runs[0]["curve"])}
        results.append({"steps": steps, "annotators": annotators, "runs": runs, "sigma_pearson_by_step": at_step,
                        **{k: spread([r[k] for r in runs]) for k in ("mu_pearson", "sigma_pearson",
                                                                      "sigma_spearman", "seconds")}})
        print(f"[bench] tiny {steps} steps, {annotators} annotators: sigma corr by step "
              f"{ {s: round(v['mean'], 2) for s, v in at_step.items()} }", flush=True)
    return results


def pick_part(model: str, seed: int, max_pairs: int = 2000) -> dict:
    """Best-of-2 by mu vs by a quantile of the model's N(mu, sigma^2), on held-out pairs of close true means and
    different true sigmas."""
    from align.rewards.reward_model import RewardModelScorer

    _, held_out = pair_data(DEFAULT["pairs"], DEFAULT["annotators"], seed)
    responses = held_out_responses(held_out)
    texts = list(responses)
    mu, sigma = RewardModelScorer(model).score(list(responses.values()), texts, 64)
    true_mu, true_sigma = map(np.array, zip(*map(response_truth, texts)))
    close = [(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
             if abs(true_mu[i] - true_mu[j]) <= 0.25 and abs(true_sigma[i] - true_sigma[j]) >= 0.3]
    rng = np.random.default_rng(seed)
    pairs = np.array(close)[rng.permutation(len(close))[:max_pairs]]
    first, second = pairs[:, 0], pairs[:, 1]

    def picks(reward: np.ndarray) -> np.ndarray:
        return np.where(reward[first] >= reward[second], first, second)

    by_mean = picks(mu.numpy())
    result = {"model": model, "pairs": len(pairs), "pair_rule": "|true mu difference| <= 0.25, |true sigma "
              "difference| >= 0.3, held-out responses", "by_mean": {"true_mu": float(true_mu[by_mean].mean()),
                                                                      "true_sigma": float(true_sigma[by_mean].mean())}}
    for name, q, expected in (("pessimistic_q0.1", 0.1, np.less), ("optimistic_q0.9", 0.9, np.greater)):
        chosen = picks(quantile_reward(mu, sigma, q).numpy())
        changed = chosen != by_mean
        other = np.where(chosen == first, second, first)
        result[name] = {"changed_frac": float(changed.mean()),
                        "expected_direction_frac_of_changed": float(
                            expected(true_sigma[chosen], true_sigma[other])[changed].mean()) if changed.any() else None,
                        "true_mu": float(true_mu[chosen].mean()), "true_sigma": float(true_sigma[chosen].mean())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("ideal", "tiny", "pick"), default=["ideal", "tiny", "pick"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tiny-steps", type=int, nargs="+", default=[2400],
                        help="training lengths (the cosine schedule spans each); recovery is measured at checkpoints")
    parser.add_argument("--tiny-checkpoints", type=int, default=6, help="checkpoints measured per run")
    parser.add_argument("--tiny-annotators", type=int, nargs="+", default=[5])
    parser.add_argument("--pick-model", help="reward model for part 3 (default: part 2's best-recovering run)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gaussian_sigma.json"))
    args = parser.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["world"] = ("align.data.preferences: 15 words, 3 per response, mu = sum of qualities in [-3, 3], sigma = "
                       "0.3 + sum of divisiveness in [0.3, 2.1]; held-out: 400 pairs' distinct responses")
    if "ideal" in args.parts:
        result["ideal"] = {"seeds": args.seeds, "default": DEFAULT, "results": ideal_part(args.seeds)}
    if "tiny" in args.parts:
        workdir = Path(tempfile.mkdtemp(prefix="sigma-bench-"))
        result["tiny"] = {"seeds": args.seeds, "recipe": "reward-gaussian-prefs-tiny (2 anchors, 2000 pairs, batch "
                          "32, lr 1e-3)", "device": "cpu, 2 cores",
                          "results": tiny_part(args.tiny_steps, args.tiny_annotators, args.seeds, workdir,
                                              args.tiny_checkpoints)}
    if "pick" in args.parts:
        best = {"model": args.pick_model, "seed": args.seeds[0]} if args.pick_model else max(
            (r for setting in result["tiny"]["results"] for r in setting["runs"]), key=lambda r: r["sigma_pearson"])
        result["pick"] = pick_part(best["model"], best["seed"])  # held-out pairs of the seed the model trained on
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
