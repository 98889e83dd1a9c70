"""Inference-time decoding on held-out arithmetic: accuracy against generated tokens per prompt.

    python benchmarks/decode.py                          # warm start once, then every method x 3 seeds
    python benchmarks/decode.py --init runs/x/warm_start/final --prompts 40 --seeds 1 2 3 --ns 2 4 8 16
    python benchmarks/decode.py --recipe grpo-arithmetic-smollm2-135m --init <real-model warm start> \
        --grpo <GRPO run dir> --ns 2 4 8 --seeds 1 2 --out benchmarks/results/decode_smollm2.json

The policy is the warm start of `--recipe` (default `grpo-arithmetic-tiny`, the quickstart's starting point; the
real embedded chat model with `grpo-arithmetic-smollm2-135m`); the prompts are the first `--prompts` of that recipe's
held-out split; the reward is the boxed_match verifier (the gold answer: an oracle, reported as such). Methods:
greedy, sampling, best-of-N, SMC with the final-only potential (soft best-of-N with resampling), SMC with lookahead
rollouts, and power sampling (no reward), each N in `--ns`. `--reward-model <checkpoint>` (or `train`: a Bradley-Terry
model trained here from the warm start on the policy's own verifier-labelled samples plus synthetic step pairs, see
`reward_training_pairs`) adds best-of-N, SMC final-only and SMC with the prefix twist under that learned reward,
calibrated on policy samples; accuracy is still the verifier's.
Per (method, N): accuracy and generated tokens per prompt (mean, min, max over seeds), reward calls per prompt.
`--grpo <run dir>` adds that GRPO run's final model (started from the same warm start) decoded greedily on the same
prompts, with its training compute from its trainer_state.json: the tokens it generated and trained on, in all and
spread over the prompts decoded here.
Writes --out (JSON) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from align.data import load_splits  # noqa: E402
from align.data.synthetic import arithmetic  # noqa: E402
from align.decode.cli import load_policy, reward_source  # noqa: E402
from align.decode.methods import calibrated, calibration, decode  # noqa: E402
from align.decode.particles import Settings  # noqa: E402
from align.generation import Decoding, chat_prompt_ids, generate  # noqa: E402
from align.train import run  # noqa: E402
from benchmarks.common import spread  # noqa: E402
from tests.conftest import compose  # noqa: E402


def warm_start(recipe: str, workdir: Path) -> str:
    """The recipe's warm start (plus the one GRPO step `run` always takes); returns the checkpoint path."""
    out = workdir / "warm-start"
    run(compose([f"recipe={recipe}", f"trainer.output_dir={out}", "trainer.max_steps=1", "eval.enabled=false"]))
    return str(out / "warm_start" / "final")


def held_out_problems(recipe: str, limit: int) -> tuple[list, list, dict]:
    """(prompts, answers, data settings) of the first `limit` rows of the recipe's held-out split: the problems its
    GRPO runs measure held-out accuracy on."""
    data = compose([f"recipe={recipe}"]).data
    _, held_out = load_splits(data)
    held_out = held_out.select(range(min(limit, len(held_out))))
    return list(held_out["prompt"]), list(held_out["answer"]), {"task": data.synthetic.task,
                                                                 "digits": data.synthetic.digits}


