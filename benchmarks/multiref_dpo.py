"""Multi-reference DPO against known truth: single-reference DPO with each reference vs every loss x weighting pair
over four references of known quality, and what K = 4 references cost.

    python benchmarks/multiref_dpo.py                   # both parts, seeds 1 2 3 (~35 min on 2 idle cores)
    python benchmarks/multiref_dpo.py --parts quality --seeds 1 --methods 'single:*' 'mdpo+vaw' --out /tmp/q.json
    python benchmarks/multiref_dpo.py --seeds 1 --steps 4 --pairs 1 --methods mdpo+uniform --out /tmp/mr.json

Part `quality`: `recipe=multiref-dpo-prefs-tiny` (the embedded known-truth preference world: a response's true
utility is the sum of its words' qualities, annotators vote on noisy draws of it). The policy is
`embedded:tiny-pref:0` (knows the format, no preference); the references are `embedded:tiny-pref:<tilt>` for tilt
2, 0.5, 0 and -1 (good, weak, uninformative, adversarial). Per seed (the trainer seed and the data seed): DPO against
each reference alone (K = 1), then every loss (mrpo, mdpo) x weighting (7 strategies) with all four references; the
same training pairs, steps, batch and learning rate for every run. Per run: held-out preference accuracy against the
annotators' labels before and after (`eval_preference_accuracy`), the final policy's accuracy against the TRUE rule
(mu_chosen > mu_rejected, tied pairs skipped), the mean weight of each reference over the last 20% of steps, the
share of steps per reference for the one-hot strategies (swcw_onehot, tsw), and the training wall time. Reference log
probs are cached in one directory shared by all runs, so each reference is scored once per data seed.

Part `cost` (one thread, `torch.set_num_threads(1)`, for stable timings): (a) the one-off precompute: each
reference scoring the training and validation pairs with an empty cache (miss) and again (hit); (b) training time,
timing only `trainer.train()`, of K = 4 (mdpo, uniform) relative to K = 1 (the same cached log-probs of one
reference), of TRL's own DPOTrainer (`precompute_ref_log_probs=True`, `sigmoid_norm`, its precompute outside the
timed part) as a second single-reference baseline, and of tsw (which scores `bandit_pairs` validation pairs before
and after every step) relative to uniform; same policy, data, steps and batch, the order alternating every round so
drift cancels. Writes benchmarks/results/multiref_dpo.json after every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The embedded references take ~13 s each to build: keep them in align's usual cache (or $ALIGN_CACHE) across
# invocations, rather than the throw-away cache tests.conftest would otherwise pick.
os.environ.setdefault("ALIGN_CACHE", str(Path.home() / ".cache" / "align"))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from align.methods.multiref_dpo.config import (  # noqa: E402
    MULTIREF_LOSSES,
    MULTIREF_WEIGHTINGS,
    MultiRefDPOAlgorithmConfig,
    ReferenceModelConfig,
    reference_models,
)
from align.train import run  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from benchmarks.overhead import StepClock, machine_info  # noqa: E402
from tests.conftest import compose  # noqa: E402

RECIPE = "multiref-dpo-prefs-tiny"
POLICY = "embedded:tiny-pref:0"
REFERENCES = {"embedded:tiny-pref:2": "good", "embedded:tiny-pref:0.5": "weak",
              "embedded:tiny-pref:0": "uninformative", "embedded:tiny-pref:-1": "adversarial"}
ONE_HOT = ("swcw_onehot", "tsw")
FINAL_SHARE = 0.2  # "final" weights: the mean over the last 20% of the logged steps
COST_THREADS = 1
TARGET_K4_VS_K1 = 1.15
SCORING_BATCH = 64


# --------------------------------------------------------------------------------------------------------------------
# Configuration


def reference_list(paths) -> str:
    """A Hydra list override value; quoted, since the names hold ':' and '-'."""
    return "[" + ",".join(f"'{p}'" for p in paths) + "]"


def reference_names() -> dict[str, str]:
    """Reference path -> the name align gives it in metrics (`weights/<name>`), e.g. tiny-pref:2."""
    return {r.path: r.name for r in reference_models(MultiRefDPOAlgorithmConfig(references=list(REFERENCES)))}


def methods() -> dict[str, dict]:
    """Method name -> (references, loss, weighting): each reference alone (the loss is irrelevant at K = 1), then
    every loss x weighting pair over all four."""
    table = {f"single:{name}": {"references": [path], "loss": "mdpo", "weighting": "uniform"}
             for path, name in reference_names().items()}
    for loss in MULTIREF_LOSSES:
        for weighting in MULTIREF_WEIGHTINGS:
            table[f"{loss}+{weighting}"] = {"references": list(REFERENCES), "loss": loss, "weighting": weighting}
    return table


def select(table: dict, patterns: list[str] | None) -> dict:
    """The methods whose name equals or matches (fnmatch) one of `patterns`; all when none are given."""
    if not patterns:
        return table
    chosen = {name: spec for name, spec in table.items()
              if any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)}
    if not chosen:
        raise SystemExit(f"--methods {patterns} matches none of: {', '.join(table)}")
    return chosen


def overrides(spec: dict, seed: int, args: argparse.Namespace, cache: Path) -> list[str]:
    """The run's composition: the recipe, the method, the seed (trainer and data), --steps / --beta, the shared
    log-prob cache. Every step is logged so the one-hot strategies' `arm` is a per-step value (logging averages
    over its window)."""
    beta = [f"algorithm.beta={args.beta}"] if args.beta is not None else []
    return [f"recipe={RECIPE}", "logger=none", f"model.path={POLICY}",
            f"algorithm.references={reference_list(spec['references'])}", f"algorithm.loss={spec['loss']}",
            f"algorithm.weighting={spec['weighting']}", f"algorithm.cache_dir={cache}",
            f"algorithm.data.synthetic.seed={seed}", f"trainer.seed={seed}", f"trainer.max_steps={args.steps}",
            "trainer.logging_steps=1", *beta]


def setup_record(cfg, args) -> dict:
    """What every run shares, read from the composed config so the JSON records what actually ran."""
    import transformers
    import trl

    config = OmegaConf.to_object(cfg)
    algo, t = config.algorithm, config.trainer
    s = algo.data.synthetic
    return {"recipe": RECIPE, "policy": POLICY, "references": REFERENCES, "seeds": args.seeds,
            "optimizer_steps": t.max_steps, "pairs_per_step": t.per_device_train_batch_size,
            "learning_rate": t.learning_rate, "lr_scheduler": t.lr_scheduler_type, "warmup_steps": t.warmup_steps,
            "beta": algo.beta, "length_normalize": algo.length_normalize, "validation_size": algo.validation_size,
            "bandit_pairs": algo.bandit_pairs, "prior": algo.prior, "window": algo.window,
            "data": {"num_train": s.num_train, "num_eval": s.num_eval, "max_length": algo.data.max_length,
                     "note": "num_train includes the validation pairs carved from it (the same for every method)"},
            "logging_steps": t.logging_steps, "final_weights": f"mean over the last {FINAL_SHARE:.0%} of the steps",
            "align_cache": os.environ["ALIGN_CACHE"], "machine": machine_info(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "trl": trl.__version__}}


# --------------------------------------------------------------------------------------------------------------------
# Helpers: quiet runs, log history, scoring against the truth


@contextlib.contextmanager
def quiet(log_path: Path):
    """Send a run's own output (per-step log dicts, progress bars) to a log file: the benchmark prints one line per
    run. Loggers that hold the original stream keep writing to the console."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def build_references() -> dict[str, float]:
    """Build every embedded model once (a no-op when cached), so no run's timing includes a build; seconds each."""
    from align.models import resolve_model_path

    seconds = {}
    for path in (POLICY, *REFERENCES):
        start = time.perf_counter()
        resolve_model_path(path)
        seconds[path] = round(time.perf_counter() - start, 3)
    return seconds


