"""Misbehaving user reward functions, loaded by import path from config in test_bad_input.py."""


def raises_on_boom(prompts, completions, answer, **kwargs):
    """Fails on the sample whose answer is 'boom'."""
    if "boom" in answer:
        raise ValueError("cannot parse answer 'boom'")
    return [0.0] * len(completions)


def nan_reward(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)
