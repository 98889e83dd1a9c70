"""Reward functions for the SAGE runs, loaded by import path like a user's own."""

import os


def never(prompts, completions, **kwargs):
    """Every completion fails: every group collapses, so SAGE hints every prompt with a reference solution."""
    return [0.0] * len(completions)


def only_rank_one(prompts, completions, **kwargs):
    """Rank 1's completions all succeed, rank 0's all fail: only rank 0 has collapsed groups to hint."""
    return [float(os.environ.get("RANK", "0") == "1")] * len(completions)


def half(prompts, completions, **kwargs):
    """Every completion scores 0.5: a success or not depending on the success threshold."""
    return [0.5] * len(completions)


def always(prompts, completions, **kwargs):
    """Every completion succeeds."""
    return [1.0] * len(completions)


class SecondLook:
    """Succeeds only on the first prompt it ever sees, and only the second time that prompt is scored (its level-1
    re-roll under SAGE): that group must stop escalating at level 1 while the others go on to level 3."""

    def __init__(self):
        self.target, self.looks = None, 0
        self.__name__ = "second_look"

    def __call__(self, prompts, completions, **kwargs):
        texts = [p[-1]["content"] for p in prompts]
        self.target = self.target or texts[0]
        self.looks += self.target in texts
        return [float(t == self.target and self.looks == 2) for t in texts]


second_look = SecondLook()


def first_group_only(prompts, completions, **kwargs):
    """On each process, the first prompt of every reward call succeeds and the rest fail: a process's batch mixes a
    solved (short, unhinted) group with collapsed (long, hinted) ones."""
    first = prompts[0][-1]["content"]
    return [float(p[-1]["content"] == first) for p in prompts]
