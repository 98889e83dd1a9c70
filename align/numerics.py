"""Numerical helpers shared by the methods' pure math."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32: bfloat16 / float16 / integers / bool become float32, float64 stays float64.

    Losses built from exp / log / erf terms are computed at this precision whatever the model's dtype.
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))
