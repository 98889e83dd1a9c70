"""A dense reward for resume tests: the untrained tiny model never solves a task, and all-zero rewards would leave the
weights untouched (zero advantages), proving nothing about exact resume."""

from align.rewards.verifiers import completion_text


def digit_share(prompts, completions, **kwargs) -> list[float]:
    """Share of digits among a completion's characters."""
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
