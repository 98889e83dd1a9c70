"""Embedded synthetic tasks: generated deterministically, verifiable, with step-by-step reference solutions.

Each row carries the canonical columns every align trainer understands:
  prompt   - chat messages, `[{"role": "user", "content": "Compute 47+38."}]`
  answer   - the verifier target, e.g. "85"
  solution - the correct step-by-step reference solution ending in `\\boxed{answer}` (privileged: SAGE hints)
  hints    - gold SAGE hints as JSON, three levels written from the correct steps without stating the answer; they
             teach the tiny model to write and use hints in a warm start (`warm_start.hints_column`)

  demonstration - the worked solution an imperfect teacher wrote: with probability `sloppy_fraction` it forgets
             carries and borrows (its worked answer is then wrong whenever one occurs), otherwise it is `solution`

A model warm-started on sloppy demonstrations imitates the mistake, and RL against the verifier (`answer` is always
the true result) can unlearn it: the quickstart uses this to show GRPO improving on imperfect supervision. The
privileged `solution` SAGE writes hints from is always correct.

`arithmetic_chat` is the same problems for a pretrained chat model: each question told as a one-sentence word
problem, under a system prompt asking for the answer in `\\boxed{}`; the other columns (and so the verifiers that
score them) are unchanged.
"""

from __future__ import annotations

import json
import random
import re

OPERATORS = ("+", "-")

CHAT_SYSTEM_PROMPT = "Solve the math word problem. Give the final answer as a number in \\boxed{}, e.g. \\boxed{42}."
# One story per operator is picked by the operands, so a problem always reads the same (and stays unique).
WORD_PROBLEMS = {
    "+": ("Mia has {a} stickers and her friend gives her {b} more. How many stickers does Mia have now?",
          "A farmer picks {a} apples in the morning and {b} apples in the afternoon. How many apples does he pick?",
          "A library has {a} books on one shelf and {b} books on another. How many books are on the two shelves?",
          "A bus carries {a} passengers, and {b} more get on at the next stop. How many passengers are on the bus?"),
    "-": ("Mia has {a} stickers and gives {b} of them to her friend. How many stickers does Mia have left?",
          "A farmer has {a} apples and sells {b} of them. How many apples does he have left?",
          "A library has {a} books and lends out {b} of them. How many books are still in the library?",
          "A bus carries {a} passengers, and {b} get off at the next stop. How many passengers are still on the bus?"),
}
# The question `arithmetic_row` writes, e.g. "Compute 47+38."
_QUESTION = re.compile(r"Compute (\d+)([+-])(\d+)\.")