def held_out_rows(cfg) -> list[dict]:
    """The run's held-out pairs (truth columns included), minus pairs the run drops for length."""
    from align.data.preferences import load_reward_data
    from align.methods.multiref_dpo.trainer import tokenize_pairs_dropping_long
    from align.models import load_tokenizer

    algo = OmegaConf.to_object(cfg).algorithm
    _, rows, _ = load_reward_data(algo.data, "bradley_terry")
    kept, _, _ = tokenize_pairs_dropping_long(load_tokenizer(POLICY), rows, algo.data.max_length)
    return kept


def preference_accuracies(model_path: str, rows: list[dict], cache: Path) -> dict:
    """A model's length-normalised preference (l(y_w) > l(y_l)) on `rows`, against the pairs' labels and against the
    true rule mu_chosen > mu_rejected (pairs of equal mu have no true order and are skipped)."""
    from align.methods.multiref_dpo.references import reference_logps

    scored = reference_logps(ReferenceModelConfig(path=model_path), {"held_out": rows}, normalize=True,
                             batch_size=SCORING_BATCH, cache_dir=cache)["held_out"]
    prefers_chosen = scored.chosen > scored.rejected
    mu_chosen = torch.tensor([r["mu_chosen"] for r in rows], dtype=torch.float64)
    mu_rejected = torch.tensor([r["mu_rejected"] for r in rows], dtype=torch.float64)
    decided = mu_chosen != mu_rejected
    truth = (prefers_chosen == (mu_chosen > mu_rejected))[decided]
    return {"label_accuracy": float(prefers_chosen.double().mean()), "true_accuracy": float(truth.double().mean()),
            "true_pairs": int(decided.sum())}


