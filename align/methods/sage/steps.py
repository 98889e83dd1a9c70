"""SAGE's run steps (align.registry): GRPO's, with the reference solutions hints are written from checked first."""

from __future__ import annotations

import logging

from align.config import AlignConfig
from align.data import DataError
from align.methods.grpo import steps as grpo_steps
from align.methods.sage.trainer import build_sage_trainer
from align.registry import Built, Prepared, RunContext

log = logging.getLogger("align")


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    prepared = grpo_steps.prepare(config, tokenizer)
    check_reference_solutions(prepared.train_dataset, config.algorithm.hint.solution_column)
    return prepared


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    return grpo_steps.build(config, tokenizer, prepared, run, build_trainer=build_sage_trainer)


def check_reference_solutions(train_dataset, column: str) -> None:
    """SAGE writes hints from a reference-solution column: it must exist, and some rows must fill it (others may
    not: they train without hints)."""
    if column not in train_dataset.column_names:
        raise DataError(f"SAGE writes hints from reference solutions, but the training data has no '{column}' "
                        f"column (columns: {', '.join(train_dataset.column_names)}). Map one with "
                        f"data.columns.solution=<column> or set algorithm.hint.solution_column.")
    with_solution = sum(1 for value in train_dataset[column] if value)
    if with_solution == 0:
        raise DataError(f"Every row's '{column}' is empty, so SAGE would never hint; use algorithm=grpo or fill it.")
    if with_solution < len(train_dataset):
        log.warning("%d of %d training rows have no '%s'; they train without hints.",
                    len(train_dataset) - with_solution, len(train_dataset), column)
