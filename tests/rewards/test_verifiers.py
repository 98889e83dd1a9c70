"""Built-in verifiers on hand-computed cases."""

import threading

import pytest

from align.rewards.verifiers import (
    VERIFIERS,
    boxed_match,
    completion_text,
    exact_match,
    extract_boxed,
    format_boxed,
    numeric_match,
)


def score(fn, completions, answers, **kwargs):
    """Call a verifier the way GRPOTrainer does, with TRL's extra kwargs."""
    return fn(
        prompts=["q"] * len(completions),
        completions=completions,
        completion_ids=None,
        answer=answers,
        trainer_state=None,
        log_extra=None,
        log_metric=None,
        **kwargs,
    )


def chat(text):
    return [{"role": "assistant", "content": text}]


# --- completion_text / extract_boxed


def test_completion_text_string_and_conversational():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text([]) == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{85}.", "85"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{ {a}{b{c}} }", " {a}{b{c}} "),
        (r"first \boxed{3} then \boxed{85}", "85"),  # last box wins
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not nest
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # an escaped brace needs no partner
        (r"\boxed {7}", "7"),
        ("no box here 85", None),
        (r"\boxed{\frac{1}{2}", None),  # unclosed
        (r"\boxed{1} and then \boxed{2", None),  # the final answer was cut off
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# --- exact_match


def test_exact_match_cases():
    completions = [
        r"The answer is \boxed{85}",
        "  85 \n",
        r"\boxed{ x  +   1 }",
        r"\boxed{84}",
        "85 apples",
        chat(r"\boxed{85}"),
        r"\boxed{3} \boxed{85}",
    ]
    answers = ["85", "85", "x + 1", "85", "85", "85", "85"]
    assert score(exact_match, completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_exact_match_none_answer_is_not_applicable():
    assert score(exact_match, [r"\boxed{1}", "1", "1"], [None, "", "1"]) == [None, None, 1.0]


def test_answer_column_required():
    with pytest.raises(ValueError, match="'answer' column"):
        exact_match(prompts=["q"], completions=["1"])


# --- numeric_match


def test_numeric_match_cases():
    completions = [
        "47+38 = 85",  # last number
        "so it is -12",  # negative
        "47-38=9",  # a subtraction, not a negative
        "I computed 120-35",  # the last number is 35: a minus after a digit is not a sign
        "the total is 1,234,567 dollars",  # thousands commas
        "about 3.14159",
        r"\boxed{85.0} but later 7",  # the box beats the last number
        "85.0000001",  # within rel_tol of 85
        "85.01",
        "no number",
        r"\boxed{\frac{1}{2}}",  # not a plain number
        chat("= 85"),
        "x = .5",
    ]
    answers = ["85", "-12", "9", "35", "1234567", "3.14159", "85", "85", "85", "85", "0.5", "85", "0.5"]
    expected = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert score(numeric_match, completions, answers) == expected


def test_numeric_match_tolerance_and_bad_gold():
    assert score(numeric_match, ["85.01", "85.01"], ["85", "85"], rel_tol=1e-3) == [1.0, 1.0]
    # The tolerance never drops below rel_tol * 1, so a gold answer of 0 still has one.
    assert score(numeric_match, ["0.001", "0.0000005"], ["0", "0"]) == [0.0, 1.0]
    assert score(numeric_match, ["85", "85"], ["eighty-five", None]) == [0.0, None]


# --- boxed_match


def test_boxed_match_equivalences():
    completions = [
        r"\boxed{0.5}",
        r"\boxed{\frac{1}{2}}",
        r"Answer: \boxed{85.0}.",
        r"\boxed{85}",
        r"\boxed{1000}",
        r"\boxed{x+1}",
        r"\boxed{1+x}",
        chat(r"$\boxed{85}$"),
    ]
    answers = [r"\frac{1}{2}", "0.5", "85", "$85$", "1,000", "x+1", r"\boxed{x+1}", "85"]
    assert score(boxed_match, completions, answers) == [1.0] * len(completions)


def test_boxed_match_rejections():
    completions = [
        r"\boxed{86}",  # wrong
        "the answer is 85",  # right number, but no box
        r"\boxed{85",  # unclosed box
        r"\boxed{85} no wait \boxed{86}",  # the last box is the answer
        r"\boxed{85}",
    ]
    answers = ["85", "85", "85", "85", None]
    assert score(boxed_match, completions, answers) == [0.0, 0.0, 0.0, 0.0, None]


def test_boxed_match_off_the_main_thread():
    # math-verify's default timeout uses signal.alarm, which raises in worker threads.
    results = []
    thread = threading.Thread(
        target=lambda: results.append(score(boxed_match, [r"\boxed{0.5}"], [r"\frac{1}{2}"]))
    )
    thread.start()
    thread.join()
    assert results == [[1.0]]


def test_boxed_match_scores_a_batch():
    completions = [f"Step by step: 47+38 = {80 + i}. Answer: \\boxed{{{80 + i}}}" for i in range(64)]
    rewards = score(boxed_match, completions, ["85"] * 64)
    assert rewards == [float(i == 5) for i in range(64)]


# --- format_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"reasoning... \boxed{85}", 1.0),
        (r"reasoning... \boxed{85}.", 1.0),
        (r"The answer is $\boxed{85}$.  ", 1.0),
        (r"\[\boxed{\frac{1}{2}}\]", 1.0),
        (r"\boxed{85} because 47+38", 0.0),  # text after the box
        (r"\boxed{3} \boxed{85}", 0.0),  # two boxes
        (r"\boxed{\boxed{85}}", 0.0),  # nested box counts twice
        (r"\boxed{85", 0.0),  # unclosed
        ("85", 0.0),  # no box
        ("", 0.0),
    ],
)
def test_format_boxed(text, expected):
    assert format_boxed(prompts=["q"], completions=[text]) == [expected]


def test_format_boxed_ignores_answer_and_reads_messages():
    rewards = format_boxed(
        prompts=["q", "q"], completions=[chat(r"\boxed{1}"), chat("1")], answer=[None, None]
    )
    assert rewards == [1.0, 0.0]


def test_builtin_names():
    assert set(VERIFIERS) == {"exact_match", "numeric_match", "boxed_match", "format_boxed"}
    assert all(fn.__name__ == name for name, fn in VERIFIERS.items())
