"""Generation: one path from prompts to completions for held-out evaluation, best-of-N and inference-time decoding.

    ids = chat_prompt_ids(tokenizer, prompts)  # the chat template with the generation prompt
    out = generate(model, tokenizer, ids, Decoding(max_new_tokens=64, temperature=1.0, num_return_sequences=4), seed=0)
    out.texts(tokenizer), out.finished, out.num_tokens

`generate` takes token ids, not text, so a caller can extend partial sequences: sequential Monte Carlo decoding
advances each unfinished particle (its prompt and the tokens it has so far) by a block of B tokens per call
(`max_new_tokens=B`, several particles per prompt as rows of one batch) and carries a particle whose block ended in a
stop token (`finished`) as it is.

During training, generate from inside `generation_model(trainer)`: it unwraps DDP, gathers ZeRO-3 weights and keeps
PEFT adapters active, as TRL's own rollouts do. SAGE's hint writing does not come here: it must go through the
trainer's rollout path (`_generate_single_turn`, which also serves TRL's vLLM mode), and shares with this module the
prompt rendering (`chat_prompt_ids`), the decoding overrides (`sampling_kwargs`) and the padding of each rank's
requests to a common count (`fill_to`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from trl.models import unwrap_model_for_generation

GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}


def chat_prompt_ids(tokenizer, prompts: list, **template_kwargs) -> list[list[int]]:
    """Token ids of `prompts` exactly as TRL's GRPO rollouts tokenize them (text-only, no tools): chat-message
    prompts through the chat template with the generation prompt, plain strings as text with the tokenizer's special
    tokens. Every prompt must be of the kind `prompts[0]` is. `template_kwargs` go to `apply_chat_template` (a
    trainer's `chat_template_kwargs`).

    No fixed date, unlike `align.tokens.chat_ids`: a policy is evaluated on the prompt tokens its rollouts read.
    """
    if not prompts:
        return []
    if isinstance(prompts[0], str):
        return tokenizer(text=prompts)["input_ids"]
    return tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         **template_kwargs)["input_ids"]


def sampling_kwargs(temperature: float, **cuts) -> dict:
    """`generate` keyword arguments for decoding at `temperature`. 0 is greedy, with every sampling setting unset so
    a model's own generation_config cannot turn sampling back on; above 0 samples at it, with `cuts` (top_p, top_k,
    min_p) where given; cuts not given keep whatever the rest of the caller's settings say."""
    if temperature == 0:
        return dict(GREEDY)
    return {"do_sample": True, "temperature": temperature, **cuts}


def fill_to(items: list, count: int, filler) -> list:
    """`items` followed by `filler` up to `count` entries. Generating on several ranks is collective (ZeRO-3 gathers
    weights, synced generation and vLLM server mode step together), so every rank asks for the same number of
    sequences; the caller keeps the results of its first len(items) and drops the fillers'."""
    return list(items) + [filler] * (count - len(items))


@dataclass(frozen=True)
class Decoding:
    """How `generate` decodes: greedily at temperature 0 (top_p and top_k unused), else by sampling at `temperature`
    from the `top_p` nucleus with no top-k cut unless `top_k` > 0 (transformers' default keeps the 50 likeliest
    tokens; GRPO samples without a cut). `num_return_sequences` rows per prompt, each at most `max_new_tokens` long."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1

    def generate_kwargs(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "num_return_sequences": self.num_return_sequences,
                **sampling_kwargs(self.temperature, top_p=self.top_p, top_k=self.top_k)}


@dataclass
class Generated:
    """One `generate` call's new tokens, a row per sequence, prompt-major (prompt 0's `num_return_sequences` rows
    first).

    completion_ids  each row's new tokens up to and including its first stop token (nothing of the padding after it)
    finished        whether the row ended in a stop token; False when it ran out of `max_new_tokens`
    """

    completion_ids: list[list[int]]
    finished: list[bool]

    @property
    def num_tokens(self) -> int:
        """Tokens generated over every row, stop tokens included, padding not."""
        return sum(len(ids) for ids in self.completion_ids)

    def texts(self, tokenizer) -> list[str]:
        """Each row decoded with special tokens (the stop token among them) skipped."""
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in self.completion_ids]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a completion, as in TRL's GRPO rollouts: the tokenizer's EOS (a chat template's end of
    turn) and the model's generation_config EOS id(s)."""
    configured = model.generation_config.eos_token_id
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    eos = tokenizer.eos_token_id
    return ids if eos is None or eos in ids else [eos, *ids]


def _first_stop(ids: list[int], stops: Sequence[int]) -> int | None:
    return next((i for i, token in enumerate(ids) if token in stops), None)


@contextmanager
def _seeded(seed: int | torch.Generator | None) -> Iterator[None]:
    """Sampling inside draws from a generator state fixed by `seed`, and the global RNG is restored after; None
    leaves the global RNG to drive (and advance)."""
    if seed is None:
        yield
        return
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(2**62, (), generator=seed))
    # transformers samples from the global RNG (it takes no generator): seed it inside a fork that restores it.
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], decoding: Decoding, *,
             seed: int | torch.Generator | None = None,
             logits_processors: Sequence[LogitsProcessor] = ()) -> Generated:
    """Continue every sequence of `prompt_ids` with one `model.generate` call over a left-padded batch.

    prompt_ids: token ids (`chat_prompt_ids`, or partial sequences to extend); the batch is as large as given, so
        the caller sizes it.
    seed: an int makes the sampling reproducible (the same seed, the same completions); a torch.Generator gives this
        call a seed drawn from it (reproducible from its state, different on every call); None samples from the
        global RNG as it stands. An int or a generator leaves the global RNG as it was.
    logits_processors: run before generate's own warpers (temperature, top-p), on each step's raw logits (what
        transformers does; align.decode's log p recorder relies on it and its tests would catch a change).
    Stops a row at any of `stop_token_ids`.
    """
    device = next(model.parameters()).device
    batch = tokenizer.pad({"input_ids": prompt_ids}, padding=True, padding_side="left",
                          return_tensors="pt").to(device)
    stops = stop_token_ids(model, tokenizer)
    with _seeded(seed):
        output = model.generate(**batch, **decoding.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=stops, logits_processor=LogitsProcessorList(logits_processors))
    rows = output[:, batch["input_ids"].shape[1]:].tolist()
    ends = [_first_stop(row, stops) for row in rows]
    return Generated([row if end is None else row[:end + 1] for row, end in zip(rows, ends)],
                     [end is not None for end in ends])


@contextmanager
def generation_model(trainer) -> Iterator[torch.nn.Module]:
    """The trainer's model ready to `generate`: in eval mode, unwrapped from DDP, with ZeRO-3 weights gathered and
    PEFT adapters active (TRL's `unwrap_model_for_generation`); its training mode and gradient checkpointing are
    restored on exit. Collective under ZeRO-3: every rank must enter it and generate the same number of times."""
    model, was_training = trainer.model, trainer.model.training
    model.eval()
    try:
        with unwrap_model_for_generation(model, trainer.accelerator,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as unwrapped:
            yield unwrapped
    finally:
        model.train(was_training)