def step_history(run_dir: str) -> list[dict]:
    """The training-step entries of a run's log history (those with a loss)."""
    history = json.loads((Path(run_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def train_runtime(run_dir: str) -> float:
    history = json.loads((Path(run_dir) / "trainer_state.json").read_text())["log_history"]
    return next(entry["train_runtime"] for entry in history if "train_runtime" in entry)


def final_weights(steps: list[dict], names: list[str]) -> dict[str, float]:
    """Mean logged weight of each reference over the last FINAL_SHARE of the steps (at least one)."""
    tail = steps[-max(1, round(len(steps) * FINAL_SHARE)):]
    return {name: statistics.fmean(e[f"weights/{name}"] for e in tail) for name in names}


def arm_shares(steps: list[dict], names: list[str]) -> dict:
    """Share of the steps that trained against each reference (one-hot strategies log `arm`, the reference's index,
    every step; swcw_onehot's first step has no arm yet: uniform weights)."""
    arms = [round(e["arm"]) for e in steps if "arm" in e]
    return {"steps": len(arms), "share": {name: arms.count(k) / len(arms) if arms else 0.0
                                          for k, name in enumerate(names)}}


def bandit_means(steps: list[dict], names: list[str]) -> dict[str, float]:
    """tsw's final posterior mean a / (a + b) of each arm."""
    return {name: steps[-1][f"bandit/mean_{name}"] for name in names if f"bandit/mean_{name}" in steps[-1]}


def ratio_stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), **spread(values)}


def write_report(report: dict, path: Path) -> None:
    """Atomic, so an interrupted benchmark leaves the previous complete file."""
    report["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(staging, path)


# --------------------------------------------------------------------------------------------------------------------
# Part 1: quality


def seed_baseline(seed: int, args: argparse.Namespace, cache: Path, workdir: Path) -> tuple[dict, list[dict]]:
    """(record, held-out rows) of a data seed: every reference's and the initial policy's accuracy on the held-out
    pairs, against the labels and the true rule: the references' known quality on this seed's data."""
    rows = held_out_rows(compose(overrides(methods()["mdpo+uniform"], seed, args, cache)))
    scoring = workdir / "scoring"
    with quiet(workdir / "logs" / f"baseline-seed{seed}.log"):
        models = {path: preference_accuracies(path, rows, scoring) for path in (POLICY, *REFERENCES)}
    return {"heldout_pairs": len(rows), "policy_before": models[POLICY],
            "references": {path: {"role": REFERENCES[path], **models[path]} for path in REFERENCES}}, rows


def quality_run(name: str, spec: dict, seed: int, args: argparse.Namespace, cache: Path, workdir: Path,
                rows: list[dict]) -> dict:
    """One `align.train` run of a method; its record."""
    label = f"{name.replace(':', '_')}-seed{seed}"  # a directory name, and a value Hydra parses without quotes
    cfg = compose([*overrides(spec, seed, args, cache), f"trainer.output_dir={workdir / 'runs' / label}"])
    names = [r.name for r in reference_models(OmegaConf.to_object(cfg).algorithm)]
    start = time.perf_counter()
    with quiet(workdir / "logs" / f"{label}.log"):
        summary = run(cfg)
        seconds = time.perf_counter() - start
        truth = preference_accuracies(summary["final_model"], rows, workdir / "scoring")
    steps_logged = step_history(summary["run_dir"])
    record = {"method": name, "seed": seed, "loss": spec["loss"], "weighting": spec["weighting"],
              "references": names,
              "heldout_accuracy_before": summary["eval_before"]["eval_preference_accuracy"],
              "heldout_accuracy_after": summary["eval_after"]["eval_preference_accuracy"],
              "heldout_margin_after": summary["eval_after"]["eval_margin"],
              "true_accuracy_after": truth["true_accuracy"],
              "final_weights": final_weights(steps_logged, names),
              "train_runtime_s": train_runtime(summary["run_dir"]), "run_s": seconds, "run_dir": summary["run_dir"]}
    if spec["weighting"] in ONE_HOT:
        record["arms"] = arm_shares(steps_logged, names)
    if spec["weighting"] == "tsw":
        record["bandit_posterior_means"] = bandit_means(steps_logged, names)
    return record


def aggregate(runs: list[dict]) -> dict:
    """Per method, over seeds: held-out accuracy after and its gain, true-rule accuracy, final weights, arm shares
    and training time."""
    by_method: dict[str, list[dict]] = {}
    for record in runs:
        by_method.setdefault(record["method"], []).append(record)
    table = {}
    for name, records in by_method.items():
        names = records[0]["references"]
        entry = {"seeds": [r["seed"] for r in records],
                 "heldout_accuracy_after": spread([r["heldout_accuracy_after"] for r in records]),
                 "heldout_gain": spread([r["heldout_accuracy_after"] - r["heldout_accuracy_before"] for r in records]),
                 "true_accuracy_after": spread([r["true_accuracy_after"] for r in records]),
                 "final_weights": {n: statistics.fmean(r["final_weights"][n] for r in records) for n in names},
                 "train_runtime_s": spread([r["train_runtime_s"] for r in records])}
        if "arms" in records[0]:
            entry["arm_share"] = {n: statistics.fmean(r["arms"]["share"][n] for r in records) for n in names}
        table[name] = entry
    return table


def part_quality(args, report: dict, save) -> None:
    table = select(methods(), args.methods)
    cache, workdir = args.workdir / "reference_logps", args.workdir
    quality = report["quality"] = {
        "meaning": {"heldout_accuracy": "eval_preference_accuracy: share of held-out pairs with l_theta(y_w) > "
                                        "l_theta(y_l) (length-normalised), y_w = the annotators' majority pick",
                    "true_accuracy": "the same against the true rule mu_chosen > mu_rejected, tied pairs skipped",
                    "train_runtime_s": "trainer.train() wall time (TRL's train_runtime): the held-out pass before "
                                       "training (eval_on_start) included, and for tsw its validation passes",
                    "run_s": "the whole align.train run: data, the log-prob cache (computed by the first run of a "
                             "seed that needs a reference, read by the rest), evaluation after, saving"},
        "methods_run": list(table), "seeds": {}, "runs": [], "methods": {}}
    total, done, started = len(args.seeds) * len(table), 0, time.perf_counter()
    for seed in args.seeds:
        baseline, rows = seed_baseline(seed, args, cache, workdir)
        quality["seeds"][str(seed)] = baseline
        refs = ", ".join(f"{p.split(':', 1)[1]} {v['true_accuracy']:.2f}" for p, v in baseline["references"].items())
        print(f"[bench] seed {seed}: true-rule accuracy of the references {refs}; policy "
              f"{baseline['policy_before']['true_accuracy']:.2f}", flush=True)
        save()
        for name, spec in table.items():
            record = quality_run(name, spec, seed, args, cache, workdir, rows)
            quality["runs"].append(record)
            quality["methods"] = aggregate(quality["runs"])
            save()
            done += 1
            weights = " ".join(f"{v:.2f}" for v in record["final_weights"].values())
            print(f"[bench] {done}/{total} seed {seed} {name}: held-out {record['heldout_accuracy_before']:.3f} -> "
                  f"{record['heldout_accuracy_after']:.3f}, true rule {record['true_accuracy_after']:.3f}, weights "
                  f"[{weights}], train {record['train_runtime_s']:.1f} s, run {record['run_s']:.1f} s "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Part 2: cost


@dataclasses.dataclass
class CostSetup:
    """Everything the timed trainers share: config, policy tokenizer, the training / validation pairs (policy token
    ids and rows) and each reference's cached log-probs of them."""

    config: object
    tokenizer: object
    names: list[str]
    ids: dict[str, list[dict]]
    rows: dict[str, list[dict]]
    scored: dict[str, list]


def cost_splits(cfg) -> tuple[object, dict[str, list[dict]], dict[str, list[dict]]]:
    """(policy tokenizer, split -> policy token ids, split -> rows): the training and validation pairs exactly as
    `align.train` forms them."""
    from align.data.preferences import load_reward_data
    from align.methods.multiref_dpo.trainer import carve_validation, tokenize_pairs_dropping_long
    from align.models import load_tokenizer

    algo = OmegaConf.to_object(cfg).algorithm
    tokenizer = load_tokenizer(POLICY)
    train_rows, _, _ = load_reward_data(algo.data, "bradley_terry")
    kept, ids, _ = tokenize_pairs_dropping_long(tokenizer, train_rows, algo.data.max_length)
    train_idx, val_idx = carve_validation(len(kept), algo.validation_size)
    splits = {"train": train_idx, "validation": val_idx}
    return (tokenizer, {name: [ids[i] for i in idx] for name, idx in splits.items()},
            {name: [kept[i] for i in idx] for name, idx in splits.items()})


def time_precompute(config, rows: dict[str, list[dict]], cache: Path) -> tuple[dict, dict[str, list]]:
    """Each reference scoring every split (one call, as a run does) into `cache`: first on an empty cache (a miss:
    the model is loaded and scores), then again (a hit). Returns (seconds per reference, split -> the references'
    ReferenceLogps)."""
    from align.methods.multiref_dpo.references import reference_logps

    algo = config.algorithm
    timings, scored = {}, {name: [] for name in rows}
    for reference in reference_models(algo):
        entry = timings[reference.path] = {}
        for phase in ("miss", "hit"):
            start = time.perf_counter()
            results = reference_logps(reference, rows, normalize=algo.length_normalize,
                                      batch_size=algo.precompute_batch_size, cache_dir=cache)
            entry[f"{phase}_s"] = time.perf_counter() - start
            if any(result.cache_hit != (phase == "hit") for result in results.values()):
                raise RuntimeError(f"{reference.path}: expected a cache {phase}; is {cache} empty?")
        for split, result in results.items():
            scored[split].append(result)
    return timings, scored


def build_trainer(variant: str, setup: CostSetup, output_dir: Path):
    """A fresh policy and trainer for one timed run. k1: DPO against the first reference's cached log-probs; k4 /
    k4_tsw: all four (mdpo, uniform / tsw); trl: TRL's DPOTrainer with its own precompute (the policy as its
    reference), done here, outside the timed part."""
    from transformers import set_seed

    from align.methods.common import training_arguments
    from align.methods.multiref_dpo.trainer import build_multiref_dpo_trainer, pairs_dataset
    from align.models import load_causal_lm

    config = setup.config
    set_seed(config.trainer.seed)
    model = load_causal_lm(POLICY, dtype=config.model.dtype)
    common = training_arguments(config, output_dir, [], f"cost-{variant}")
    common.update(save_strategy="no", disable_tqdm=True)
    if variant == "trl":
        return trl_trainer(model, setup, common)
    k = 1 if variant == "k1" else len(setup.names)
    algo = dataclasses.replace(config.algorithm, loss="mdpo", weighting="tsw" if variant == "k4_tsw" else "uniform")
    train = pairs_dataset(setup.ids["train"], setup.scored["train"][:k])
    validation = pairs_dataset(setup.ids["validation"], setup.scored["validation"]) if variant == "k4_tsw" else None
    return build_multiref_dpo_trainer(model, setup.tokenizer, train, algo, setup.names[:k], common,
                                      validation=validation)


def trl_trainer(model, setup: CostSetup, common: dict):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    algo = setup.config.algorithm
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                                 for r in setup.rows["train"]])
    args = DPOConfig(**common, beta=algo.beta, max_length=None, precompute_ref_log_probs=True,
                     precompute_ref_batch_size=algo.precompute_batch_size, loss_type=["sigmoid_norm"])
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=setup.tokenizer)