def grpo_training_cost(run_dir: Path) -> dict:
    """What a GRPO run spent on training, from its trainer_state.json: optimizer steps, completion tokens generated
    and prompt + completion tokens trained on (summed over its logged steps), and wall seconds."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    steps = [e for e in state["log_history"] if "timing/step_s" in e]
    if len(steps) != state["global_step"]:  # the sums below need one logged entry per optimizer step
        raise SystemExit(f"{run_dir}: {len(steps)} logged steps for {state['global_step']} optimizer steps; the "
                         f"training cost needs trainer.logging_steps=1")
    return {"run": str(run_dir), "optimizer_steps": len(steps),
            "generated_tokens": round(sum(e["completions/mean_length"] * state["train_batch_size"] for e in steps)),
            "trained_tokens": round(sum(e["perf/tokens_per_s"] * e["timing/step_s"] for e in steps)),
            "train_seconds": round(sum(e["timing/step_s"] for e in steps), 1)}


def miscalculated(solution: str, rng: random.Random) -> str:
    """`solution` with one digit of its worked steps or answer replaced by another digit: a slip of the pen."""
    positions = [i for i, ch in enumerate(solution) if ch.isdigit()]
    i = rng.choice(positions)
    return solution[:i] + rng.choice([d for d in "0123456789" if d != solution[i]]) + solution[i + 1:]


def step_pairs(good: str, bad: str) -> list[tuple[str, str]]:
    """(chosen, rejected) for the full texts and cut after each worked step where they differ (each cut ends with
    the step separator, so the rejected prefix has committed to its mistake)."""
    good_steps, bad_steps = good.split("; "), bad.split("; ")
    cuts = [("; ".join(good_steps[:k]) + ";", "; ".join(bad_steps[:k]) + ";")
            for k in range(1, min(len(good_steps), len(bad_steps)))]
    return [(chosen, rejected) for chosen, rejected in [*cuts, (good, bad)] if chosen != rejected]


def reward_model_pairs(recipe: str, num_problems: int, exclude: set[str]) -> list[dict]:
    """Synthetic preference pairs that teach scoring partial solutions, over problems of the recipe's kind (none of
    them in `exclude`): the correct worked solution over the one of a teacher who forgets carries (the warm start's
    own mistake, where there is a carry) and over one with a slipped digit, each in full and cut after every step."""
    data = compose([f"recipe={recipe}"]).data.synthetic
    rows = arithmetic(num_problems, digits=data.digits, operators=tuple(data.operators), seed=data.seed + 2,
                      sloppy_fraction=1.0, exclude=exclude)
    rng = random.Random(data.seed + 2)
    return [{"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
            for row in rows
            for bad in (row["demonstration"], miscalculated(row["solution"], rng))
            for chosen, rejected in step_pairs(row["solution"], bad)]


def on_policy_pairs(model, tokenizer, prompts: list, answers: list, verifier, samples: int, max_new_tokens: int,
                    seed: int) -> list[dict]:
    """Outcome pairs from the policy's own samples (`samples` per prompt at temperature 1), labelled by `verifier`:
    per prompt with both kinds, up to two (correct, incorrect) pairs, each side drawn at random (with replacement)
    from the prompt's distinct completions of that kind. These carry the mistakes the policy actually makes, which
    the synthetic ones only imitate."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for start in range(0, len(prompts), 32):
        batch, gold = prompts[start:start + 32], answers[start:start + 32]
        out = generate(model, tokenizer, chat_prompt_ids(tokenizer, batch),
                       Decoding(max_new_tokens, temperature=1.0, num_return_sequences=samples), seed=generator)
        texts = out.texts(tokenizer)
        for i, (prompt, answer) in enumerate(zip(batch, gold)):
            group = sorted(set(texts[i * samples:(i + 1) * samples]))
            scores = verifier(prompts=[prompt] * len(group), completions=group, answer=[answer] * len(group))
            good = [t for t, r in zip(group, scores) if r == 1]
            bad = [t for t, r in zip(group, scores) if r != 1]
            for _ in range(min(2, len(good), len(bad))):
                pairs.append({"prompt": prompt, "chosen": rng.choice(good), "rejected": rng.choice(bad)})
    return pairs


def train_reward_model(recipe: str, init: str, workdir: Path, pairs: list[dict], steps: int) -> str:
    """A Bradley-Terry reward model (recipe reward-bt-prefs-tiny's settings) trained from the policy's own warm
    start `init` (its scalar head new: the usual start from the SFT model, which already reads the digits) on
    `pairs`, the last 200 held out; returns its checkpoint path."""
    data = workdir / "reward-pairs.jsonl"
    data.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    out = workdir / "reward-model"
    run(compose(["recipe=reward-bt-prefs-tiny", f"model.path={init}", f"algorithm.data.source={data}",
                 "algorithm.data.eval_size=200", f"trainer.max_steps={steps}", f"trainer.output_dir={out}"]))
    return str(out / "final")


