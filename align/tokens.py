"""Token ids and padding: how every model in align reads a chat and how sequences are batched.

Reward models (training, scoring as a reward source, best-of-N) and multi-reference DPO (the policy and each
reference, every one with its own tokenizer) all render chats through `chat_ids`, so a model always reads exactly
the tokens it was trained on.
"""

from __future__ import annotations

import torch

FIXED_DATE = "26 Jul 2024"  # what Llama 3.x templates print when no date is available


def chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    """The chat template over `messages`, as token ids. Llama 3.x templates print today's date unless given one: a
    model trained on Monday would read different tokens on Tuesday. Templates that do not use `date_string` ignore
    it. `kwargs` go to `apply_chat_template` (e.g. `add_generation_prompt=True`)."""
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, date_string=FIXED_DATE,
                                         **kwargs)["input_ids"]


def reward_input_ids(tokenizer, prompt: list[dict], response: str) -> list[int]:
    """Token ids a reward model reads for one (prompt, response): the prompt messages plus the response as the
    assistant turn."""
    return chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": response}])


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) with T the longest sequence, right-padded with `pad_id`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def split_by_length(attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """Two buckets of the rows of a left-padded batch, each cut to its own width: [(row indices, first column)].

    `attention_mask` (B, T), B >= 2, marks real tokens of left-padded prompts followed by (right-padded) completions.
    Rows are ordered by their left padding and cut in two where the padded area sum(rows x width) is smallest, so a
    few long prompts no longer widen every row. Each bucket keeps the columns from its first non-padding column on;
    every bucket is non-empty. Together the buckets hold every row exactly once.
    """
    rows, width = attention_mask.shape
    if rows < 2:
        raise ValueError(f"split_by_length needs at least 2 rows, got {rows}.")
    left_pad = attention_mask.ne(0).int().argmax(dim=1)  # index of each row's first real token
    order = torch.argsort(left_pad, descending=True, stable=True)  # shortest prompts (most padding) first
    pads = left_pad[order].tolist()
    # Cut after row k (1 <= k < rows): the first bucket spans width - pads[k - 1] columns, the second width - pads[-1].
    area = [k * (width - pads[k - 1]) + (rows - k) * (width - pads[-1]) for k in range(1, rows)]
    k = 1 + min(range(len(area)), key=area.__getitem__)
    return [(order[:k], pads[k - 1]), (order[k:], pads[-1])]
