"""SAGE's schedule math: the collapse test, the escalation over hint levels, SAGE-LIGHT's level rule and its
per-prompt state.

Liao et al., "Self-Hinting Language Models Enhance Reinforcement Learning" (arXiv 2602.03143), specified in
specs/sage.md. A group is G completions of one prompt; its statistics (align.rollout.GroupStats, one entry per
group) decide whether SAGE re-rolls it with a hint of level 1, 2 or 3 (SAGE), or which level its prompt carries to
the next step (SAGE-LIGHT, level 0 = no hint). Imports torch and the rollout's statistics only: no model, no TRL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from align.rollout import GroupStats

LEVELS = (1, 2, 3)
MAX_LEVEL = LEVELS[-1]


def collapsed(stats: GroupStats, group_size: int, trigger: str = "no_success") -> torch.Tensor:
    """Bool (num_groups,): groups SAGE hints. All-correct groups never are."""
    if trigger == "no_success":
        return stats.successes == 0
    if trigger == "zero_variance":
        return stats.zero_variance & (stats.successes < group_size)
    raise ValueError(f"Unknown SAGE trigger '{trigger}'; choose no_success or zero_variance.")


def escalate(groups: Sequence[int], roll: Callable[[list[int], int], list[bool]],
             any_rank: Callable[[bool], bool] = bool) -> dict[int, int]:
    """SAGE's escalation: re-roll `groups` at hint levels 1, 2, 3; a group stops at its first level with a success.

    `roll(groups, level)` replaces each listed group whole with a fresh group rolled out under its level-`level`
    hint and returns, per group, whether the new group has a success. Level 3 is final whatever its result.
    `any_rank(local_pending)` says whether any process still has groups to re-roll: every process keeps calling
    `roll` (possibly with no groups) while one does, so collective generation never deadlocks.
    Returns the final level of every group in `groups`.
    """
    final: dict[int, int] = {}
    pending = list(groups)
    for level in LEVELS:
        if not any_rank(bool(pending)):
            break
        solved = roll(pending, level)
        final.update(dict.fromkeys(pending, level))
        pending = [g for g, ok in zip(pending, solved, strict=True) if not ok]
    return final


def next_light_level(level: int, success_frac: float, rule: str = "paper", alpha: float = 0.35,
                     low: float = 0.1) -> int:
    """SAGE-LIGHT's level after a group at `level` succeeded on `success_frac` of its completions.

    paper: p < alpha raises the level (capped at 3); it never decreases.
    bidirectional: p <= low raises it; p > alpha lowers it (floored at 0).
    """
    if rule == "paper":
        return min(level + 1, MAX_LEVEL) if success_frac < alpha else level
    if rule == "bidirectional":
        if success_frac <= low:
            return min(level + 1, MAX_LEVEL)
        if success_frac > alpha:
            return max(level - 1, 0)
        return level
    raise ValueError(f"Unknown SAGE-LIGHT rule '{rule}'; choose paper or bidirectional.")


@dataclass
class HintState:
    """SAGE-LIGHT's per-prompt state, keyed by `prompt_key`; identical on every rank, saved with checkpoints.

    levels      the current hint level per prompt (absent = 0: never seen)
    last_hints  the last hint that parsed, per prompt (reused when a fresh one fails)
    """

    levels: dict[str, int] = field(default_factory=dict)
    last_hints: dict[str, list[str]] = field(default_factory=dict)

    def update(self, key: str, level: int, hint: list[str] | None = None) -> None:
        self.levels[key] = level
        if hint is not None:
            self.last_hints[key] = hint

    def state_dict(self) -> dict:
        """A copy: later updates do not change it."""
        return {"levels": dict(self.levels), "last_hints": {k: list(v) for k, v in self.last_hints.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.levels = {k: int(v) for k, v in state["levels"].items()}
        self.last_hints = {k: list(v) for k, v in state["last_hints"].items()}