def ranking_auc(scores: list[float], correct: list[float]) -> float | None:
    """P(score of a correct completion > score of an incorrect one), ties half: how well a reward ranks the
    policy's own samples (None without both kinds)."""
    good = [s for s, c in zip(scores, correct) if c == 1]
    bad = [s for s, c in zip(scores, correct) if c != 1]
    if not good or not bad:
        return None
    return sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / (len(good) * len(bad))


def configurations(ns: list[int], block: int, max_new_tokens: int, reward_model: bool
                   ) -> list[tuple[str, int, str, Settings, str]]:
    """(label, N, method, settings, potential) for every point of the curve; the potential is the verifier or the
    trained reward model (`reward_model`: also the points that use it)."""
    base = Settings(block=block, max_new_tokens=max_new_tokens, lam=4.0, kappa=0.5)

    def smc(n: int, variant: str, **extra) -> Settings:
        return Settings(n=n, block=block, max_new_tokens=max_new_tokens, variant=variant, lam=4.0,
                        selection="argmax_reward", **extra)

    best_of = {n: Settings(n=n, block=block, max_new_tokens=max_new_tokens, selection="argmax_reward") for n in ns}
    points = [("greedy", 1, "greedy", base, "verifier"), ("sample", 1, "sample", base, "verifier")]
    for n in ns:
        points += [("best_of_n", n, "best_of_n", best_of[n], "verifier"),
                   ("smc_final", n, "smc", smc(n, "final"), "verifier"),
                   ("smc_lookahead", n, "smc", smc(n, "lookahead", rollouts=2), "verifier"),
                   ("power", n, "power", Settings(n=n, block=block, max_new_tokens=max_new_tokens, alpha=4.0,
                                                  tau=0.25, lam=0.0), "verifier")]
        if reward_model:
            points += [("best_of_n_rm", n, "best_of_n", best_of[n], "reward_model"),
                       ("smc_final_rm", n, "smc", smc(n, "final"), "reward_model"),
                       ("smc_prefix_rm", n, "smc", smc(n, "prefix"), "reward_model")]
    return points


def measure(model, tokenizer, prompts, answers, source, verifier, method: str, settings: Settings,
            seed: int) -> dict:
    """Decode every prompt with `method` under the potential `source`; accuracy by `verifier`, cost per prompt."""
    start = time.perf_counter()
    rows = decode(model, tokenizer, prompts, answers, method, settings, source=source, batch_size=len(prompts),
                  seed=seed)
    scores = verifier(prompts=prompts, completions=[r["completion"] for r in rows], answer=answers)
    return {"accuracy": sum(scores) / len(scores),
            "generated_tokens": sum(r["generated_tokens"] for r in rows) / len(rows),
            "reward_calls": sum(r["reward_calls"] for r in rows) / len(rows),
            "seconds": time.perf_counter() - start}