def _digits(n: int, width: int) -> list[int]:
    """Little-endian digits of n, zero-padded to width."""
    return [(n // 10**i) % 10 for i in range(width)]


def addition_steps(a: int, b: int, forget_carries: bool = False) -> tuple[list[str], int]:
    """Column addition from the ones digit up, one step per column, carries written out; returns (steps, result).

    With `forget_carries` the carry is never written or added, and the result is the one that mistake gives.
    """
    width = max(len(str(a)), len(str(b)))
    steps, carry, result = [], 0, 0
    for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
        total = x + y + carry
        expression = f"{x}+{y}" + (f"+{carry}" if carry else "")
        is_last = i == width - 1
        carry = 0 if forget_carries else total // 10
        steps.append(f"{expression}={total}" + (", carry 1" if carry and not is_last else ""))
        result += (total if is_last else total % 10) * 10**i
    return steps, result


def subtraction_steps(a: int, b: int, forget_borrows: bool = False) -> tuple[list[str], int]:
    """Column subtraction a - b (a >= b) from the ones digit up, borrows written out; returns (steps, result).

    With `forget_borrows` a borrowed ten is used but never paid back, and the result is the one that mistake gives.
    """
    width = len(str(a))
    steps, borrow, result = [], 0, 0
    for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
        top = x - borrow
        borrow = 1 if top < y else 0
        difference = top + 10 * borrow - y
        steps.append(f"{top + 10 * borrow}-{y}={difference}" + (", borrow 1" if borrow and not forget_borrows else ""))
        borrow = 0 if forget_borrows else borrow
        result += difference * 10**i
    return steps, result


def gold_hints(op: str, steps: list[str]) -> str:
    """Three progressive hints as SAGE's JSON: the method, the first column, every column but the last."""
    method = ("Add columns right to left, carrying 1 when a sum exceeds 9." if op == "+"
              else "Subtract columns right to left, borrowing 1 when the top digit is smaller.")
    if len(steps) > 1:
        first = f"Ones column: {steps[0]}."
        most = f"Columns: {'; '.join(steps[:-1])}; then finish the last column."
    else:
        first = most = "There is a single column; work it out."
    return json.dumps({"level_1": method, "level_2": first, "level_3": most})


def arithmetic_row(a: int, op: str, b: int, sloppy: bool = False) -> dict:
    """One problem; `sloppy` writes the demonstration as a teacher who forgets carries/borrows."""
    if op not in OPERATORS:
        raise ValueError(f"Unsupported operator '{op}'; choose from {OPERATORS}.")
    if op == "-" and a < b:
        a, b = b, a
    method = addition_steps if op == "+" else subtraction_steps

    def worked(careless: bool) -> tuple[str, list[str]]:
        steps, result = method(a, b, careless)
        return "; ".join(steps) + f". Answer: \\boxed{{{result}}}", steps

    solution, steps = worked(False)
    answer = a + b if op == "+" else a - b
    return {"prompt": [{"role": "user", "content": f"Compute {a}{op}{b}."}], "answer": str(answer),
            "solution": solution, "demonstration": worked(True)[0] if sloppy else solution,
            "hints": gold_hints(op, steps), "carries": sum(", carry 1" in s or ", borrow 1" in s for s in steps)}


def arithmetic(num_rows: int, *, digits: int = 2, operators: tuple[str, ...] = ("+",), seed: int = 0,
               sloppy_fraction: float = 0.0, min_carries: int = 0, exclude: set[str] | None = None) -> list[dict]:
    """`num_rows` distinct problems with operands of exactly `digits` digits and at least `min_carries` carries.

    A problem's `carries` counts the columns whose correct solution passes a carry (or borrow) on: the steps a
    teacher who forgets carries gets wrong, so `min_carries` > 0 makes a split that such a model cannot solve.
    `exclude` holds question strings that must not appear (used to keep the held-out split disjoint from train).
    Raises ValueError when the problem space is too small for the request.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}.")
    if min_carries > digits - 1:
        raise ValueError(f"a {digits}-digit problem carries at most {digits - 1} time(s); min_carries={min_carries} "
                         f"leaves none.")
    for op in operators:
        if op not in OPERATORS:
            raise ValueError(f"Unsupported operator '{op}'; choose from {OPERATORS}.")
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    space = (high - low + 1) ** 2 * len(operators)
    seen = set(exclude or ())
    if num_rows > space - len(seen):
        raise ValueError(f"Only {space - len(seen)} distinct {digits}-digit problems are available; "
                         f"asked for {num_rows}.")
    rng = random.Random(seed)
    rows, draws = [], 0
    while len(rows) < num_rows:
        draws += 1
        if draws > 100 * num_rows + 100_000:  # `space` counts problems of any carry count: the filter may leave fewer
            raise ValueError(f"Found only {len(rows)} distinct {digits}-digit problems with at least {min_carries} "
                             f"carries; asked for {num_rows}.")
        a, op, b = rng.randint(low, high), rng.choice(operators), rng.randint(low, high)
        row = arithmetic_row(a, op, b, sloppy=rng.random() < sloppy_fraction)
        question = row["prompt"][0]["content"]
        if question not in seen and row["carries"] >= min_carries:
            seen.add(question)
            rows.append(row)
    return rows


def arithmetic_splits(num_train: int, num_eval: int, **kwargs) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out splits drawn from the same distribution (held-out solutions are never sloppy)."""
    seed = kwargs.pop("seed", 0)
    train = arithmetic(num_train, seed=seed, **kwargs)
    kwargs.pop("sloppy_fraction", None)
    held_out = arithmetic(num_eval, seed=seed + 1, exclude={r["prompt"][0]["content"] for r in train}, **kwargs)
    return train, held_out


def word_problem(a: int, op: str, b: int) -> str:
    """`a op b` told as a one-sentence story (which story: fixed by the operands)."""
    stories = WORD_PROBLEMS[op]
    return stories[(a + b) % len(stories)].format(a=a, b=b)


def chat_row(row: dict) -> dict:
    """An `arithmetic` row with its prompt as [system: CHAT_SYSTEM_PROMPT, user: the word problem]."""
    a, op, b = _QUESTION.fullmatch(row["prompt"][0]["content"]).groups()
    return {**row, "prompt": [{"role": "system", "content": CHAT_SYSTEM_PROMPT},
                              {"role": "user", "content": word_problem(int(a), op, int(b))}]}


def arithmetic_chat_splits(num_train: int, num_eval: int, **kwargs) -> tuple[list[dict], list[dict]]:
    """`arithmetic_splits` (same problems, answers, solutions and hints) as chat word problems (`chat_row`)."""
    train, held_out = arithmetic_splits(num_train, num_eval, **kwargs)
    return [chat_row(row) for row in train], [chat_row(row) for row in held_out]


TASKS = {"arithmetic": arithmetic_splits, "arithmetic_chat": arithmetic_chat_splits}