def timed_train(variant: str, setup: CostSetup, workdir: Path) -> dict:
    """Build (untimed), then time `trainer.train()` alone; the per-step times come from overhead.py's StepClock."""
    start = time.perf_counter()
    trainer = build_trainer(variant, setup, workdir / f"cost-{variant}")
    built = time.perf_counter() - start
    clock = StepClock()
    clock.attach(trainer)
    gc.collect()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = clock.step_times()
    del trainer
    gc.collect()
    return {"train_s": seconds, "step_median_s": statistics.median(steps), "step_mean_s": statistics.fmean(steps),
            "steps": len(steps), "build_s": built}


def cost_ratios(rounds: list[dict]) -> dict:
    """Per round, then median / mean / min / max over rounds: train() time and median step time of each comparison."""
    pairs = {"k4_vs_k1": ("k4", "k1"), "trl_vs_k1": ("trl", "k1"), "k4_vs_trl": ("k4", "trl"),
             "tsw_vs_uniform_k4": ("k4_tsw", "k4")}
    ratios = {}
    for name, (a, b) in pairs.items():
        present = [r for r in rounds if a in r and b in r]
        if present:
            ratios[name] = {key: ratio_stats([r[a][key] / r[b][key] for r in present])
                            for key in ("train_s", "step_median_s")}
    return ratios


