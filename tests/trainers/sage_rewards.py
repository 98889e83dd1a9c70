"""Reward functions for the SAGE runs, loaded by import path like a user's own."""

import os


def never(prompts, completions, **kwargs):
    """Every completion fails: every group collapses, so SAGE hints every prompt with a reference solution."""
    return [0.0] * len(completions)


def only_rank_one(prompts, completions, **kwargs):
    """Rank 1's completions all succeed, rank 0's all fail: only rank 0 has collapsed groups to hint."""
    return [float(os.environ.get("RANK", "0") == "1")] * len(completions)


def always(prompts, completions, **kwargs):
    """Every completion succeeds."""
    return [1.0] * len(completions)
