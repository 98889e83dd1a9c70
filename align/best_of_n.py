"""Best-of-N selection: sample N completions per prompt from a policy, score each with a reward model trained by
`algorithm=reward_model`, keep the one ranked first, and write one jsonl line per prompt.

    python -m align.best_of_n --reward-model RM --out OUT.jsonl [--policy embedded:tiny] [--prompts synthetic]
        [--prompt-column prompt] [--num-prompts K] [--n 8] [--select mean|Q] [--temperature 1.0] [--top-p 1.0]
        [--max-new-tokens 256] [--batch-size 16] [--seed 0] [--all] [--overwrite]

    python -m align.best_of_n --policy runs/grpo/final --reward-model runs/rm/final --prompts synthetic \\
        --num-prompts 100 --n 8 --select 0.25 --out best.jsonl --all

Prompts: `synthetic` (the default) is the embedded arithmetic task's held-out split as the default `data` config
builds it (`load_splits(DataConfig())`), the split a training run with default data evaluates on; a local
.jsonl / .json / .parquet / .csv file goes through `load_splits` too, so string prompts become chat messages exactly
as in training (`--prompt-column` names the column that holds them). `--num-prompts K` keeps the first K.

Generation: the policy's chat template with the generation prompt, left padding, `--batch-size` prompts per
`generate` call (each gives N sequences), sampling at `--temperature` / `--top-p` with no top-k cut (as GRPO samples),
seeded once with `torch.manual_seed(--seed)`: the same arguments on the same machine give the same file. `--n 1
--temperature 0` is greedy decoding. The policy runs on CUDA when available, in bf16 on a bf16 GPU, fp32 otherwise.

Selection: each candidate's key is the reward model's mu (`--select mean`) or, for a Gaussian reward model, its
q-quantile mu + Phi^-1(q) sigma (`--select q`, q strictly inside (0, 1); 0.25 prefers completions the model is
confidently good about). The candidate with the largest key wins; ties go to the first sampled. A scalar reward model
has no sigma, so a quantile with one is refused before anything is generated.

Output, one line per prompt, in prompt order:
    {"prompt": [messages], "answer": "...", "completion": "...", "reward": key, "mu": ..., "sigma": ... | null,
     "index": i, "candidates": [{"completion": "...", "mu": ..., "sigma": ..., "key": ...}, ...]}
`answer` only when the prompts have that column; `candidates` (all N, in sampling order) only with `--all`. The file
is written at the end through a temporary file in the same directory and `os.replace`, so an interrupted run leaves
no partial file; an existing `--out` is refused unless `--overwrite`.

Progress goes to stderr, one line per batch, then a summary: the mean selected reward against the mean over all
candidates (the best-of-N gain). Every argument, path and reward model is checked before any model is loaded; a
problem prints one line `align: error: ...` and exits with code 2.

Library: `select_best` (the pure selection step), `selection_keys`, and `best_of_n`, which the CLI wraps; it
generates through `align.generation`, as held-out evaluation does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from align.console import quiet_dependencies
from align.decode.io import DecodeError, Parser, check_out, load_prompts, run_cli, write_jsonl
from align.numerics import upcast

__all__ = ["best_of_n", "main", "parse_select", "select_best", "selection_keys", "summarize"]


# --------------------------------------------------------------------------------------------------------------------
# Selection


def parse_select(select: str | float) -> float | None:
    """None for 'mean', else the quantile q as a float strictly inside (0, 1); anything else raises DecodeError."""
    if isinstance(select, str) and select.strip().lower() == "mean":
        return None
    try:
        q = float(select)
    except (TypeError, ValueError):
        raise DecodeError(f"--select must be 'mean' or a quantile strictly inside (0, 1); got {select!r}.") from None
    if not 0 < q < 1:  # also refuses nan
        raise DecodeError(f"--select quantile must lie strictly inside (0, 1); got {select!r}.")
    return q


def selection_keys(mu: torch.Tensor, sigma: torch.Tensor | None, quantile: float | None) -> torch.Tensor:
    """(M,) float32 (float64 stays float64) keys candidates are ranked by: mu, or mu + Phi^-1(q) sigma for a quantile.

    A quantile needs sigma (a Gaussian reward model); with sigma None it raises DecodeError.
    """
    if quantile is None:
        return upcast(mu)
    if sigma is None:
        raise DecodeError(f"a scalar reward model has no sigma, so it cannot select by quantile {quantile}; use "
                           f"--select mean or a Gaussian (gaussian_anchor) reward model.")
    from align.rewards.gaussian import quantile_reward  # lazy: align.rewards imports transformers, too slow for --help

    return quantile_reward(mu, sigma, quantile)


def select_best(keys: torch.Tensor) -> torch.Tensor:
    """(P,) int64: for each row of `keys` (P, N), N >= 1, the index of its largest key.

    Ties go to the first (lowest) index. NaN ranks below every number, -inf included, so a NaN key is never chosen
    over a real one; a row with nothing but NaN / -inf picks index 0.
    """
    if keys.dim() != 2 or keys.shape[1] == 0:
        raise ValueError(f"select_best expects keys of shape (P, N) with N >= 1; got {tuple(keys.shape)}.")
    keys = keys if keys.is_floating_point() else keys.double()
    keys = torch.where(keys.isnan(), torch.full_like(keys, -math.inf), keys)
    best = keys.max(dim=1, keepdim=True).values
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(keys)
    # Among the maximal entries take the smallest position: explicit, instead of relying on argmax's tie order.
    return torch.where(keys == best, positions, keys.shape[1]).min(dim=1).values


# --------------------------------------------------------------------------------------------------------------------
# Generation and the library entry point


def _check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int) -> None:
    if n < 1:
        raise DecodeError(f"--n must be >= 1; got {n}.")
    if not temperature >= 0:
        raise DecodeError(f"--temperature must be >= 0; got {temperature}.")
    if temperature == 0 and n > 1:  # greedy decoding would give N copies of one completion
        raise DecodeError(f"--temperature must be > 0 to sample {n} different completions per prompt (0 means "
                           f"greedy decoding, which only makes sense with --n 1).")
    if not 0 < top_p <= 1:
        raise DecodeError(f"--top-p must lie in (0, 1]; got {top_p}.")
    if max_new_tokens < 1:
        raise DecodeError(f"--max-new-tokens must be >= 1; got {max_new_tokens}.")
    if batch_size < 1:
        raise DecodeError(f"--batch-size must be >= 1; got {batch_size}.")


def best_of_n(policy, tokenizer, scorer, prompts: list[list[dict]], n: int, *, select: str | float = "mean",
              temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 16,
              seed: int | None = 0, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Best-of-n completion for each chat-message prompt, in prompt order.

    policy / tokenizer: a causal LM (on the device it should run on) and its tokenizer with a chat template.
    scorer: `score(prompts, completions, batch_size) -> (mu, sigma or None)`, e.g. `load_scorer(path)`.
    select: 'mean' ranks by mu, a quantile q in (0, 1) by mu + Phi^-1(q) sigma (Gaussian reward models only).
    seed: `torch.manual_seed(seed)` once before the first batch (None leaves the global RNG alone).
    progress: called after each batch with (prompts done, total).

    Returns one dict per prompt: prompt, completion (the chosen one), reward (its key), mu, sigma (None for a scalar
    model), index (of the chosen candidate) and candidates (all n, in sampling order: completion, mu, sigma, key).
    Raises DecodeError for bad arguments, before generating anything when it can tell.
    """
    quantile = parse_select(select)
    _check_sampling(n, temperature, top_p, max_new_tokens, batch_size)
    if quantile is not None and getattr(scorer, "gaussian", None) is False:
        selection_keys(torch.zeros(1), None, quantile)  # raises the scalar-model error now, not after generating
    from align.generation import Decoding, chat_prompt_ids, generate  # lazy: imports TRL, too slow for --help

    decoding = Decoding(max_new_tokens, temperature=temperature, top_p=top_p, num_return_sequences=n)
    if seed is not None:
        torch.manual_seed(seed)
    rows: list[dict] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        completions = generate(policy, tokenizer, chat_prompt_ids(tokenizer, batch), decoding).texts(tokenizer)
        mu, sigma = scorer.score([p for p in batch for _ in range(n)], completions, batch_size)
        keys = selection_keys(mu, sigma, quantile)
        chosen = select_best(keys.view(len(batch), n)).tolist()
        mu_list, key_list = mu.tolist(), keys.tolist()
        sigma_list = sigma.tolist() if sigma is not None else [None] * len(mu_list)
        for i, prompt in enumerate(batch):
            candidates = [{"completion": completions[j], "mu": mu_list[j], "sigma": sigma_list[j], "key": key_list[j]}
                          for j in range(i * n, (i + 1) * n)]
            best = candidates[chosen[i]]
            rows.append({"prompt": prompt, "completion": best["completion"], "reward": best["key"], "mu": best["mu"],
                         "sigma": best["sigma"], "index": chosen[i], "candidates": candidates})
        if progress is not None:
            progress(len(rows), len(prompts))
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    """Mean key of the chosen candidates, mean key over every candidate, and their difference (the best-of-N gain).
    Rows must carry their candidates (as `best_of_n` returns them)."""
    selected = sum(r["reward"] for r in rows) / len(rows)
    keys = [c["key"] for r in rows for c in r["candidates"]]
    overall = sum(keys) / len(keys)
    return {"mean_selected": selected, "mean_all": overall, "gain": selected - overall}


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m align.best_of_n", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="embedded:tiny", help="causal LM directory, hub name or embedded:tiny")
    parser.add_argument("--reward-model", required=True, help="final/ or checkpoint-N/ of a reward_model run")
    parser.add_argument("--prompts", default="synthetic", help="'synthetic' or a .jsonl/.json/.parquet/.csv file")
    parser.add_argument("--prompt-column", default="prompt", help="column holding the prompts in a file")
    parser.add_argument("--num-prompts", type=int, default=None, help="keep the first K prompts (default: all)")
    parser.add_argument("--n", type=int, default=8, help="completions sampled per prompt")
    parser.add_argument("--select", default="mean", help="'mean' (mu) or a quantile q in (0, 1) (Gaussian models)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (x n sequences)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .jsonl, written atomically at the end")
    parser.add_argument("--all", action="store_true", help="also write every candidate with its mu / sigma / key")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def _validate(args: argparse.Namespace) -> float | None:
    """Every check that needs no model: returns the quantile (None for mean). Creates --out's parent directories."""
    quantile = parse_select(args.select)
    _check_sampling(args.n, args.temperature, args.top_p, args.max_new_tokens, args.batch_size)
    if args.num_prompts is not None and args.num_prompts < 1:
        raise DecodeError(f"--num-prompts must be >= 1; got {args.num_prompts}.")

    reward_model = Path(args.reward_model).expanduser()
    config_file = reward_model / "config.json"
    if not config_file.is_file():
        raise DecodeError(f"--reward-model '{args.reward_model}' is not a reward model checkpoint (no config.json "
                           f"there); give the final/ or a checkpoint-N/ directory of an algorithm=reward_model run.")
    if quantile is not None:
        from align.rewards.reward_model import CONFIG_KEY  # lazy: imports transformers, too slow for --help

        try:
            head = json.loads(config_file.read_text()).get(CONFIG_KEY, {}).get("head")
        except (OSError, ValueError, AttributeError) as err:
            raise DecodeError(f"cannot read {config_file}: {type(err).__name__}: {err}") from err
        if head != "gaussian":
            raise DecodeError(f"--reward-model '{args.reward_model}' is a scalar reward model: it has no sigma, so "
                               f"--select must stay 'mean' (got {args.select!r}); quantiles need a Gaussian "
                               f"(objective gaussian_anchor) reward model.")

    if args.prompts != "synthetic" and not Path(args.prompts).expanduser().exists():
        raise DecodeError(f"--prompts '{args.prompts}' does not exist; give 'synthetic' or a .jsonl/.json/.parquet/"
                           f".csv file.")

    check_out(args.out, args.overwrite)

    from align.models import resolve_model_path  # lazy: imports transformers, too slow for --help

    resolve_model_path(args.policy)  # a missing local path fails now (embedded:tiny is built here, in seconds)
    return quantile


