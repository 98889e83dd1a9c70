"""Trained reward models as reward sources: `reward=reward_model` with `kwargs.path` = a checkpoint written by
`algorithm=reward_model` (any of the three objectives), or any sequence-classification checkpoint with one output.

The scorer reads (prompt, completion) exactly as the reward model was trained to (`reward_input_ids`: the chat
template over the prompt plus the completion as the assistant turn), in batches, without gradients, in bf16 on a bf16
GPU and fp32 otherwise. Each process holds its own full copy on its own device (under DDP and ZeRO-3 alike: the
reward model is frozen and small next to the policy, and a replica keeps scoring free of collectives, so ranks may
score different numbers of completions, as SAGE's hint rounds do).

A scalar model's reward is its output. A Gaussian model (mean mu, variance sigma^2) gives mu by default, the
q-quantile mu + Phi^-1(q) sigma for `quantile: q` (0.25 = pessimistic), or a fresh q ~ U(0.05, 0.95) per completion
for `quantile: random`; it logs the batch means of mu and sigma through TRL's `log_metric`.

The on-disk format, written by training (`load_reward_model`, then align.methods.reward_model's builder) and read
here and by best-of-N: a sequence-classification checkpoint with one output, or two for the Gaussian model
(`GAUSSIAN_LABELS`: mu and the raw variance v, `align.rewards.gaussian`), and under `CONFIG_KEY` in config.json the
objective, the head ("scalar" / "gaussian") and what the objective learned (anchor thresholds, noise rates).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from align.distributed import local_device
from align.models import (
    attention_reported,
    bf16_available,
    load_tokenizer,
    outside_zero3_init,
    resolve_dtype,
    resolve_model_path,
)
from align.rewards.gaussian import quantile_reward, random_quantiles, variance_from_raw
from align.rewards.verifiers import completion_text
from align.tokens import pad_right, reward_input_ids

__all__ = ["CONFIG_KEY", "GAUSSIAN_LABELS", "RewardModelScorer", "is_gaussian", "load_reward_model", "load_scorer",
           "reward_model"]

GAUSSIAN_LABELS = {0: "mu", 1: "variance_raw"}  # the two-output head of a Gaussian reward model, in config.json
CONFIG_KEY = "align_reward"  # config.json entry: objective, head, anchor thresholds, score standardisation, ...


def is_gaussian(config) -> bool:
    """Whether a sequence-classification config is align's Gaussian reward model (mean + raw variance head)."""
    return getattr(config, CONFIG_KEY, {}).get("head") == "gaussian"


def load_reward_model(path: str, objective: str, *, dtype: str = "auto", revision: str | None = None,
                      trust_remote_code: bool = False, attn_implementation: str | None = None):
    """A sequence-classification model to train: one output (bradley_terry, causal_rm) or two (gaussian_anchor: mu
    and the raw variance v, sigma^2 = softplus(v) + 1e-6), on top of `path`'s backbone (safetensors only). A causal
    LM checkpoint gets a fresh bias-free linear head on its last-token hidden state. Records the objective and the
    head under `CONFIG_KEY`."""
    # Lazy: TRL takes seconds to import and only training (which has it loaded already) calls this; scoring and the
    # math tests import this module without it.
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    gaussian = objective == "gaussian_anchor"
    labels = GAUSSIAN_LABELS if gaussian else {0: "reward"}
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # The new head and the dropped LM head are expected, not worth a warning.
    with suppress_seqcls_warning(), attention_reported(attn_implementation, path):
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(path), num_labels=len(labels), id2label=labels,
            label2id={v: k for k, v in labels.items()}, dtype=resolve_dtype(dtype), revision=revision,
            trust_remote_code=trust_remote_code, use_safetensors=True, **extra)
    setattr(model.config, CONFIG_KEY, {"objective": objective, "head": "gaussian" if gaussian else "scalar"})
    return model


