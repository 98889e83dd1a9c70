"""Reward models against known truth: Bradley-Terry vs the Gaussian model with 0 / 1 / 2 anchors, and the CausalRM
estimators on selection-biased, noisy feedback.

    python benchmarks/reward_models.py --feedback-models                # part 1 only, seeds 1 2 3 (~50 min, 2 cores)
    python benchmarks/reward_models.py --pair-models --backbone-steps 250 --feedback-steps 100   # part 2 only
    python benchmarks/reward_models.py --seeds 1 --pair-steps 100 --feedback-steps 100 --out /tmp/rm.json
    python benchmarks/reward_models.py --pair-models gaussian_2_anchors --feedback-models --pair-steps 1500 \
        --out /tmp/rm_sigma.json                                        # sigma identification, longer

Data: the embedded known-truth world (align.data.preferences): a response's true reward is N(mu, sigma^2), mu and
sigma set by its words. Every run trains the tiny model through `align.train` (recipe reward-gaussian-prefs-tiny,
the data seed and trainer seed = the benchmark seed).

Part 1 (pairs, 2000 training / 400 held-out pairs, five annotators' votes as soft labels, one more utility draw per
response as the external anchor score): held-out accuracy against the annotators' majority and against the true mu
order, Brier score and cross-entropy of P(y_w > y_l) against the soft labels, the correlation of predicted mu and
sigma with the truth, and the predicted sigma's scale (mean predicted sigma in score units / mean true sigma; 1 is
the true scale, which only anchors can fix).

Part 2 (feedback, 2000 shown responses: the true label is 1[u > 0], u ~ N(mu, sigma^2); observed labels flip with
rho_01 = 0.2, rho_10 = 0.1), in two worlds (`WORLDS`, algorithm.data.synthetic.selection): "text", where P(feedback)
rises from 0.15 to 0.6 with how good the response looks (a function of its words: missing at random given the text,
as CausalRM assumes), and "label", where it is 0.15 / 0.6 by the true label (random given the text: a negative
control). Naive BCE on the observed rows, noise-aware only, IPS only, CausalRM (both) and doubly robust, with the
noise rates estimated and the propensities fitted; the oracle row uses the true rates and propensities. Accuracy and
AUC on an unbiased held-out set (400 rows, no selection, clean labels); estimated vs true noise rates; and the
propensity model against `true_propensity` (mean absolute error, that of the best constant, Pearson correlation).
The backbone is the Bradley-Terry model of the same seed (part 1's, else trained for --backbone-steps) with a fresh
head (a stand-in for a pretrained LM whose features already describe the responses; the tiny model's random
features would leave the propensity and noise models nothing to fit).

Writes benchmarks/results/reward_models.json in place: a run replaces only the parts it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.data.preferences import load_reward_data, synthetic_feedback  # noqa: E402
from align.methods.reward_model.causal import causal_rm_inputs, last_token_features  # noqa: E402
from align.methods.reward_model.trainer import tokenize_rows  # noqa: E402
from align.rewards.reward_model import RewardModelScorer  # noqa: E402
from align.train import run  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from tests.conftest import compose  # noqa: E402

PAIR_MODELS = {
    "bradley_terry": ["algorithm.objective=bradley_terry"],
    "gaussian_0_anchors": ["algorithm.objective=gaussian_anchor", "algorithm.anchors.count=0"],
    "gaussian_1_anchor": ["algorithm.objective=gaussian_anchor", "algorithm.anchors.count=1",
                          "algorithm.anchors.percentiles=[50.0]"],
    "gaussian_2_anchors": ["algorithm.objective=gaussian_anchor", "algorithm.anchors.count=2"],
}
TRUE_RHO = {"rho_01": 0.2, "rho_10": 0.1}
PROPENSITY = {"y=0": 0.15, "y=1": 0.6}  # the default algorithm.data.synthetic.propensity
WORLDS = {"text": "P(feedback) = 0.15 + 0.45 * Phi(mu / sigma), a function of the response text: missing at random "
                  "given the text, as CausalRM assumes",
          "label": "P(feedback) = 0.15 if the true label is 0, 0.6 if 1: random given the text, so no propensity "
                   "model of the text can recover it (negative control)"}
FEEDBACK_WORLDS = tuple(WORLDS)
# Fine-tuning the part-1 backbone: at the from-scratch 1e-3, every estimator ended near a constant predictor in a
# trial run (seed 1: accuracy 0.49-0.64); at 3e-4 naive 0.48, CausalRM 0.69, oracle 0.72.
FEEDBACK_LR = 3e-4
FEEDBACK_MODELS = {
    "naive_bce": ["algorithm.causal.noise_correction=false", "algorithm.causal.propensity_weighting=false"],
    "noise_aware_only": ["algorithm.causal.propensity_weighting=false"],
    "ips_only": ["algorithm.causal.noise_correction=false"],
    "causal_rm": [],
    "doubly_robust": ["algorithm.causal.doubly_robust=true"],
    "causal_rm_oracle": ["algorithm.causal.rho_01=0.2", "algorithm.causal.rho_10=0.1",
                         "algorithm.data.propensity_column=true_propensity"],
}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))


def train(overrides: list[str], out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    summary = run(compose(["recipe=reward-gaussian-prefs-tiny", *overrides, f"trainer.output_dir={out}",
                           "trainer.logging_steps=50"]))
    return summary, time.perf_counter() - start


def pair_run(name: str, seed: int, steps: int, workdir: Path) -> dict:
    overrides = [*PAIR_MODELS[name], f"algorithm.data.synthetic.seed={seed}", f"trainer.seed={seed}",
                 f"trainer.max_steps={steps}"]
    summary, seconds = train(overrides, workdir / f"{name}-seed{seed}")
    algo = OmegaConf.to_object(compose(["recipe=reward-gaussian-prefs-tiny", *overrides])).algorithm
    _, held_out, _ = load_reward_data(algo.data, algo.objective)  # the run's own held-out pairs
    scorer = RewardModelScorer(summary["final_model"])
    prompts = [r["prompt"] for r in held_out] * 2
    responses = [r["chosen"] for r in held_out] + [r["rejected"] for r in held_out]
    mu, sigma = scorer.score(prompts, responses, batch_size=64)
    true_mu = np.array([r["mu_chosen"] for r in held_out] + [r["mu_rejected"] for r in held_out])
    true_sigma = np.array([r["sigma_chosen"] for r in held_out] + [r["sigma_rejected"] for r in held_out])
    n = len(held_out)
    mu_w, mu_l = mu[:n].numpy(), mu[n:].numpy()
    decided = true_mu[:n] != true_mu[n:]
    truth_order = ((mu_w > mu_l) == (true_mu[:n] > true_mu[n:]))[decided].mean()
    after = summary["eval_after"]
    result = {"accuracy_vs_votes": after["eval_accuracy"], "accuracy_vs_true_mu": float(truth_order),
              "brier": after["eval_brier"], "cross_entropy": after["eval_cross_entropy"],
              "mu_pearson": pearson(mu.numpy(), true_mu), "seconds": seconds}
    if sigma is not None:
        record = scorer.model.config.align_reward
        scale = record.get("score_std")  # anchors from a score: mu and sigma are in standardised-score units
        result.update(sigma_pearson=pearson(sigma.numpy(), true_sigma), sigma_spearman=spearman(sigma.numpy(),
                                                                                                true_sigma))
        if scale:
            result["sigma_scale"] = float(sigma.numpy().mean() * scale / true_sigma.mean())
    return result


def backbone(seed: int, steps: int, workdir: Path) -> str:
    """The same seed's Bradley-Terry model (part 1's when it ran with `steps`, else trained here) with its head
    re-drawn: features that know the responses, no answer."""
    source = workdir / f"bradley_terry-seed{seed}"
    if not source.exists():
        pair_run("bradley_terry", seed, steps, workdir)
    target = workdir / f"backbone-seed{seed}"
    model = AutoModelForSequenceClassification.from_pretrained(source / "final")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.score.weight.data.normal_(0.0, model.config.initializer_range)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(source / "final").save_pretrained(target)
    return str(target)


def feedback_overrides(name: str, world: str, seed: int, steps: int, init: str) -> list[str]:
    return ["algorithm.objective=causal_rm", *FEEDBACK_MODELS[name], f"model.path={init}",
            f"algorithm.data.synthetic.selection={world}", f"algorithm.data.synthetic.seed={seed}",
            f"trainer.seed={seed}", f"trainer.max_steps={steps}", f"trainer.learning_rate={FEEDBACK_LR}"]


def feedback_run(name: str, world: str, seed: int, steps: int, init: str, workdir: Path) -> dict:
    summary, seconds = train(feedback_overrides(name, world, seed, steps, init), workdir / f"{name}-{world}-seed{seed}")
    record = json.loads((Path(summary["final_model"]) / "config.json").read_text())["align_reward"]
    after = summary["eval_after"]
    result = {"accuracy": after["eval_accuracy"], "auc": after["eval_auc"], "rho_01": record["rho_01"],
              "rho_10": record["rho_10"], "seconds": seconds}
    if "propensity_min" in record:
        result.update(propensity_min=record["propensity_min"], propensity_max=record["propensity_max"])
    return result


def propensity_fit(world: str, seed: int, init: str) -> dict:
    """The causal_rm run's auxiliary models, refitted as its trainer fits them (same features, rows and seed), against
    the truth: the propensity model's mean absolute error and Pearson correlation with `true_propensity` (and the
    error of the best constant, the observed rate, for scale), and the estimated noise rates."""
    cfg = OmegaConf.to_object(compose(["recipe=reward-gaussian-prefs-tiny",
                                       *feedback_overrides("causal_rm", world, seed, 1, init)]))
    algo, synthetic = cfg.algorithm, cfg.algorithm.data.synthetic
    rows, _, _ = load_reward_data(algo.data, algo.objective)
    truth = np.array([r["true_propensity"] for r in synthetic_feedback(
        synthetic.num_train, synthetic.seed, synthetic.rho_01, synthetic.rho_10, tuple(synthetic.propensity), world)])
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    rows, dropped = tokenize_rows(rows, tokenizer, algo.data.max_length)
    assert not dropped, "every synthetic row fits max_length, so rows line up with the truth"
    c = algo.causal
    info = causal_rm_inputs(lambda: last_token_features(model, [r["input_ids"] for r in rows], tokenizer.pad_token_id),
                            rows, noise_correction=True, rho=(None, None), noise_quantile=c.noise_quantile,
                            propensity_weighting=True, doubly_robust=False, clip=c.propensity_clip, l2=c.aux_l2,
                            seed=cfg.trainer.seed)
    estimate = np.array([r["propensity"] for r in rows])
    observed_rate = np.mean([r["observed"] for r in rows])
    return {"propensity_mae": float(np.abs(estimate - truth).mean()),
            "propensity_mae_constant": float(np.abs(observed_rate - truth).mean()),
            "propensity_pearson": pearson(estimate, truth), "rho_01": info["rho_01"], "rho_10": info["rho_10"]}


def summarise(runs: dict[str, list[dict]]) -> dict:
    return {name: {key: spread([r[key] for r in results]) for key in results[0]} for name, results in runs.items()}


FEEDBACK_SETUP_KEYS = ("feedback_steps", "feedback", "true_noise_rates", "true_propensity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    # The mean is learned within ~250 steps, the per-response sigma only later (seed 1, 2 anchors: sigma correlation
    # 0.05 at 250 steps, 0.89 at 1000).
    parser.add_argument("--pair-steps", type=int, default=800)
    parser.add_argument("--feedback-steps", type=int, default=200)
    parser.add_argument("--backbone-steps", type=int, default=None,
                        help="steps of the Bradley-Terry backbone when part 1 does not train it (default: pair steps)")
    parser.add_argument("--pair-models", nargs="*", choices=list(PAIR_MODELS), default=list(PAIR_MODELS))
    parser.add_argument("--feedback-models", nargs="*", choices=list(FEEDBACK_MODELS), default=list(FEEDBACK_MODELS))
    parser.add_argument("--worlds", nargs="+", choices=list(FEEDBACK_WORLDS), default=list(FEEDBACK_WORLDS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reward_models.json"),
                        help="updated in place: only the parts this run ran are replaced")
    args = parser.parse_args()
    backbone_steps = args.pair_steps if "bradley_terry" in args.pair_models else args.backbone_steps or args.pair_steps
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-"))
    pairs = {name: [] for name in args.pair_models}
    feedback = {world: {name: [] for name in ["propensity_model", *args.feedback_models]} for world in args.worlds}
    for seed in args.seeds:
        for name in args.pair_models:
            pairs[name].append(pair_run(name, seed, args.pair_steps, workdir))
            print(f"[bench] pairs {name} seed {seed}: {pairs[name][-1]}", flush=True)
        if not args.feedback_models:
            continue
        init = backbone(seed, backbone_steps, workdir)
        for world in args.worlds:
            feedback[world]["propensity_model"].append(propensity_fit(world, seed, init))
            for name in args.feedback_models:
                feedback[world][name].append(feedback_run(name, world, seed, args.feedback_steps, init, workdir))
                print(f"[bench] feedback {world} {name} seed {seed}: {feedback[world][name][-1]}", flush=True)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"setup": {}}
    if args.pair_models:
        result["setup"] = {"seeds": args.seeds, "pair_steps": args.pair_steps, "batch": 32,
                           "learning_rate": {"pairs": 1e-3}, "model": "embedded tiny (0.8M parameters)",
                           "pairs": "2000 train / 400 held out, 5 annotators", "device": "cpu, 2 cores"}
        result["pairs"] = summarise(pairs)
    if args.feedback_models:
        result["setup"] = {k: v for k, v in result["setup"].items() if k not in FEEDBACK_SETUP_KEYS}
        result["setup"].get("learning_rate", {}).pop("feedback", None)
        result["feedback"] = {
            "setup": {"seeds": args.seeds, "steps": args.feedback_steps, "backbone_steps": backbone_steps,
                      "batch": 32, "learning_rate": FEEDBACK_LR, "rows": "2000 train / 400 unbiased held out",
                      "true_noise_rates": TRUE_RHO, "propensity": PROPENSITY, "worlds": WORLDS,
                      "device": "cpu, 2 cores"},
            **{world: summarise(feedback[world]) for world in args.worlds}}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
