"""User-style reward functions, loaded by import path in test_sources.py."""


def length_penalty(prompts, completions, completion_ids=None, scale=1.0, **kwargs):
    """-scale per 100 characters."""
    return [-scale * len(c) / 100 for c in completions]


def needs_answer(prompts, completions, answer, **kwargs):
    """Raises on the row whose answer is 'boom'; None where the answer is missing."""
    out = []
    for completion, target in zip(completions, answer):
        if target == "boom":
            raise ValueError("cannot score this answer")
        out.append(None if target is None else float(completion == target))
    return out


def no_kwargs(prompts, completions):
    """Forgets **kwargs, so TRL's extra arguments break it."""
    return [0.0] * len(completions)


NOT_A_FUNCTION = 3


class Scorer:
    def __call__(self, prompts, completions, **kwargs):
        return [1.0] * len(completions)


scorer = Scorer()
