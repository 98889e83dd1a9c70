"""Each decoding method as particle-engine settings, and the per-prompt result rows `python -m align.decode` writes.

    greedy     one completion at temperature 0 (no engine)
    sample     N = 1 from q = p at tau, never resampled: plain sampling
    best_of_n  N particles in one block with no twist and no resampling, the best final reward wins (argmax_reward;
               `sample` selection gives soft best-of-N, W = softmax(lambda R))
    smc        the engine as configured (twist prefix / lookahead / final)
    power      no reward (lambda 0), alpha > 1 with tau = 1/alpha proposals: SMC towards p^alpha

A row carries what `python -m align.gate` pairs item by item (task, doc_id, metric, score, confidence, prompt,
answer) plus the chosen completion, its reward, and the cost: generated tokens, LM forward tokens and reward calls
for the prompt. Wall time is not in the rows (the same seed gives the same file); `decode` adds it per phase to a
`PhaseTimer` the caller passes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import replace

import torch

from align.decode import smc
from align.decode.particles import Engine, Pool, Settings, choose, forward_tokens
from align.generation import Decoding, chat_prompt_ids, generate
from align.timing import PhaseTimer

METHODS = ("greedy", "sample", "best_of_n", "smc", "power")
DEFAULT_SELECTION = {"greedy": "sample", "sample": "sample", "best_of_n": "argmax_reward", "smc": "sample",
                     "power": "sample"}


def method_settings(method: str, settings: Settings) -> Settings:
    """The engine settings `method` runs with, from the user's `settings`."""
    if method == "sample":
        return replace(settings, n=1, variant="final", kappa=0.0, mh_steps=0, final_moves=0)
    if method == "best_of_n":
        return replace(settings, variant="final", kappa=0.0, mh_steps=0, final_moves=0, alpha=1.0,
                       block=settings.max_new_tokens)
    if method == "power":
        return replace(settings, variant="final", lam=0.0)
    return settings


def batch_reward(source: Callable | None, prompts: list, answers: list | None) -> Callable | None:
    """The engine's `reward(prompt_indices, texts)` over one batch of prompts, from a reward source
    `fn(prompts, completions, **columns)`; the `answer` column goes along when the prompts have one."""
    if source is None:
        return None

    def reward(indices: list[int], texts: list[str]) -> list:
        columns = {} if answers is None else {"answer": [answers[i] for i in indices]}
        return source(prompts=[prompts[i] for i in indices], completions=texts, **columns)

    return reward


def calibration(model, tokenizer, prompts: list, answers: list | None, source: Callable, samples: int,
                settings: Settings, seed: int, batch_size: int = 32) -> tuple[float, float]:
    """(mu, sigma) of `source`'s scores of `samples` completions drawn from the policy at the proposal temperature,
    round robin over the prompts, `batch_size` per generate call: the constants of the calibrated potential
    (`calibrated`). A generator of its own (from `seed` + 1) draws them, so calibrating leaves the decoding's random
    stream as it was. Raises ValueError when fewer than two scores come back or all are equal."""
    generator = torch.Generator().manual_seed(seed + 1)
    picks = [i % len(prompts) for i in range(samples)]
    scores = []
    for start in range(0, samples, batch_size):
        chunk = picks[start:start + batch_size]
        out = generate(model, tokenizer, chat_prompt_ids(tokenizer, [prompts[i] for i in chunk]),
                       Decoding(settings.max_new_tokens, temperature=settings.tau), seed=generator)
        columns = {} if answers is None else {"answer": [answers[i] for i in chunk]}
        scores += [r for r in source(prompts=[prompts[i] for i in chunk], completions=out.texts(tokenizer),
                                     **columns) if r is not None]
    if len(scores) < 2 or statistics.pstdev(scores) == 0:
        raise ValueError(f"calibration needs varied scores; the reward gave {len(scores)} score(s) of "
                         f"{samples} samples{' all equal to ' + format(scores[0], '.4g') if scores else ''}. Use more "
                         f"samples, or no calibration for a reward that is already in [0, 1].")
    return statistics.fmean(scores), statistics.pstdev(scores)


def calibrated(source: Callable, mu: float, sigma: float) -> Callable:
    """`source` mapped to (0, 1) by sigmoid((r - mu) / sigma); None stays None. A reward model's raw scale is
    arbitrary: calibrated, lambda means the same for every model (spec: potentials from reward sources)."""
    def potential(prompts, completions, **columns) -> list:
        # tanh form: no overflow for scores far outside the calibration samples (partial texts may be)
        return [None if r is None else 0.5 * (1.0 + math.tanh((r - mu) / (2.0 * sigma)))
                for r in source(prompts=prompts, completions=completions, **columns)]

    return potential


