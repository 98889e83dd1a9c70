"""SAGE's hint text: the hint writer's request, parsing its reply, the leak filter, and the hinted prompt.

Liao et al., "Self-Hinting Language Models Enhance Reinforcement Learning" (arXiv 2602.03143), specified in
specs/sage.md. The policy is asked (`hint_request`) for a JSON object `{"level_1": ..., "level_2": ..., "level_3":
...}` of three progressive hints from the question and the privileged reference solution; `parse_hints` recovers
the levels from a model's imperfect reply, `leaks_answer` rejects a hint that states the answer, and `with_hint`
puts one level into the prompt the group is re-rolled with. Plain Python on prompts (a string, or chat messages).
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Sequence

from align.methods.sage.config import HintConfig
from align.methods.sage.math import LEVELS, MAX_LEVEL

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_FIELD = re.compile(r"\{(question|solution|hint)\}")
# A LaTeX command written with a single backslash inside a JSON string ("\frac", "\times") would be read as a JSON
# escape (form feed, tab, ...): such backslashes are doubled before a second parsing attempt.
_LATEX_BACKSLASH = re.compile(r"(?<!\\)\\(?=[A-Za-z]{2,})")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


def fill(template: str, **values: str) -> str:
    """Substitute `{question}`, `{solution}`, `{hint}` in one pass; other braces (JSON, LaTeX) are left alone."""
    return _FIELD.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def _loads_tolerant(text: str):
    """JSON, or JSON with trailing commas, or a Python literal (single quotes); None when none of them parse."""
    without_commas = _TRAILING_COMMA.sub(r"\1", text)
    for candidate in (text, without_commas):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    try:
        return ast.literal_eval(without_commas)  # literals only: never evaluates code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _levels(obj) -> list[str] | None:
    if not isinstance(obj, dict):
        return None
    levels = [obj.get(f"level_{level}") for level in LEVELS]
    if not all(isinstance(v, str) and v.strip() for v in levels):
        return None
    return [v.strip() for v in levels]


def _hint_object(text: str) -> list[str] | None:
    """The hint levels of the object `text` opens with: strict JSON (trailing prose ignored), else a tolerant parse
    up to the last "}"; single-backslash LaTeX is retried when JSON read it as escapes."""
    fallback = None
    for variant in (text, _LATEX_BACKSLASH.sub(r"\\\\", text)):
        try:
            levels = _levels(json.JSONDecoder().raw_decode(variant)[0])
        except json.JSONDecodeError:
            levels = _levels(_loads_tolerant(variant[:variant.rfind("}") + 1]))
        if levels is not None and not any(_CONTROL.search(v) for v in levels):
            return levels
        fallback = fallback or levels
    return fallback


def parse_hints(text: str) -> list[str] | None:
    """The three hint levels of a hint writer's reply, or None when they cannot all be recovered.

    Accepts the JSON object `{"level_1": ..., "level_2": ..., "level_3": ...}` inside code fences or surrounding
    prose (which may itself contain braces), with single quotes, trailing commas or single-backslash LaTeX. Every
    level must be a non-empty string.
    """
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    end = body.rfind("}")
    for start in (i for i, char in enumerate(body) if char == "{" and i < end):
        levels = _hint_object(body[start:])
        if levels is not None:
            return levels
    return None


def _answer_target(answer: str) -> str:
    # Lazy for start-up time: the align.rewards package loads transformers and datasets (its reward-model source),
    # seconds that parsing hint text, warm-start data and the schedule tests do not need.
    from align.rewards.verifiers import extract_boxed

    return re.sub(r"\s+", "", extract_boxed(answer) or answer)


def leaks_answer(levels: Sequence[str], answer) -> bool:
    """Whether any hint level states `answer` as a whole token (whitespace ignored; "85" does not match "185")."""
    target = _answer_target("" if answer is None else str(answer))
    if not target:
        return False
    spaced = r"\s*".join(re.escape(char) for char in target)
    pattern = re.compile(r"(?<![0-9A-Za-z.])" + spaced + r"(?![0-9A-Za-z])")
    return any(pattern.search(level) for level in levels)


def question_text(prompt) -> str:
    """The question a prompt asks: the last user message of a conversation, or the prompt string itself."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def with_hint(prompt, hint: str, solve_template: str):
    """The prompt with its question replaced by `solve_template` (question + hint); other messages unchanged."""
    if isinstance(prompt, str):
        return fill(solve_template, question=prompt, hint=hint)
    index = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    hinted = fill(solve_template, question=prompt[index]["content"], hint=hint)
    return [*prompt[:index], {**prompt[index], "content": hinted}, *prompt[index + 1:]]


def hint_request(prompt, solution: str, hint: HintConfig) -> list[dict]:
    """The conversation that asks the policy for a hint JSON."""
    messages = [{"role": "system", "content": hint.system_prompt}] if hint.system_prompt else []
    user = fill(hint.user_template, question=question_text(prompt), solution=solution)
    return [*messages, {"role": "user", "content": user}]


def hint_demonstrations(rows: Sequence[dict], hint: HintConfig, hints_column: str, seed: int = 0) -> list[dict]:
    """SFT rows that teach a model SAGE's two skills, for rows whose `hints_column` holds gold hint JSON.

    Per row: the hint request -> the gold JSON, and the question with a hint of a random level -> the reference
    solution. Used by the warm start of the embedded recipes, whose tiny model has never seen a hint; real instruct
    models write and use hints without it.
    """
    rng = random.Random(seed)
    demos = []
    for row in rows:
        levels = parse_hints(row.get(hints_column) or "")
        solution = row.get(hint.solution_column)
        if levels is None or not solution:
            continue
        demos.append({"prompt": hint_request(row["prompt"], solution, hint),
                      "completion": [{"role": "assistant", "content": row[hints_column]}]})
        hinted = with_hint(row["prompt"], levels[rng.randrange(MAX_LEVEL)], hint.solve_template)
        demos.append({"prompt": hinted, "completion": [{"role": "assistant", "content": solution}]})
    return demos