def plot(summary: dict, path: Path, recipe: str, grpo: dict | None) -> None:
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
    if grpo is not None:  # training compute is paid once, not per prompt: a marker at its greedy decoding cost
        ax.scatter([grpo["generated_tokens"]], [grpo["accuracy"]], marker="*", s=160, color="black", zorder=3,
                   label=f"GRPO greedy ({grpo['training']['optimizer_steps']} steps, "
                         f"{grpo['training']['generated_tokens']} training tokens)")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per prompt (log)")
    ax.set_ylabel("held-out accuracy (boxed_match)")
    ax.set_title(f"Decoding the warm start of {recipe}:\naccuracy vs compute (mean, min-max over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def reward_training_pairs(args: argparse.Namespace, model, tokenizer, verifier) -> list[dict]:
    """The reward model's training pairs: outcome pairs of the policy's samples on the recipe's training problems,
    then the synthetic step pairs (shuffled together; none from the held-out problems)."""
    data = compose([f"recipe={args.recipe}"]).data
    train, held_out = load_splits(data)
    train = train.select(range(min(1000, len(train))))
    pairs = on_policy_pairs(model, tokenizer, list(train["prompt"]), list(train["answer"]), verifier, 8,
                            args.max_new_tokens, seed=0)
    exclude = {m[-1]["content"] for m in held_out["prompt"]}
    pairs += reward_model_pairs(args.recipe, 500, exclude)
    random.Random(0).shuffle(pairs)
    print(f"[bench] reward model: {len(pairs)} training pairs", flush=True)
    return pairs


def reward_ranking(model, tokenizer, prompts, answers, source, verifier, max_new_tokens: int) -> dict:
    """How the reward ranks 8 policy samples per held-out prompt (seed 12345), by `ranking_auc`: within each prompt
    (what best-of-N needs), averaged over the prompts with both correct and incorrect samples, and pooled over all
    prompts (a correct completion of one problem against a wrong one of another)."""
    samples = 8
    out = generate(model, tokenizer, chat_prompt_ids(tokenizer, prompts),
                   Decoding(max_new_tokens, temperature=1.0, num_return_sequences=samples), seed=12345)
    texts = out.texts(tokenizer)
    expanded = [p for p in prompts for _ in range(samples)]
    gold = [a for a in answers for _ in range(samples)]
    scores = source(prompts=expanded, completions=texts)
    correct = verifier(prompts=expanded, completions=texts, answer=gold)
    within = [auc for i in range(0, len(texts), samples)
              if (auc := ranking_auc(scores[i:i + samples], correct[i:i + samples])) is not None]
    return {"within_prompt": sum(within) / len(within) if within else None, "prompts_with_both": len(within),
            "pooled": ranking_auc(scores, correct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="grpo-arithmetic-tiny",
                        help="whose warm start decodes, on whose held-out problems")
    parser.add_argument("--init", help="warm-started checkpoint (default: run the recipe's warm start)")
    parser.add_argument("--grpo", type=Path, help="a GRPO run directory of the recipe, started from --init: its final "
                                                  "model decoded greedily, with its training compute")
    parser.add_argument("--reward-model", help="a trained reward model's checkpoint: adds best-of-N and SMC (final, "
                                               "prefix) under it, calibrated on policy samples ('train': train one)")
    parser.add_argument("--reward-model-steps", type=int, default=250, help="its training steps ('train')")
    parser.add_argument("--calibrate", type=int, default=64, help="policy samples that calibrate the reward model")
    parser.add_argument("--methods", nargs="+", help="measure only these labels (default: all)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode.json"))
    parser.add_argument("--resume", action="store_true", help="keep the points already in --out, measure the rest")
    args = parser.parse_args()
    labels = {label for label, *_ in configurations(args.ns, args.block, args.max_new_tokens, reward_model=True)}
    if args.methods and not set(args.methods) <= labels:
        parser.error(f"unknown --methods {sorted(set(args.methods) - labels)}; choose from {sorted(labels)}")
    if args.reward_model == "train" and compose([f"recipe={args.recipe}"]).data.synthetic.task != "arithmetic":
        parser.error("--reward-model train builds its pairs from the plain arithmetic task (prompts 'Compute a+b.'); "
                     f"{args.recipe} uses another task: give a trained reward model's checkpoint instead")

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="align-decode-bench-"))
    init = args.init or warm_start(args.recipe, workdir)
    prompts, answers, data = held_out_problems(args.recipe, args.prompts)
    verifier = reward_source("boxed_match", {})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if args.resume and out.exists() else {}
    runs: dict[str, list] = previous.get("runs", {})
    extra = {key: previous[key] for key in ("grpo", "reward_model") if key in previous}
    base = Settings(block=args.block, max_new_tokens=args.max_new_tokens)
    if args.grpo and extra.get("grpo", {}).get("training", {}).get("run") != str(args.grpo):
        grpo_model, grpo_tokenizer = load_policy(str(args.grpo / "final"))
        greedy = measure(grpo_model, grpo_tokenizer, prompts, answers, verifier, verifier, "greedy", base, seed=0)
        training = grpo_training_cost(args.grpo)
        training["generated_tokens_per_prompt_decoded"] = training["generated_tokens"] / len(prompts)
        extra["grpo"] = {**greedy, "training": training}
        del grpo_model
        print(f"[bench] GRPO greedy: accuracy {greedy['accuracy']:.3f}, trained on {training['generated_tokens']} "
              f"generated tokens", flush=True)
    model, tokenizer = load_policy(init)
    potentials = {"verifier": verifier}
    if args.reward_model:
        path = args.reward_model
        trained = None
        if "reward_model" in extra and path not in ("train", extra["reward_model"]["path"]):
            raise SystemExit(f"--resume: the points in {out} were measured under the reward model "
                             f"{extra['reward_model']['path']}, not {path}; give that one or another --out")
        if path == "train" and "reward_model" in extra:  # --resume: its points were measured under that model
            path, trained = extra["reward_model"]["path"], extra["reward_model"]["trained_here"]
        elif path == "train":
            pairs = reward_training_pairs(args, model, tokenizer, verifier)
            path = train_reward_model(args.recipe, init, workdir, pairs, args.reward_model_steps)
            trained = {"pairs": len(pairs), "steps": args.reward_model_steps}
        raw = reward_source("reward_model", {"path": path})
        mu, sigma = calibration(model, tokenizer, prompts, answers, raw, args.calibrate, base, seed=0)
        potentials["reward_model"] = calibrated(raw, mu, sigma)
        extra["reward_model"] = {"path": path, "trained_here": trained,
                                 "calibration": {"mu": mu, "sigma": sigma, "samples": args.calibrate},
                                 "ranking_auc": reward_ranking(model, tokenizer, prompts, answers, raw, verifier,
                                                               args.max_new_tokens)}
    for label, n, method, settings, potential in configurations(args.ns, args.block, args.max_new_tokens,
                                                                  reward_model=args.reward_model is not None):
        key = f"{label}@{n}"
        if key in runs or args.methods and label not in args.methods:  # in runs: measured before (--resume)
            continue
        runs[key] = [{"seed": seed, **measure(model, tokenizer, prompts, answers, potentials[potential], verifier,
                                              method, settings, seed)} for seed in args.seeds]
        print(f"[bench] {key}: accuracy {[r['accuracy'] for r in runs[key]]}, "
              f"{runs[key][0]['generated_tokens']:.0f} tokens/prompt, {runs[key][0]['seconds']:.1f} s", flush=True)
        write_report(out, args, init, data, runs, extra)
    summary = write_report(out, args, init, data, runs, extra)
    plot(summary, out.with_suffix(".png"), args.recipe, extra.get("grpo"))
    print(json.dumps({k: [(p["n"], round(p["accuracy"]["mean"], 3), round(p["generated_tokens"]["mean"]))
                          for p in v] for k, v in summary.items()}, indent=1))


