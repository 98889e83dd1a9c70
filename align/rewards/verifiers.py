"""Built-in verifiers: pure reward functions over completions, called the way TRL's GRPOTrainer calls them.

Every reward source has the signature

    fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]

`completions` items are plain strings or conversational message lists
(`[{"role": "assistant", "content": ...}]`). `columns` carries the dataset's other columns as lists aligned
with `completions` (here: `answer`), plus extras TRL adds (`trainer_state`, `log_extra`, `log_metric`, ...)
which a source must accept and may ignore. A value of None means "not applicable to this sample"; TRL reads it
as NaN and leaves it out of the weighted nansum.

The answer-checking verifiers read the gold target from the `answer` column and return None for a row whose
answer is None or "". Only the last `\\boxed{...}` of a completion counts as its final answer.
"""

from __future__ import annotations

import functools
import math
import re
import threading

from math_verify import parse, verify

_BOXED = re.compile(r"\\boxed\s*\{")
# Integers and decimals, optionally negative, with thousands separators ("-1,234.5"). A minus directly after a
# word character or closing bracket is a subtraction ("47-38"), not a sign.
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
# What format_boxed tolerates after the box: whitespace, punctuation, closing math delimiters ($, \], \)).
_TRAILER = re.compile(r"(?:\s|[.,;:!?]|\$|\\\]|\\\))*")


def completion_text(completion) -> str:
    """The text of one completion: a string as is; for a message list, the content of the last message."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1]["content"]
    return content if isinstance(content, str) else str(content)


def boxed_spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) spans of the top-level `\\boxed{...}` contents, left to right, and whether all are closed.

    Escaped braces (`\\{`, `\\}`) do not count towards nesting. Scanning stops at the first unclosed box.
    """
    spans, position = [], 0
    while (match := _BOXED.search(text, position)) is not None:
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            return spans, False
        spans.append((match.end(), i - 1))
        position = i
    return spans, True


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{...}` in `text`, nested braces kept (`\\boxed{\\frac{1}{2}}`
    gives `\\frac{1}{2}`); None when there is none or when a box is left unclosed (a truncated final answer is
    no answer)."""
    spans, closed = boxed_spans(text)
    if not spans or not closed:
        return None
    start, end = spans[-1]
    return text[start:end]


def _gold(answer) -> str | None:
    """The answer column's value as a string, or None when the row has no target."""
    if answer is None:
        return None
    answer = str(answer).strip()
    return answer or None


def _answers(answer, source: str) -> list:
    """The answer column; a source that checks answers cannot run without one."""
    if answer is None:
        raise ValueError(f"'{source}' needs an 'answer' column in the dataset (the gold target).")
    return answer


def _normalize_space(text: str) -> str:
    return " ".join(text.split())


def _per_sample(completions, answer, source: str, score) -> list[float | None]:
    """`score(completion_text, gold_answer)` for each sample; None where the row has no answer."""
    rewards = []
    for completion, target in zip(completions, _answers(answer, source), strict=True):
        target = _gold(target)
        rewards.append(None if target is None else score(completion_text(completion), target))
    return rewards


def exact_match(prompts, completions, completion_ids=None, *, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the candidate equals the answer up to whitespace (stripped, inner runs collapsed), else 0.0.

    The candidate is the last boxed content if the completion has one, else the whole completion.
    """
    def score(text: str, target: str) -> float:
        boxed = extract_boxed(text)
        return float(_normalize_space(boxed if boxed is not None else text) == _normalize_space(target))

    return _per_sample(completions, answer, "exact_match", score)


def _to_float(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric_match(
    prompts, completions, completion_ids=None, *, answer=None, rel_tol: float = 1e-6, **kwargs
) -> list[float | None]:
    """1.0 when candidate and answer parse as numbers with |a - b| <= rel_tol * max(1, |b|), else 0.0.

    The candidate is the last boxed content if there is one, else the last number in the text (ints, decimals,
    negatives, thousands commas). Anything that does not parse as a finite number scores 0.0.
    """
    def score(text: str, target: str) -> float:
        candidate = extract_boxed(text)
        if candidate is None:
            numbers = _NUMBER.findall(text)
            candidate = numbers[-1] if numbers else ""
        a, b = _to_float(candidate), _to_float(target)
        return float(a is not None and b is not None and abs(a - b) <= rel_tol * max(1.0, abs(b)))

    return _per_sample(completions, answer, "numeric_match", score)


def _timeout() -> int | None:
    """math-verify's timeout is signal.alarm, which only works in the main thread (elsewhere math-verify
    raises ValueError). Off the main thread we run without one: our inputs are single boxed expressions, which
    parse in about 0.1 ms."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=16384)
def _parse_gold(answer: str) -> tuple:
    """math-verify parse of a gold answer, cached: each answer is checked against num_generations completions.

    A bare answer ("85", "x+1") is wrapped as `$...$`, which math-verify reads as LaTeX (unwrapped, "x+1" does
    not parse); plain parsing is the fallback.
    """
    if "\\boxed" in answer or "$" in answer:
        return tuple(parse(answer, parsing_timeout=_timeout()))
    return tuple(
        parse(f"${answer}$", parsing_timeout=_timeout()) or parse(answer, parsing_timeout=_timeout())
    )


def boxed_match(prompts, completions, completion_ids=None, *, answer=None, **kwargs) -> list[float | None]:
    """1.0 when the last `\\boxed{}` of the completion is mathematically equal to the answer (math-verify:
    `0.5` equals `\\frac{1}{2}`, `85.0` equals `85`), else 0.0. A completion without a closed `\\boxed{}`
    scores 0.0."""
    def score(text: str, target: str) -> float:
        boxed, gold = extract_boxed(text), _parse_gold(target)
        if boxed is None or not gold:
            return 0.0
        # Parse the last box alone: math-verify would read all boxes in the text as one set of answers.
        prediction = parse(f"\\boxed{{{boxed}}}", parsing_timeout=_timeout())
        return float(verify(list(gold), prediction, timeout_seconds=_timeout()))

    return _per_sample(completions, answer, "boxed_match", score)


def format_boxed(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
    """1.0 when the completion has exactly one `\\boxed{...}`, closed, followed by nothing but whitespace,
    punctuation or closing math delimiters (`$`, `\\]`, `\\)`); else 0.0. Needs no answer, so never None."""
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        spans, closed = boxed_spans(text)
        well_formed = closed and len(spans) == 1 and len(_BOXED.findall(text)) == 1
        rewards.append(float(well_formed and _TRAILER.fullmatch(text, spans[0][1] + 1) is not None))
    return rewards


VERIFIERS = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "boxed_match": boxed_match,
    "format_boxed": format_boxed,
}