def cost_headline(cost: dict) -> dict:
    """The numbers the issue asks for, from the rounds so far."""
    ratios, rounds = cost["training"]["ratios"], cost["training"]["rounds"]
    k4_train = statistics.median(r["k4"]["train_s"] for r in rounds)
    k4_vs_k1 = ratios["k4_vs_k1"]["train_s"]
    return {"k4_vs_k1_train": {key: k4_vs_k1[key] for key in ("median", "min", "max")},
            "k4_vs_k1_meets_target": k4_vs_k1["median"] <= TARGET_K4_VS_K1, "target": TARGET_K4_VS_K1,
            "trl_vs_k1_train_median": ratios["trl_vs_k1"]["train_s"]["median"],
            "tsw_vs_uniform_step_median": ratios["tsw_vs_uniform_k4"]["step_median_s"]["median"],
            "precompute_4_references_miss_s": cost["precompute"]["total_miss_s"],
            "precompute_4_references_hit_s": cost["precompute"]["total_hit_s"],
            "k4_train_median_s": k4_train,
            "precompute_miss_vs_k4_train": cost["precompute"]["total_miss_s"] / k4_train}


def part_cost(args, report: dict, save) -> None:
    seed = args.seeds[0]
    # The recipe's logging interval here: the quality part logs every step only to read the arms.
    cfg = compose([*overrides(methods()["mdpo+uniform"], seed, args, args.workdir / "cost-cache"),
                   "trainer.logging_steps=5"])
    config = OmegaConf.to_object(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(COST_THREADS)
    try:
        tokenizer, ids, rows = cost_splits(cfg)
        cost = report["cost"] = {
            "threads": COST_THREADS,
            "note": f"torch.set_num_threads({COST_THREADS}) for the whole cost part (stable timings on a shared "
                    f"2-core machine); data seed {seed}",
            "pairs": {split: len(split_rows) for split, split_rows in rows.items()}}
        with quiet(args.workdir / "logs" / "cost.log"):
            timings, scored = time_precompute(config, rows, args.workdir / "cost-cache")
        cost["precompute"] = {
            "meaning": "seconds of one reference_logps call per reference on the training + validation pairs: "
                       "'miss' with an empty cache (tokenize with the reference's template, load it, score, write), "
                       "'hit' reading the cache entries (tokenize + fingerprint + read)",
            "per_reference": timings,
            "total_miss_s": sum(t["miss_s"] for t in timings.values()),
            "total_hit_s": sum(t["hit_s"] for t in timings.values())}
        print(f"[bench] cost: precompute of {len(timings)} references, {cost['precompute']['total_miss_s']:.1f} s "
              f"(cache miss) / {cost['precompute']['total_hit_s']:.1f} s (hit)", flush=True)
        save()
        setup = CostSetup(config, tokenizer, [r.name for r in reference_models(config.algorithm)], ids, rows, scored)
        time_training(args, setup, cost, save)
    finally:
        torch.set_num_threads(threads)


def time_training(args, setup: CostSetup, cost: dict, save) -> None:
    """Rounds of k1, k4, trl, k4_tsw, the order reversed every other round so drift cancels."""
    variants = ["k1", "k4", "trl", "k4_tsw"]
    t = setup.config.trainer
    training = cost["training"] = {
        "meaning": "seconds of trainer.train() alone (model load, trainer build and TRL's own precompute outside "
                   "it), and the median optimizer-step time (first on_step_begin to last on_step_end callback); "
                   "ratios per round, then median / mean / min / max over rounds",
        "variants": {"k1": f"MultiRefDPOTrainer, K = 1 ({setup.names[0]}), mdpo, uniform",
                     "k4": "MultiRefDPOTrainer, K = 4, mdpo, uniform",
                     "trl": "trl.DPOTrainer, precompute_ref_log_probs=True, loss_type=['sigmoid_norm'], the policy "
                            "as its own reference; build_s includes its tokenization and precompute",
                     "k4_tsw": f"MultiRefDPOTrainer, K = 4, mdpo, tsw ({setup.config.algorithm.bandit_pairs} "
                               f"validation pairs scored before and after every step)"},
        "optimizer_steps": t.max_steps, "pairs_per_step": t.per_device_train_batch_size,
        "logging_steps": t.logging_steps, "target_k4_vs_k1": TARGET_K4_VS_K1, "rounds": []}
    for round_index in range(args.pairs):
        order = variants if round_index % 2 == 0 else variants[::-1]
        result = {}
        with quiet(args.workdir / "logs" / "cost.log"):
            for variant in order:
                result[variant] = timed_train(variant, setup, args.workdir)
        training["rounds"].append(result)
        training["ratios"] = cost_ratios(training["rounds"])
        cost["headline"] = cost_headline(cost)
        k4_vs_k1 = cost["headline"]["k4_vs_k1_train"]["median"]
        save()
        times = ", ".join(f"{v} {result[v]['train_s']:.2f} s" for v in variants)
        print(f"[bench] cost round {round_index + 1}/{args.pairs}: train() {times}; K4/K1 so far {k4_vs_k1:.3f}",
              flush=True)


# --------------------------------------------------------------------------------------------------------------------


def print_summary(report: dict) -> None:
    """Per method: held-out accuracy after (mean, min-max over seeds), true-rule accuracy, final weights; then the
    cost headline."""
    methods_table = report.get("quality", {}).get("methods", {})
    if methods_table:
        print("[bench] method: held-out after mean (min-max) | true rule | final weights (" +
              " ".join(reference_names().values()) + ")")
    for name, entry in methods_table.items():
        acc, weights = entry["heldout_accuracy_after"], " ".join(f"{w:.2f}" for w in entry["final_weights"].values())
        print(f"[bench] {name}: {acc['mean']:.3f} ({acc['min']:.3f}-{acc['max']:.3f}) | "
              f"{entry['true_accuracy_after']['mean']:.3f} | {weights}", flush=True)
    if "headline" in report.get("cost", {}):
        print(f"[bench] cost: {json.dumps(report['cost']['headline'])}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["quality,cost"],
                        help="quality and/or cost (comma- or space-separated)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="trainer and data seeds (cost: the first)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of every run (the recipe's)")
    parser.add_argument("--methods", nargs="+", help="quality: only these methods (names or fnmatch patterns, e.g. "
                                                     "'single:*' 'mdpo+*' '*+tsw')")
    parser.add_argument("--beta", type=float, help="algorithm.beta of every run (default: the recipe's, 5)")
    parser.add_argument("--pairs", type=int, default=5, help="cost: rounds of the timed trainers")
    parser.add_argument("--threads", type=int, help="quality: torch.set_num_threads (default: torch's); 1 is far "
                                                    "less sensitive to other busy processes on a 2-core machine "
                                                    "(the cost part always uses 1)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "multiref_dpo.json")
    args = parser.parse_args(argv)
    args.parts = [p for item in args.parts for p in item.split(",") if p]
    unknown = set(args.parts) - {"quality", "cost"}
    if unknown or not args.parts:
        parser.error(f"--parts takes quality and/or cost, got {', '.join(sorted(unknown)) or 'nothing'}")
    if args.steps < 1 or args.pairs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--steps, --pairs and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.workdir = Path(tempfile.mkdtemp(prefix="align-multiref-bench-"))
    if args.threads:
        torch.set_num_threads(args.threads)
    builds = build_references()
    base = compose(overrides(methods()["mdpo+uniform"], args.seeds[0], args, args.workdir / "reference_logps"))
    report = {"benchmark": "multi-reference DPO (MRPO / MDPO x 7 weightings) vs single-reference DPO, embedded "
                           "known-truth preferences, references of known quality; and the cost of K = 4 references",
              "setup": {**setup_record(base, args), "parts": args.parts, "workdir": str(args.workdir),
                        "embedded_model_build_s": builds, "quality_threads": torch.get_num_threads()}}
    print(f"[bench] workdir {args.workdir}; writing {args.out}", flush=True)

    def save() -> None:
        write_report(report, args.out)

    if "quality" in args.parts:
        part_quality(args, report, save)
    if "cost" in args.parts:
        part_cost(args, report, save)
    save()
    print_summary(report)
    print(f"[bench] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
