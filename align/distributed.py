"""Agreement across the processes of a launch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def decided_by_main(is_main_process: bool, num_processes: int, decide: Callable[[], T]) -> T:
    """`decide()` run on the main process only (it may read files, print, or write what only rank 0 writes), and its
    picklable result given to every process. Every process must call this at the same point: it is a collective."""
    if num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list  # only a multi-process launch needs it

    box = [decide() if is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
