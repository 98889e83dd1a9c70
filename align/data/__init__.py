"""Datasets for align trainers: embedded synthetic tasks and loading of local files, saved datasets and hub datasets.

`load_splits(cfg.data)` returns `(train, held_out)` with canonical columns `prompt` (chat messages), `answer`
(verifier target) and `solution` (reference solution); see `align.data.loading` for the full contract.
"""

from align.data.loading import DataError, load_splits, rows_to_dataset, to_messages
from align.data.synthetic import TASKS

__all__ = ["TASKS", "DataError", "load_splits", "rows_to_dataset", "to_messages"]
