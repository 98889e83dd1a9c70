"""Residual-stream activations at every decoder block's output (last prompt token), and the ablation hook.

Both go through forward hooks on the decoder blocks (not `output_hidden_states`, whose last entry is after the final
norm in Hugging Face models). Activations leave the accelerator after every batch, as float32 (or float64) on the CPU:
a run holds L x n x d floats per (model, format, prompt set), never a model's worth of activations on the GPU.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from align.console import phase_progress

CHAT, RAW = "chat", "raw"


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The model's decoder blocks, in order: the ModuleList of `config.num_hidden_layers` modules (`model.layers`
    in Llama / Qwen2 / Gemma / Mistral, `transformer.h` in GPT-2)."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__} has no list of {count} decoder blocks to hook")


def _hidden(output) -> torch.Tensor:
    """A block's output hidden states: the tensor itself (transformers >= 5) or the first entry of its tuple."""
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def raw_text(messages: list[dict]) -> str:
    """The bare text of a chat prompt: its user turns' contents, joined by blank lines (system turns dropped: they
    are part of the chat format, not of the request)."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "user")


def render(tokenizer, prompts: list[list[dict]], fmt: str) -> list[str]:
    """The text each model reads: `chat`, the tokenizer's template with the generation prompt; `raw`, `raw_text`."""
    if fmt == CHAT:
        return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    if fmt == RAW:
        return [raw_text(p) for p in prompts]
    raise ValueError(f"format must be '{CHAT}' or '{RAW}', got {fmt!r}")


@torch.no_grad()
def last_token_activations(model, tokenizer, texts: list[str], *, add_special_tokens: bool, batch_size: int = 8,
                           progress: str | None = None) -> torch.Tensor:
    """Residual stream at the output of every decoder block at each text's last token: (L, n, d) on the CPU, in the
    model's dtype or float32 if that is narrower (bf16 / fp16 activations are upcast).

    Left padding puts every text's last token in the last position; position ids count real tokens only (as
    `generate` does), so a text's activations do not depend on what it is batched with. No truncation.
    `add_special_tokens`: False for chat-templated text (the template has its own; adding a BOS would double it),
    True for raw text (what the tokenizer adds to plain text, e.g. Llama's BOS).
    """
    blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    captured: list[list[torch.Tensor]] = [[] for _ in blocks]

    def keep(index: int):
        def hook(module, args, output):
            last = _hidden(output)[:, -1, :]
            captured[index].append((last.float() if last.element_size() < 4 else last).cpu())
        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in phase_progress(range(0, len(texts), batch_size), progress,
                                    total=-(-len(texts) // batch_size)):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=add_special_tokens).to(device)
            positions = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            model(**batch, position_ids=positions, use_cache=False)
    finally:
        tokenizer.padding_side = padding_side
        for handle in handles:
            handle.remove()
    return torch.stack([torch.cat(rows) for rows in captured])


@contextlib.contextmanager
def projected_out(model, bases: dict[int, torch.Tensor]) -> Iterator[None]:
    """Inside the block, block l's output h becomes h - U U^T h at every position (prompt and generated tokens),
    for each `bases[l]` = U (d x k, orthonormal columns; k = 0 changes nothing)."""
    blocks = decoder_blocks(model)

    def hook_for(basis: torch.Tensor):
        def hook(module, args, output):
            h = _hidden(output)
            u = basis.to(device=h.device, dtype=h.dtype)
            return _replace_hidden(output, h - (h @ u) @ u.T)
        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(basis))
               for layer, basis in bases.items() if basis.shape[1] > 0]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
