"""`python -m align.decode`: decode prompts with greedy, sampling, best-of-N, reward-guided SMC or power sampling
and write one JSONL row per prompt.

    python -m align.decode --method smc --variant prefix --reward reward_model \\
        --reward-kwarg path=runs/rm/final --reward-kwarg quantile=0.25 --n 8 --block 32 --out smc.jsonl
    python -m align.decode --method best_of_n --reward boxed_match --n 8 --out bon.jsonl
    python -m align.decode --method power --out power.jsonl          (alpha 4, tau 0.25 by default)
    python -m align.gate --baseline bon.jsonl --candidate smc.jsonl  (item by item)

Prompts: 'synthetic' (the embedded arithmetic task's held-out split) or a .jsonl / .json / .parquet / .csv file
(`--prompt-column`), the first `--num-prompts`. Reward: any reward source by name as in `reward=...` configs (a
built-in verifier, `reward_model` with its path and quantile, or `package.module:function`), with
`--reward-kwarg KEY=VALUE` (repeatable; values read as JSON when they parse). Verifiers score final answers only, so
the prefix variant needs a reward model or your own function; `--variant final` (soft best-of-N) or `lookahead`
work with any source. Each row is scored for the gate by `--metric` (default boxed_match when the prompts have
answers, else the reward). Every setting is checked before any model loads: a problem prints one line
`align: error: ...` and exits with code 2. See docs/decode.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from align.config import DataConfig, model_path_problem, reward_source_problem
from align.console import phase_progress, quiet_dependencies
from align.decode.io import DecodeError, Parser, check_out, load_prompts, run_cli, write_jsonl

METHODS = ("greedy", "sample", "best_of_n", "smc", "power")  # align.decode.methods.METHODS, without importing torch
VARIANTS = ("prefix", "lookahead", "final")
SELECTIONS = ("sample", "argmax_weight", "argmax_reward", "vote")
FINAL_ONLY = ("exact_match", "numeric_match", "boxed_match", "format_boxed")  # the built-in verifiers
POWER_DEFAULTS = {"alpha": 4.0, "tau": 0.25}


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m align.decode", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--method", default="smc", help=f"one of {', '.join(METHODS)} (default smc)")
    add("--variant", default="prefix", help=f"SMC twist: {', '.join(VARIANTS)} (default prefix)")
    add("--policy", default="embedded:tiny", help="causal LM: embedded:tiny, embedded:smollm2-135m-instruct, a "
                                                   "run's final/ or a hub name")
    add("--prompts", default="synthetic", help="'synthetic' or a .jsonl/.json/.parquet/.csv file")
    add("--prompt-column", default="prompt", help="column holding the prompts in a file")
    add("--num-prompts", type=int, default=None, help="keep the first K prompts (default: all)")
    add("--reward", default=None, help="reward source name (a verifier, reward_model, package.module:function)")
    add("--reward-kwarg", action="append", default=[], metavar="KEY=VALUE", help="reward source option (repeat)")
    add("--metric", default=None, help="reward source that scores each chosen answer for the gate")
    add("--n", type=int, default=8, help="particles (samples) per prompt")
    add("--block", type=int, default=32, help="tokens per SMC block B")
    add("--max-new-tokens", type=int, default=256)
    add("--ess-threshold", type=float, default=0.5, help="resample when ESS < this x N (kappa; 0 never)")
    add("--resampling", default="systematic", help="systematic or multinomial")
    add("--mh-steps", type=int, default=1, help="MH rejuvenation moves per duplicate after a resample (prefix)")
    add("--final-moves", type=int, default=0, help="MH moves of every final particle towards pi (smc, power)")
    add("--rollouts", type=int, default=2, help="lookahead rollouts M per particle and boundary")
    add("--lam", type=float, default=4.0, help="lambda: reward tempering, pi ∝ p^alpha exp(lambda R)")
    add("--calibrate", type=int, default=0, metavar="K", help="map the reward to sigmoid((r - mu) / sigma), mu and "
                                                             "sigma from K samples of the policy (default 0: raw)")
    add("--alpha", type=float, default=None, help="power on p (default 1; power method 4)")
    add("--tau", type=float, default=None, help="proposal temperature (default 1; power method 1/alpha)")
    add("--selection", default=None, help=f"{', '.join(SELECTIONS)} (default: argmax_reward for best_of_n, else "
                                          f"sample)")
    add("--batch-size", type=int, default=4, help="prompts per engine run (x n particles per generate call)")
    add("--seed", type=int, default=0)
    add("--out", required=True, help="output .jsonl, written atomically at the end")
    add("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def reward_kwargs(pairs: list[str]) -> dict:
    """{KEY: VALUE} from KEY=VALUE strings, VALUE read as JSON when it parses (numbers, true, null), else a string."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DecodeError(f"--reward-kwarg must be KEY=VALUE; got {pair!r}.")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (("--n", args.n, 1), ("--block", args.block, 1), ("--max-new-tokens",
                             args.max_new_tokens, 1), ("--batch-size", args.batch_size, 1),
                             ("--rollouts", args.rollouts, 1), ("--mh-steps", args.mh_steps, 0),
                             ("--calibrate", args.calibrate, 0), ("--final-moves", args.final_moves, 0)):
        if value < low:
            raise DecodeError(f"{flag} must be >= {low}; got {value}.")
    if args.calibrate == 1:
        raise DecodeError("--calibrate needs at least 2 samples for a standard deviation (or 0: off); got 1.")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise DecodeError(f"--num-prompts must be >= 1; got {args.num_prompts}.")
    if not 0 <= args.ess_threshold <= 1:
        raise DecodeError(f"--ess-threshold must lie in [0, 1]; got {args.ess_threshold}.")
    if not args.lam >= 0:
        raise DecodeError(f"--lam must be >= 0; got {args.lam}.")
    for flag, value in (("--alpha", args.alpha), ("--tau", args.tau)):
        if value is not None and not value > 0:
            raise DecodeError(f"{flag} must be > 0; got {value}.")