def write_report(out: Path, args: argparse.Namespace, init: str, data: dict, runs: dict, extra: dict) -> dict:
    """Write the JSON report of the runs so far (after every point, so an interrupted run keeps what it measured);
    returns its summary."""
    summary: dict[str, list] = {}
    for key, results in runs.items():
        label, n = key.split("@")
        summary.setdefault(label, []).append({"n": int(n), **{m: spread([r[m] for r in results]) for m in
                                                             ("accuracy", "generated_tokens", "reward_calls")}})
    report = {"benchmark": f"decoding methods on held-out {data['digits']}-digit addition ({data['task']}), the warm "
                           f"start of {args.recipe}, boxed_match verifier (gold answer: an oracle)",
              "setup": {"recipe": args.recipe, "init": init, "prompts": args.prompts, "data": data,
                        "seeds": args.seeds,
                        "ns": args.ns, "block": args.block, "max_new_tokens": args.max_new_tokens, "lambda": 4.0,
                        "kappa": 0.5, "lookahead_rollouts": 2, "power": {"alpha": 4.0, "tau": 0.25},
                        "selection": "argmax_reward (sample for power)", "threads": args.threads},
              **extra, "summary": summary, "runs": runs}
    out.write_text(json.dumps(report, indent=2))
    return summary


if __name__ == "__main__":
    main()
