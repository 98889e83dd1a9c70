"""The processes of a launch: this one's device and process state, and agreement across them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from align.config import world_size

T = TypeVar("T")


def cpu_backend() -> str | None:
    """The torch.distributed backend to request on a multi-process CPU launch (gloo), else None (launcher default)."""
    return "gloo" if not torch.cuda.is_available() and world_size() > 1 else None


def distributed_state() -> PartialState:
    """accelerate's process state, initialised exactly as the trainers' TrainingArguments will initialise it."""
    kwargs = {"backend": cpu_backend()} if cpu_backend() else {}
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        kwargs["cpu"] = True  # what TrainingArguments does for the same environment
    return PartialState(**kwargs)


def local_device() -> torch.device:
    """This process's device, read from the launcher's environment. Reward sources and reference models are loaded
    before align sets up accelerate's process state with the right backend (the preflight comes first); creating
    that state here, with defaults, would make every rank believe it runs alone."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def decided_by_main(is_main_process: bool, num_processes: int, decide: Callable[[], T]) -> T:
    """`decide()` run on the main process only (it may read files, print, or write what only rank 0 writes), and its
    picklable result given to every process. Every process must call this at the same point: it is a collective."""
    if num_processes == 1:
        return decide()
    box = [decide() if is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
