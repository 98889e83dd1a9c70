"""The training console: align's replacement for transformers' ProgressCallback / PrinterCallback, which print every
log as a dict of quoted numbers (~1,600 characters a step for GRPO).

Only what is printed changes: every metric still reaches trainer_state.json and the trackers. Kept apart from
`align.console` because it subclasses transformers' TrainerCallback, and that module must import nothing heavy.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from align.console import Column, interactive, metric_parts, step_line


class ConsoleProgress(TrainerCallback):
    """On the main process: a bar over optimizer steps whose postfix shows `columns`, one compact line per logging
    step (`align.console.step_line`), and a bar over held-out batches while the trainer evaluates. Bars are drawn
    only on a terminal; elsewhere (CI, Slurm log files) the lines alone are printed."""

    def __init__(self, columns: Sequence[Column], label: str = ""):
        self.columns, self.label = tuple(columns), label
        self.bar = self.eval_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and interactive():
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label or None, leave=False,
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = step_line(logs, state.global_step, state.max_steps, self.columns, self.label)
        if self.bar is not None and not any(key.startswith("eval_") for key in logs):
            self.bar.set_postfix_str(", ".join(metric_parts(logs, self.columns)), refresh=False)
        if line is not None:
            tqdm.write(line)  # above the bars, which redraw below it

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not (state.is_world_process_zero and interactive()):
            return
        if self.eval_bar is None:
            total = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") \
                else None
            self.eval_bar = tqdm(total=total, desc="held-out eval", leave=False, dynamic_ncols=True)
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_eval_bar()

    def on_predict(self, args, state, control, **kwargs):
        self._close_eval_bar()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _close_eval_bar(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None


def show_progress(trainer, columns: Sequence[Column], label: str = "") -> ConsoleProgress:
    """Replace `trainer`'s console output (transformers' ProgressCallback or PrinterCallback) with a ConsoleProgress
    showing `columns`; returns it."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    progress = ConsoleProgress(columns, label)
    trainer.add_callback(progress)
    return progress