def _check_choices(args: argparse.Namespace) -> None:
    for flag, value, choices in (("--method", args.method, METHODS), ("--variant", args.variant, VARIANTS),
                                 ("--resampling", args.resampling, ("systematic", "multinomial")),
                                 ("--selection", args.selection or "sample", SELECTIONS)):
        if value not in choices:
            raise DecodeError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}.")


def _check_reward(args: argparse.Namespace) -> None:
    """The reward source fits the method: named well, present where the method needs one, able to score partial
    text for the prefix twist."""
    for flag, name in (("--reward", args.reward), ("--metric", args.metric)):
        problem = name is not None and reward_source_problem(name)
        if problem:
            raise DecodeError(f"{flag}: {problem}")
    needs = args.method in ("best_of_n", "smc") or args.selection == "argmax_reward"
    if needs and args.reward is None:
        raise DecodeError(f"--method {args.method} (selection {args.selection or 'default'}) needs a reward: give "
                          f"--reward (e.g. boxed_match or reward_model with --reward-kwarg path=...).")
    if args.method == "power" and args.reward is not None:
        raise DecodeError("--method power uses no reward (it samples towards p^alpha); drop --reward or use --method "
                          "smc.")
    if args.final_moves and args.method not in ("smc", "power"):
        raise DecodeError(f"--final-moves moves SMC's final particles; --method {args.method} has none (use --method "
                          f"smc or power, or drop --final-moves).")
    if args.calibrate and (args.reward is None or args.reward in FINAL_ONLY):
        raise DecodeError(f"--calibrate maps a reward model's scores to (0, 1); {args.reward or 'no reward'} needs "
                          f"none: drop --calibrate, or give --reward reward_model (or your own function).")
    if args.method == "smc" and args.variant == "prefix" and args.reward in FINAL_ONLY:
        raise DecodeError(f"--reward {args.reward} scores final answers only, so it cannot score partial text for "
                          f"--variant prefix; use --variant final or lookahead, or a reward model.")


def validate(args: argparse.Namespace) -> Path:
    """Every check that needs no model; returns --out as a path (its directory created)."""
    _check_numbers(args)
    _check_choices(args)
    _check_reward(args)
    if args.prompts != "synthetic" and not Path(args.prompts).expanduser().exists():
        raise DecodeError(f"--prompts '{args.prompts}' does not exist; give 'synthetic' or a .jsonl/.json/.parquet/"
                          f".csv file.")
    problem = model_path_problem(args.policy)
    if problem:
        raise DecodeError(f"--policy: {problem}")
    return check_out(args.out, args.overwrite)


def settings(args: argparse.Namespace):
    """The engine `Settings` the arguments describe (the power method's alpha 4, tau 1/alpha by default)."""
    from align.decode.particles import Settings  # lazy: imports torch and transformers, after the checks

    alpha = args.alpha if args.alpha is not None else POWER_DEFAULTS["alpha"] if args.method == "power" else 1.0
    tau = args.tau if args.tau is not None else 1.0 / alpha if args.method == "power" else 1.0
    selection = args.selection or ("argmax_reward" if args.method == "best_of_n" else "sample")
    return Settings(n=args.n, block=args.block, max_new_tokens=args.max_new_tokens, alpha=alpha, tau=tau,
                    lam=args.lam, kappa=args.ess_threshold, resampling=args.resampling, variant=args.variant,
                    mh_steps=args.mh_steps, final_moves=args.final_moves, rollouts=args.rollouts, selection=selection)


def reward_source(name: str | None, kwargs: dict):
    """The guarded reward source `name` with `kwargs` bound (None for no name)."""
    if name is None:
        return None
    from align.rewards import RewardConfigError, guard, resolve_reward  # lazy: imports transformers, after checks

    try:
        return guard(resolve_reward(name, kwargs), name)
    except RewardConfigError as err:
        raise DecodeError(str(err)) from None