def pool_stats(pool: Pool) -> dict:
    """What the run did for one prompt: ESS (min, mean over boundaries), resamples, log Z_hat, distinct final
    sequences, MH acceptance."""
    log_z = pool.log_z + smc.log_mean_weight(pool.logw).item()
    return {"ess_min": min(pool.ess, default=None), "ess_mean": sum(pool.ess) / len(pool.ess) if pool.ess else None,
            "resamples": pool.resamples, "log_z": log_z,
            "unique_sequences": len({tuple(p.tokens) for p in pool.particles}),
            "mh_acceptance": pool.mh_accepted / pool.mh_proposed if pool.mh_proposed else None}


def run_engine(model, tokenizer, prompt_ids: list[list[int]], settings: Settings, reward: Callable | None,
               generator: torch.Generator, timer: PhaseTimer | None = None) -> list[dict]:
    """One batch of prompts through the engine: per prompt the chosen particle's text, reward, flags and cost."""
    pools = Engine(model, tokenizer, settings, reward, generator, timer).run(prompt_ids)
    results = []
    for pool in pools:
        chosen = pool.particles[choose(pool, tokenizer, settings.selection, generator)]
        results.append({"completion": tokenizer.decode(chosen.tokens, skip_special_tokens=True),
                        "reward": chosen.reward, "finished": chosen.finished, "truncated": chosen.truncated,
                        "generated_tokens": pool.generated_tokens, "forward_tokens": pool.forward_tokens,
                        "reward_calls": pool.reward_calls, "smc": pool_stats(pool)})
    return results


def run_greedy(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, reward: Callable | None,
               timer: PhaseTimer | None = None) -> list[dict]:
    """Greedy completions, each scored once by the reward (when there is one)."""
    timer = timer or PhaseTimer()
    with timer("generate"):
        out = generate(model, tokenizer, prompt_ids, Decoding(max_new_tokens))
    texts = out.texts(tokenizer)
    with timer("score"):
        rewards = reward(list(range(len(texts))), texts) if reward is not None else [None] * len(texts)
    return [{"completion": text, "reward": r, "finished": done, "truncated": not done, "generated_tokens": len(ids),
             "forward_tokens": forward_tokens(prompt, ids), "reward_calls": int(reward is not None),
             "smc": None}
            for prompt, text, r, done, ids in zip(prompt_ids, texts, rewards, out.finished, out.completion_ids)]


def decode(model, tokenizer, prompts: list, answers: list | None, method: str, settings: Settings, *,
           source: Callable | None = None, batch_size: int = 4, seed: int = 0,
           progress: Callable[[int], None] | None = None, timer: PhaseTimer | None = None) -> list[dict]:
    """Decode every chat-message prompt with `method`, `batch_size` prompts (x N particles) per engine run, one
    torch.Generator seeded with `seed` for everything: per prompt, in order, a result dict (completion, reward,
    finished, truncated, generated_tokens, forward_tokens, reward_calls, smc statistics or None). `timer` (when
    given) accumulates the wall time per phase: generate, score, lookahead, move, resample."""
    settings = method_settings(method, settings)
    generator = torch.Generator().manual_seed(seed)
    results: list[dict] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        reward = batch_reward(source, batch, None if answers is None else answers[start:start + batch_size])
        ids = chat_prompt_ids(tokenizer, batch)
        if method == "greedy":
            results += run_greedy(model, tokenizer, ids, settings.max_new_tokens, reward, timer)
        else:
            results += run_engine(model, tokenizer, ids, settings, reward, generator, timer)
        if progress is not None:
            progress(len(batch))
    return results


def gate_rows(results: list[dict], prompts: list, answers: list | None, scores: list, *, task: str, metric: str,
              method: str) -> list[dict]:
    """The JSONL rows: the gate's per-sample fields (as `align.evaluation.write_samples` writes them, doc_id the
    prompt's index) followed by the method and each result's fields."""
    rows = []
    for i, (result, score) in enumerate(zip(results, scores)):
        answer = None if answers is None else answers[i]
        rows.append({"task": task, "doc_id": i, "metric": metric, "score": score,
                     "correct": None if score is None else score >= 1.0, "confidence": None,
                     "prompt": prompts[i][-1]["content"], "answer": answer, "method": method, **result})
    return rows
