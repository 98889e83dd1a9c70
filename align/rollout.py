"""Shared rollout statistics: one place that turns a flat reward vector into per-group facts.

GRPO samples G completions per prompt and TRL lays them out group by group (prompt 0's G completions, then prompt
1's, ...). Every diagnostic that reasons about groups (GRPO's zero-variance fraction, SAGE's collapse test, f-GRPO's
D+/D- split) starts from `group_stats`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics; every field has shape (num_groups,)."""

    mean: torch.Tensor  # mean reward over the group's scorable completions
    std: torch.Tensor  # population std over the same
    zero_variance: torch.Tensor  # bool: all scorable rewards equal (advantages are all zero)
    successes: torch.Tensor  # int: completions with reward > success_threshold

    def metrics(self) -> dict[str, float]:
        """Scalar summaries for logging."""
        solved = self.successes > 0
        return {
            "zero_variance_frac": self.zero_variance.float().mean().item(),
            "solved_frac": solved.float().mean().item(),
            "within_group_std": torch.nanmean(self.std).item(),
        }


def group_stats(rewards: torch.Tensor, group_size: int, success_threshold: float = 0.0) -> GroupStats:
    """Statistics of `rewards` (shape (num_groups * group_size,), grouped contiguously; NaN = unscorable).

    A group whose completions are all unscorable has NaN mean/std and counts as zero-variance.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}.")
    grouped = rewards.view(-1, group_size).float()
    mean = torch.nanmean(grouped, dim=1)
    std = torch.nanmean((grouped - mean.unsqueeze(1)) ** 2, dim=1).sqrt()
    zero_variance = torch.isclose(std, torch.zeros_like(std)) | torch.isnan(std)
    successes = (grouped > success_threshold).sum(dim=1)  # NaN compares False
    return GroupStats(mean=mean, std=std, zero_variance=zero_variance, successes=successes)


def combine_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The scalar task reward, as TRL combines it: weighted nansum over sources (shape (n, num_sources) -> (n,)).

    A completion for which every source returned None (NaN) is unscorable and stays NaN.
    """
    rewards = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return rewards


def prompt_key(prompt) -> str:
    """A stable identity for a prompt (chat messages or text) across epochs, shuffles, ranks and restarts."""
    return hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SolvedPrompts:
    """Which prompts training has seen, and which of them got at least one successful completion (by key)."""

    seen: set[str] = field(default_factory=set)
    solved: set[str] = field(default_factory=set)

    def update(self, keys: list[str], solved: list[bool]) -> None:
        self.seen.update(keys)
        self.solved.update(k for k, ok in zip(keys, solved, strict=True) if ok)

    def never_solved_frac(self) -> float:
        return 1.0 - len(self.solved) / len(self.seen) if self.seen else 0.0

    def state_dict(self) -> dict:
        return {"seen": sorted(self.seen), "solved": sorted(self.solved)}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.solved = set(state["seen"]), set(state["solved"])
