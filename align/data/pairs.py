"""Offline preference pairs (prompt, chosen, rejected) for f-HAL's pairs term; later also for DPO-style trainers.

`load_pairs(cfg)` returns rows `{"prompt": chat messages, "chosen": str, "rejected": str}` from the embedded
synthetic pairs (a correct worked arithmetic solution vs a careless one that forgets carries or borrows) or from
the same kinds of sources as the training data (local file or directory, hub name), with chosen / rejected columns
or two response columns plus the index of the preferred one (PKU-SafeRLHF's layout). A response given as a chat
(list of messages) contributes its last message's content. Raises DataError naming the column and the fix.
"""

from __future__ import annotations

import random

from align.config import DataConfig, PairsConfig
from align.data.loading import DataError, _is_empty, _load_source, to_messages
from align.data.synthetic import arithmetic_row


def arithmetic_pairs(num_rows: int, digits: int = 2, seed: int = 0) -> list[dict]:
    """Additions with a carry out of the ones column: chosen = the correct worked solution, rejected = the
    carry-forgetting one (whose answer is then wrong)."""
    rng, rows, seen = random.Random(seed), [], set()
    low, high = 10 ** (digits - 1), 10**digits - 1
    space = sum(1 for a in range(low, high + 1) for b in range(low, high + 1) if (a % 10) + (b % 10) >= 10)
    if num_rows > space:
        raise ValueError(f"Only {space} distinct {digits}-digit additions have a carry in the ones column; asked for "
                         f"{num_rows} pairs (algorithm.pairs.num_synthetic).")
    while len(rows) < num_rows:
        a, b = rng.randint(low, high), rng.randint(low, high)
        row = arithmetic_row(a, "+", b, sloppy=True)
        if (a % 10) + (b % 10) < 10 or (a, b) in seen:  # no carry from the ones: nothing to prefer
            continue
        seen.add((a, b))
        rows.append({"prompt": row["prompt"], "chosen": row["solution"], "rejected": row["demonstration"]})
    return rows


def _text(value, column: str, index: int) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        value = value[-1]["content"]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"pairs row {index}: '{column}' is empty or not text ({type(value).__name__}).")
    return value


def load_pairs(cfg: PairsConfig) -> list[dict]:
    if cfg.source == "synthetic":
        return arithmetic_pairs(cfg.num_synthetic)[:cfg.max_rows]
    dataset, _ = _load_source(DataConfig(source=cfg.source, subset=cfg.subset, split=cfg.split))
    if cfg.preferred_index_column:  # two responses + the index of the preferred one
        names = {"prompt": cfg.prompt_column, "preferred_index": cfg.preferred_index_column,
                 **{f"response_columns[{i}]": c for i, c in enumerate(cfg.response_columns)}}
    else:
        names = {"prompt": cfg.prompt_column, "chosen": cfg.chosen_column, "rejected": cfg.rejected_column}
    for canonical, column in names.items():
        if column not in dataset.column_names:
            key = canonical if canonical.startswith("response_columns") else f"{canonical}_column"
            raise DataError(f"the pairs dataset '{cfg.source}' has no '{column}' column (columns: "
                            f"{', '.join(dataset.column_names)}); set algorithm.pairs.{key}.")
    if cfg.max_rows is not None:
        dataset = dataset.select(range(min(cfg.max_rows, len(dataset))))
    rows = []
    for i, row in enumerate(dataset):
        if _is_empty(row[cfg.prompt_column]):
            raise DataError(f"pairs row {i}: '{cfg.prompt_column}' is empty.")
        if cfg.preferred_index_column:
            preferred = row[cfg.preferred_index_column]
            if preferred not in (0, 1):
                raise DataError(f"pairs row {i}: '{cfg.preferred_index_column}' is {preferred!r}, not 0 or 1.")
            chosen, rejected = cfg.response_columns[preferred], cfg.response_columns[1 - preferred]
        else:
            chosen, rejected = cfg.chosen_column, cfg.rejected_column
        rows.append({"prompt": to_messages(row[cfg.prompt_column], cfg.system_prompt),
                     "chosen": _text(row[chosen], chosen, i), "rejected": _text(row[rejected], rejected, i)})
    if not rows:
        raise DataError(f"the pairs dataset '{cfg.source}' (split {cfg.split}) is empty.")
    return rows
