"""Wall time per training phase, accumulated over one optimizer step."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


def _sync() -> None:
    # CUDA kernels run asynchronously; without a sync the time lands in whichever phase happens to block next.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseTimer:
    """`with timer("generation"): ...` adds to that phase; `finish_step()` returns seconds per phase and resets.

    Phases may nest (e.g. "rollout" contains "generation"); the caller decides how to combine them.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._step_start: float | None = None

    @contextmanager
    def __call__(self, phase: str):
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[phase] += time.perf_counter() - start

    def start_step(self) -> None:
        self.seconds.clear()
        _sync()
        self._step_start = time.perf_counter()

    def finish_step(self) -> dict[str, float]:
        """Seconds per phase since `start_step`, plus "step" for the whole step."""
        _sync()
        elapsed = {**self.seconds, "step": time.perf_counter() - (self._step_start or time.perf_counter())}
        self.seconds.clear()
        self._step_start = None
        return elapsed