def load_policy(path: str):
    """(model, tokenizer) on CUDA when available (bf16 where supported), with any repetition penalty or min-p of
    its generation_config switched off: the proposal must be p at temperature tau exactly."""
    # lazy: torch and transformers load only after every check has passed
    import torch

    from align.models import bf16_available, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype="bfloat16" if bf16_available() else "float32")
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval().requires_grad_(False)
    model.generation_config.repetition_penalty = 1.0
    model.generation_config.min_p = None
    return model, tokenizer


def _score(rows: list[dict], prompts: list, answers: list | None, metric) -> list:
    """Each chosen completion's score under `metric` (a reward source), or its reward when there is no metric."""
    if metric is None:
        return [row["reward"] for row in rows]
    columns = {} if answers is None else {"answer": answers}
    return metric(prompts=prompts, completions=[row["completion"] for row in rows], **columns)


def _run(args: argparse.Namespace) -> dict:
    out = validate(args)
    quiet_dependencies("none")  # before the model loads: weight-loading bars and notices are dependency noise
    engine_settings = settings(args)
    source = reward_source(args.reward, reward_kwargs(args.reward_kwarg))
    prompts, answers = load_prompts(args.prompts, args.prompt_column, args.num_prompts)
    metric_name = args.metric or ("boxed_match" if answers is not None else args.reward)
    metric = source if metric_name == args.reward else reward_source(metric_name, {})
    model, tokenizer = load_policy(args.policy)

    from align.decode.methods import calibrated, calibration, decode, gate_rows  # lazy: torch, after the checks
    from align.timing import PhaseTimer  # lazy: imports torch

    calibrated_by = None
    if args.calibrate:
        try:
            mu, sigma = calibration(model, tokenizer, prompts, answers, source, args.calibrate, engine_settings,
                                    args.seed, batch_size=args.batch_size * args.n)
        except ValueError as err:
            raise DecodeError(f"--calibrate {args.calibrate}: {err}") from None
        calibrated_by = {"mu": mu, "sigma": sigma, "samples": args.calibrate}
        print(f"[align] reward calibrated on {args.calibrate} policy samples: mu {mu:.4g}, sigma {sigma:.4g}",
              file=sys.stderr, flush=True)
        source = calibrated(source, mu, sigma)

    bar = phase_progress(range(len(prompts)), f"decode {args.method}", total=len(prompts))
    ticks = iter(bar)
    timer = PhaseTimer()
    results = decode(model, tokenizer, prompts, answers, args.method, engine_settings, source=source,
                     batch_size=args.batch_size, seed=args.seed,
                     progress=lambda done: [next(ticks, None) for _ in range(done)], timer=timer)
    scores = _score(results, prompts, answers, metric)
    # lazy: align.methods loads TRL; the name is held-out evaluation's, so the gate pairs decoding with a training run
    from align.methods.common import eval_task_name

    task = eval_task_name(DataConfig(source=args.prompts))
    rows = gate_rows(results, prompts, answers, scores, task=task, metric=metric_name or "reward",
                     method=args.method)
    write_jsonl(rows, out)
    summary = summarize(rows, timer.seconds)
    phases = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in summary["seconds"].items())
    print(f"[align] decode {args.method}: {len(rows)} prompts, mean score {summary['mean_score']}; per prompt "
          f"{summary['generated_tokens']:.1f} generated tokens, {summary['forward_tokens']:.0f} forward tokens, "
          f"{summary['reward_calls']:.1f} reward calls, seconds: {phases}\n"
          f"[align] wrote {out}", file=sys.stderr, flush=True)
    return {**summary, "calibration": calibrated_by, "out": str(out), "rows": len(rows)}


def summarize(rows: list[dict], seconds: dict[str, float]) -> dict:
    """Mean score (None when a row has none) and the mean cost per prompt: generated tokens, forward tokens, reward
    calls, and the wall `seconds` per phase of the whole run shared evenly."""
    scores = [row["score"] for row in rows]
    mean = None if any(s is None for s in scores) else sum(scores) / len(scores)

    def per_prompt(cost) -> float:
        return sum(cost(r) for r in rows) / len(rows)

    return {"mean_score": mean, "generated_tokens": per_prompt(lambda r: r["generated_tokens"]),
            "forward_tokens": per_prompt(lambda r: r["forward_tokens"]),
            "reward_calls": per_prompt(lambda r: r["reward_calls"]),
            "seconds": {phase: total / len(rows) for phase, total in seconds.items()}}


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI on `argv` (default: sys.argv[1:]); returns the summary (mean_score and the cost per prompt:
    generated_tokens, forward_tokens, reward_calls, seconds per phase; calibration or None; out, rows). A user
    error prints `align: error: ...` to stderr and exits with code 2."""
    return run_cli(_parser(), _run, argv)
