"""Held-out accuracy: greedy decoding, no hints, scored by a verifier reward source.

Works on the trainer's wrapped model under DDP and DeepSpeed ZeRO-3 (weights gathered for generation): every rank
generates its share of the prompts, padded to equal counts so collective calls line up, and results are gathered.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object
from transformers import LogitsProcessor, TrainerCallback

from align.console import phase_progress
from align.distributed import decided_by_main
from align.gate.align_results import step_files
from align.generation import Decoding, chat_prompt_ids, fill_to, generate, generation_model
from align.rewards.verifiers import boxed_spans


class _GreedyTokenLogprobs(LogitsProcessor):
    """Records, at every decoding step, the log-probability of the token greedy decoding picks (the argmax).

    Appended after generate's own processors, so it sees the distribution the token is chosen from; keeping one
    value per row and step (not the logits) costs O(batch x steps) memory at any vocabulary size.
    """

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores

    def rows(self) -> list[list[float]]:
        """The recorded log-probabilities, one list per row (generate always takes at least one step)."""
        return torch.stack(self.steps, dim=1).tolist()


def answer_span(text: str) -> tuple[int, int]:
    """Character span of the answer in a completion: the last closed `\\boxed{...}`'s content, else the whole
    text without surrounding whitespace."""
    spans, _ = boxed_spans(text)
    if spans:
        return spans[-1]
    stripped = text.strip()
    start = text.find(stripped) if stripped else 0
    return start, start + len(stripped)


def span_probability(prefix_length: Callable[[int], int], token_logprobs: list[float],
                     span: tuple[int, int]) -> float:
    """Probability the model gave the tokens that make up `span`: exp of the summed log-probs of every token whose
    characters [prefix_length(k), prefix_length(k + 1)) overlap it; all tokens when none does (an empty answer).

    Args:
        prefix_length: decoded length of the first k tokens, non-decreasing in k; called O(log n) times (two
            binary searches), so long completions cost a few decodes, not one per token.
        token_logprobs: the log-probability of each generated token.
        span: (start, end) character offsets in the decoded text.
    """
    start, end = span
    n = len(token_logprobs)
    lo = bisect.bisect_left(range(n), True, key=lambda k: prefix_length(k + 1) > start)
    hi = bisect.bisect_left(range(n), True, key=lambda k: prefix_length(k) >= end)
    chosen = token_logprobs[lo:hi] if lo < hi else token_logprobs
    return float(math.exp(sum(chosen)))


def decoded_prefix_length(tokenizer, ids: list[int]) -> Callable[[int], int]:
    """k -> length of the first k tokens decoded (special tokens skipped), memoised."""
    return functools.cache(lambda k: len(tokenizer.decode(ids[:k], skip_special_tokens=True)))


def generate_greedy(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int,
                    progress: str | None = None) -> list[tuple[str, float]]:
    """Greedy completions of chat-message `prompts`, in order, each with its answer confidence: decoded text
    (special tokens stripped) and the probability of the answer's tokens (see `answer_span`, `span_probability`).
    `batch_size` prompts per `generate` call; `progress`: the name of a progress bar over the batches
    (`align.console.phase_progress`), None for none."""
    ids, decoding, results = chat_prompt_ids(tokenizer, prompts), Decoding(max_new_tokens=max_new_tokens), []
    for start in phase_progress(range(0, len(ids), batch_size), progress):
        recorder = _GreedyTokenLogprobs()
        generated = generate(model, tokenizer, ids[start:start + batch_size], decoding, logits_processors=[recorder])
        for completion, logprobs, text in zip(generated.completion_ids, recorder.rows(), generated.texts(tokenizer)):
            # A finished row's steps after its stop token scored padding.
            confidence = span_probability(decoded_prefix_length(tokenizer, completion), logprobs[:len(completion)],
                                          answer_span(text))
            results.append((text, confidence))
    return results


def score(rows: list[dict], completions: list[str], verifier: Callable) -> list[float]:
    """Verifier scores for `completions` of `rows` (None counts as 0)."""
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
    values = verifier([row["prompt"] for row in rows], completions, **columns)
    return [float(v) if v is not None else 0.0 for v in values]


def evaluate_held_out(trainer, tokenizer, rows: list[dict], verifier: Callable, max_new_tokens: int,
                      batch_size: int) -> list[dict]:
    """Per-sample results `{doc_id, prompt, answer, completion, score, correct, confidence}` on every rank, in row
    order (`doc_id` is the row's index in the held-out split). Collective: every rank must call it."""
    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    indices = list(range(rank, len(rows), world))
    padded = fill_to(indices, -(-len(rows) // world), indices[-1] if indices else 0)
    with generation_model(trainer) as model:
        generated = generate_greedy(model, tokenizer, [rows[i]["prompt"] for i in padded], max_new_tokens,
                                    batch_size, progress="held-out eval" if rank == 0 else None)
    local = list(zip(padded, generated))[: len(indices)]
    scored = score([rows[i] for i, _ in local], [c for _, (c, _) in local], verifier) if local else []
    results = [
        {"doc_id": i, "prompt": rows[i]["prompt"][-1]["content"], "answer": rows[i].get("answer"), "completion": c,
         "score": s, "correct": s >= 1.0, "confidence": confidence}
        for (i, (c, confidence)), s in zip(local, scored)
    ]
    return sorted(gather_object(results), key=lambda r: r["doc_id"])


SAMPLES_DIR = "eval"


def samples_path(run_dir: Path, step: int) -> Path:
    """Where the per-sample held-out results measured at optimizer step `step` are written."""
    return Path(run_dir) / SAMPLES_DIR / f"step-{step}.jsonl"


def write_samples(path: Path, results: list[dict], *, task: str, metric: str, step: int) -> None:
    """Per-sample results as JSON lines `{task, doc_id, metric, score, correct, confidence, step, prompt, answer,
    completion}`: the format `python -m align.gate` reads. Written to a temporary name and renamed, so a reader never
    sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w") as f:
        for row in results:
            f.write(json.dumps({"task": task, "doc_id": row["doc_id"], "metric": metric, "score": row["score"],
                                "correct": row["correct"], "confidence": row["confidence"], "step": step,
                                "prompt": row["prompt"], "answer": row["answer"],
                                "completion": row["completion"]}) + "\n")
    staging.replace(path)


def measured_history(run_dir: Path, up_to: int) -> list[tuple[int, float]]:
    """(step, accuracy) of the per-sample files already in `run_dir` for steps <= `up_to`, by step."""
    history = []
    for step, path in sorted(step_files(run_dir).items()):
        if step <= up_to:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            history.append((step, sum(r["correct"] for r in rows) / max(len(rows), 1)))
    return history


class HeldOutAccuracy(TrainerCallback):
    """Measures held-out accuracy before training, every `every_steps` optimizer steps, and after training.

    Values go into the trainer's metrics as `heldout_accuracy` (logged on the optimizer-step axis) and into
    `self.history` as (step, accuracy); every measurement's per-sample results are written to
    `<run_dir>/eval/step-<N>.jsonl` (see `write_samples`), so the final model can be gated against the starting one.
    """

    def __init__(self, trainer, tokenizer, rows: list[dict], verifier: Callable, run_dir: Path,
                 max_new_tokens: int, batch_size: int, every_steps: int = 0, *, task: str, metric: str):
        self.trainer, self.tokenizer, self.rows, self.verifier = trainer, tokenizer, rows, verifier
        self.run_dir, self.max_new_tokens, self.batch_size = run_dir, max_new_tokens, batch_size
        self.every_steps, self.task, self.metric = every_steps, task, metric
        self.history: list[tuple[int, float]] = []
        self.last_results: list[dict] = []

    def measure(self, step: int) -> float:
        self.last_results = evaluate_held_out(self.trainer, self.tokenizer, self.rows, self.verifier,
                                              self.max_new_tokens, self.batch_size)
        if self.trainer.accelerator.is_main_process:
            write_samples(samples_path(self.run_dir, step), self.last_results, task=self.task, metric=self.metric,
                          step=step)
        accuracy = sum(r["correct"] for r in self.last_results) / max(len(self.last_results), 1)
        self.history.append((step, accuracy))
        return accuracy

    def on_train_begin(self, args, state, control, **kwargs):
        if self.history:
            return
        # A resumed run continues the history its earlier attempts wrote, and measures the resumed model only if no
        # attempt did at this step.
        accelerator = self.trainer.accelerator
        self.history = decided_by_main(accelerator.is_main_process, accelerator.num_processes,
                                       lambda: measured_history(self.run_dir, up_to=state.global_step))
        if not (self.history and self.history[-1][0] == state.global_step):
            accuracy = self.measure(state.global_step)
            if self.trainer.accelerator.is_main_process:
                when = f"at resume (step {state.global_step})" if state.global_step else "before training"
                print(f"[align] held-out accuracy {when} (greedy, no hint): {accuracy:.3f}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop:
            return  # stopping early (preemption): no time for an evaluation
        if self.every_steps and state.global_step % self.every_steps == 0 and state.global_step < state.max_steps:
            self.trainer._metrics["train"]["heldout_accuracy"].append(self.measure(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps:
            return  # stopped early (preemption): the run continues later, and measures at its real end
        if self.history and self.history[-1][0] == state.global_step:
            accuracy = self.history[-1][1]  # a resume from the last step: measured already (at resume or before)
        else:
            accuracy = self.measure(state.global_step)
        if self.trainer.accelerator.is_main_process:
            print(f"[align] held-out accuracy after training (greedy, no hint): {accuracy:.3f}", flush=True)
