"""Loaders for the local lm-eval tasks in this directory (`custom_dataset: !function data.<name>` in their YAML).

lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset` unchanged, so a relative path would resolve
against the caller's working directory; these loaders read the JSONL files next to this file instead, so
`--include_path tests/gate/lm_eval_task` works from anywhere and nothing is written to the datasets cache.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _test_split(name: str):
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return DatasetDict({"test": Dataset.from_list(rows)})


def multiple_choice(**_kwargs):
    """30 one-digit additions, four numeric choices each (`mc.jsonl`: question, choices, label)."""
    return _test_split("mc.jsonl")


def generation(**_kwargs):
    """10 one-digit additions answered by generation (`gen.jsonl`: question, answer)."""
    return _test_split("gen.jsonl")