def _run(args: argparse.Namespace) -> dict:
    quantile = _validate(args)
    quiet_dependencies("none")  # before the model loads: weight-loading bars and notices are dependency noise
    prompts, answers = load_prompts(args.prompts, args.prompt_column, args.num_prompts)

    # lazy: transformers and the reward models load only after every check has passed
    from align.models import bf16_available, load_causal_lm, load_tokenizer
    from align.rewards.reward_model import load_scorer  # lazy: as above

    try:
        scorer = load_scorer(str(Path(args.reward_model).expanduser()))
    except ValueError as err:  # not a reward model (wrong head size, ...)
        raise DecodeError(str(err)) from err
    tokenizer = load_tokenizer(args.policy)
    policy = load_causal_lm(args.policy, dtype="bfloat16" if bf16_available() else "float32")
    policy.to("cuda" if torch.cuda.is_available() else "cpu").eval().requires_grad_(False)

    def report(done: int, total: int) -> None:
        print(f"[align] best-of-{args.n}: {done}/{total} prompts", file=sys.stderr, flush=True)

    rows = best_of_n(policy, tokenizer, scorer, prompts, args.n, select=args.select,
                     temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, seed=args.seed, progress=report)
    summary = summarize(rows)
    written = []
    for i, row in enumerate(rows):
        row = dict(row)
        if answers is not None:  # keep the verifier target next to the prompt, so best-of-N accuracy can be scored
            row = {"prompt": row.pop("prompt"), "answer": answers[i], **row}
        if not args.all:
            row.pop("candidates")
        written.append(row)
    out = Path(args.out).expanduser()
    write_jsonl(written, out)
    by = "mu" if quantile is None else f"the {quantile:g}-quantile"
    print(f"[align] best-of-{args.n} by {by} over {len(rows)} prompts: mean selected reward "
          f"{summary['mean_selected']:.4f} vs {summary['mean_all']:.4f} over all candidates "
          f"(gain {summary['gain']:+.4f})\n[align] wrote {out}", file=sys.stderr, flush=True)
    return {**summary, "out": str(out), "rows": len(rows)}


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI on `argv` (default: sys.argv[1:]); returns the summary (mean_selected, mean_all, gain, out, rows).
    A user error prints `align: error: ...` to stderr and exits with code 2."""
    return run_cli(_parser(), _run, argv)


if __name__ == "__main__":
    main()