class RewardModelScorer:
    """A frozen reward model on this process's device. `score` gives mu (and sigma for a Gaussian model)."""

    def __init__(self, path: str, *, dtype: str = "auto", trust_remote_code: bool = False):
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise ValueError(f"'{path}' is not a reward model checkpoint (no config.json); give the final/ or a "
                             f"checkpoint-N/ directory of an algorithm=reward_model run.")
        self.path = str(directory)
        self.tokenizer = load_tokenizer(self.path, trust_remote_code=trust_remote_code)
        torch_dtype = (torch.bfloat16 if bf16_available() else torch.float32) if dtype == "auto" else \
            resolve_dtype(dtype)
        with outside_zero3_init():
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
        self.gaussian = is_gaussian(self.model.config)
        outputs = self.model.config.num_labels
        if outputs != (2 if self.gaussian else 1):
            raise ValueError(f"'{path}' has a {outputs}-output head; a reward model has one output (a scalar reward) "
                             f"or is align's Gaussian model (two).")
        self.device = local_device()
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, prompts: list, completions: list, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, sigma or None), each (N,) float32 on CPU, for N (prompt, completion) pairs. A prompt is chat messages
        or a string (taken as the user turn); a completion is a string or messages (its last message counts)."""
        sequences = [reward_input_ids(self.tokenizer, p if isinstance(p, list) else [{"role": "user", "content": p}],
                                      completion_text(c)) for p, c in zip(prompts, completions, strict=True)]
        heads = torch.zeros((len(sequences), 2 if self.gaussian else 1), dtype=torch.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            ids, mask = pad_right([sequences[i] for i in index], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            heads[torch.tensor(index)] = logits.float().cpu()
        if not self.gaussian:
            return heads[:, 0], None
        return heads[:, 0], variance_from_raw(heads[:, 1]).sqrt()


@functools.lru_cache(maxsize=4)
def load_scorer(path: str, dtype: str = "auto", trust_remote_code: bool = False) -> RewardModelScorer:
    """One scorer per (path, dtype) and process, loaded on first use."""
    return RewardModelScorer(path, dtype=dtype, trust_remote_code=trust_remote_code)


_GENERATORS: dict[tuple[str, int], torch.Generator] = {}


def _quantiles(quantile: float | str, n: int, path: str, seed: int) -> torch.Tensor | float:
    if quantile == "random":
        key = (path, seed)
        if key not in _GENERATORS:  # each process its own reproducible stream
            _GENERATORS[key] = torch.Generator().manual_seed(seed + int(os.environ.get("RANK", "0")))
        return random_quantiles(n, _GENERATORS[key])
    q = float(quantile)
    if not 0 < q < 1:
        raise ValueError(f"quantile must be 'mean', 'random' or a number strictly inside (0, 1); got {quantile!r}.")
    return q


def reward_model(prompts, completions, path: str, quantile: float | str = "mean", batch_size: int = 16,
                 dtype: str = "auto", seed: int = 0, trust_remote_code: bool = False, log_metric=None,
                 **columns) -> list[float]:
    """Reward of each completion under the reward model at `path`: its scalar output, or for a Gaussian model mu
    (`quantile: mean`, the default), the q-quantile mu + Phi^-1(q) sigma (`quantile: q`), or a quantile drawn
    per completion from U(0.05, 0.95) (`quantile: random`, seeded by `seed` and the process index)."""
    scorer = load_scorer(str(Path(path).expanduser()), dtype, trust_remote_code)
    mu, sigma = scorer.score(prompts, completions, batch_size)
    if sigma is None:
        if quantile != "mean":
            raise ValueError(f"'{path}' is a scalar reward model: it has no sigma, so quantile must stay 'mean' "
                             f"(got {quantile!r}).")
        return mu.tolist()
    if log_metric is not None:
        log_metric("reward_model/mu_mean", mu.mean().item())
        log_metric("reward_model/sigma_mean", sigma.mean().item())
    if quantile == "mean":
        return mu.tolist()
    return quantile_reward(mu, sigma, _quantiles(quantile, len(mu), scorer.path, seed)).tolist()
