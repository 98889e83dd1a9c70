"""Held-out accuracy: greedy decoding, no hints, scored by a verifier reward source.

Works on the trainer's wrapped model under DDP and DeepSpeed ZeRO-3 (weights gathered for generation): every rank
generates its share of the prompts, padded to equal counts so collective calls line up, and results are gathered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions (decoded, special tokens stripped) for chat-message `prompts`, in order."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    completions = []
    device = next(model.parameters()).device
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
    return completions


def score(rows: list[dict], completions: list[str], verifier: Callable) -> list[float]:
    """Verifier scores for `completions` of `rows` (None counts as 0)."""
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
    values = verifier([row["prompt"] for row in rows], completions, **columns)
    return [float(v) if v is not None else 0.0 for v in values]


def evaluate_held_out(trainer, tokenizer, rows: list[dict], verifier: Callable, max_new_tokens: int,
                      batch_size: int) -> list[dict]:
    """Per-sample results `{index, prompt, answer, completion, score, correct}` on every rank, in row order."""
    from accelerate.utils import gather_object
    from trl.models import unwrap_model_for_generation

    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    indices = list(range(rank, len(rows), world))
    # Equal counts on every rank: ZeRO-3 generation is collective.
    padded = indices + [indices[-1] if indices else 0] * (-(-len(rows) // world) - len(indices))
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        with unwrap_model_for_generation(trainer.model, accelerator) as model:
            completions = generate_greedy(model, tokenizer, [rows[i]["prompt"] for i in padded], max_new_tokens,
                                          batch_size)
    finally:
        trainer.model.train(was_training)
    local = list(zip(padded, completions))[: len(indices)]
    scored = score([rows[i] for i, _ in local], [c for _, c in local], verifier) if local else []
    results = [
        {"index": i, "prompt": rows[i]["prompt"][-1]["content"], "answer": rows[i].get("answer"), "completion": c,
         "score": s, "correct": s >= 1.0}
        for (i, c), s in zip(local, scored)
    ]
    return sorted(gather_object(results), key=lambda r: r["index"])


class HeldOutAccuracy(TrainerCallback):
    """Measures held-out accuracy before training, every `every_steps` optimizer steps, and after training.

    Values go into the trainer's metrics as `heldout_accuracy` (logged on the optimizer-step axis) and into
    `self.history` as (step, accuracy); the final per-sample results are written to `<run_dir>/heldout.jsonl`.
    """

    def __init__(self, trainer, tokenizer, rows: list[dict], verifier: Callable, run_dir: Path,
                 max_new_tokens: int, batch_size: int, every_steps: int = 0):
        self.trainer, self.tokenizer, self.rows, self.verifier = trainer, tokenizer, rows, verifier
        self.run_dir, self.max_new_tokens, self.batch_size = run_dir, max_new_tokens, batch_size
        self.every_steps = every_steps
        self.history: list[tuple[int, float]] = []
        self.last_results: list[dict] = []

    def measure(self, step: int) -> float:
        self.last_results = evaluate_held_out(self.trainer, self.tokenizer, self.rows, self.verifier,
                                              self.max_new_tokens, self.batch_size)
        accuracy = sum(r["correct"] for r in self.last_results) / max(len(self.last_results), 1)
        self.history.append((step, accuracy))
        return accuracy

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.history:
            accuracy = self.measure(state.global_step)
            if self.trainer.accelerator.is_main_process:
                print(f"[align] held-out accuracy before training (greedy, no hint): {accuracy:.3f}", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0 and state.global_step < state.max_steps:
            self.trainer._metrics["train"]["heldout_accuracy"].append(self.measure(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        accuracy = self.measure(state.global_step)
        if self.trainer.accelerator.is_main_process:
            print(f"[align] held-out accuracy after training (greedy, no hint): {accuracy:.3f}", flush=True)
            with open(self.run_dir / "heldout.jsonl", "w") as f:
                for row in self.last_results:
                    f.write(json.dumps(row) + "\n")
