"""SAGE's pure parts: hint parsing and leak filter, prompt building, collapse test, escalation, SAGE-LIGHT levels,
per-prompt state. Hand-computed expectations; no model, no TRL."""

import json

import pytest
import torch

from align.checkpoints import write_json_atomic
from align.methods.sage.config import HintConfig
from align.methods.sage.hints import (
    fill,
    hint_demonstrations,
    hint_request,
    leaks_answer,
    parse_hints,
    question_text,
    with_hint,
)
from align.methods.sage.math import HintState, collapsed, escalate, next_light_level
from align.rollout import SolvedPrompts, combine_rewards, group_stats, prompt_key

GOOD = {"level_1": "Think about carries.", "level_2": "Ones: 7+8=15.", "level_3": "Carry 1 into the tens."}
LEVELS = ["Think about carries.", "Ones: 7+8=15.", "Carry 1 into the tens."]

# --- parsing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    "Here are the hints:\n" + json.dumps(GOOD) + "\nGood luck!",
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "```\n" + json.dumps(GOOD) + "\n```",
    "{'level_1': 'Think about carries.', 'level_2': 'Ones: 7+8=15.', 'level_3': 'Carry 1 into the tens.'}",
    '{"level_1": "Think about carries.", "level_2": "Ones: 7+8=15.", "level_3": "Carry 1 into the tens.",}',
    '{"level_1": "  Think about carries. ", "level_2": "Ones: 7+8=15.", "level_3": "Carry 1 into the tens.",\n}',
    "Let {x} be the sum. " + json.dumps(GOOD) + " Then {y}.",  # braces in the prose around the object
])
def test_parse_hints_tolerates_fences_prose_quotes_and_trailing_commas(text):
    assert parse_hints(text) == LEVELS


@pytest.mark.parametrize("text", [
    "",
    "no json here",
    '{"level_1": "a", "level_2": "b"',  # truncated by max_tokens
    '{"level_1": "a", "level_2": "b"}',  # level 3 missing
    '{"level_1": "a", "level_2": "", "level_3": "c"}',  # empty level
    '{"level_1": "a", "level_2": 2, "level_3": "c"}',  # not a string
    '["a", "b", "c"]',
    '{"hint": "a"}',
    "{level_1: a}",
    "{'level_1': __import__('os').system('true')}",  # a literal parser, never eval
])
def test_parse_hints_rejects_malformed_or_incomplete_replies(text):
    assert parse_hints(text) is None


def test_parse_hints_keeps_single_backslash_latex():
    text = '{"level_1": "Use \\frac{a}{b} and \\times.", "level_2": "b", "level_3": "c"}'
    assert parse_hints(text) == ["Use \\frac{a}{b} and \\times.", "b", "c"]
    # without LaTeX control characters, JSON escapes keep their meaning
    assert parse_hints('{"level_1": "a\\nb", "level_2": "\\\\frac", "level_3": "c"}') == ["a\nb", "\\frac", "c"]


def test_leak_filter_matches_the_answer_as_a_whole_token():
    assert leaks_answer(["The result is 85."], "85")
    assert leaks_answer(["a", "b", "so it is 8 5"], "85")  # whitespace ignored
    assert leaks_answer(["x = \\frac{1}{2}"], "\\boxed{\\frac{1}{2}}")  # a boxed answer compares by content
    assert not leaks_answer(["7+8=15, carry 1", "185 is not it"], "85")
    assert not leaks_answer(["0.85 is a decimal"], "85")
    assert not leaks_answer(LEVELS, "")
    assert not leaks_answer(LEVELS, None)
    assert leaks_answer(["it is 85"], 85)  # a numeric answer column


# --- prompts -------------------------------------------------------------------------------------------------------


def test_fill_substitutes_named_fields_only():
    assert fill('{question} -> {"level_1": ...} {hint} {other}', question="Q{hint}", hint="H") == \
        'Q{hint} -> {"level_1": ...} H {other}'


def test_with_hint_rewrites_only_the_last_user_message():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 47+38."}]
    hinted = with_hint(prompt, "Carry the 1.", "{question}\n\nHere is a hint to help you:\n{hint}")
    assert hinted == [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Compute 47+38.\n\nHere is a hint to help you:\nCarry the 1."}]
    assert prompt[1]["content"] == "Compute 47+38."  # the dataset row is not mutated
    assert with_hint("Compute 1+1.", "h", "{question} [{hint}]") == "Compute 1+1. [h]"
    assert question_text(prompt) == "Compute 47+38."


def test_hint_request_carries_question_and_reference_solution():
    cfg = HintConfig(system_prompt="Teacher.", user_template="Q: {question}\nS: {solution}")
    request = hint_request([{"role": "user", "content": "Compute 47+38."}], "7+8=15 ...", cfg)
    assert request == [{"role": "system", "content": "Teacher."},
                       {"role": "user", "content": "Q: Compute 47+38.\nS: 7+8=15 ..."}]
    assert hint_request("Compute 1+1.", "2", HintConfig(system_prompt=None, user_template="{question}|{solution}")) \
        == [{"role": "user", "content": "Compute 1+1.|2"}]


def test_prompt_key_is_stable_and_distinguishes_prompts():
    a = [{"role": "user", "content": "Compute 47+38."}]
    assert prompt_key(a) == prompt_key([{"content": "Compute 47+38.", "role": "user"}])
    assert prompt_key(a) != prompt_key([{"role": "user", "content": "Compute 47+39."}])


# --- collapse and escalation -----------------------------------------------------------------------------------------


def test_collapse_detection_by_trigger():
    rewards = torch.tensor([0, 0, 0, 0,  # all wrong: collapsed under both triggers
                            1, 1, 1, 1,  # all right: never hinted
                            0, 1, 0, 0,  # mixed: learnable
                            0.5, 0.5, 0.5, 0.5])  # identical partial credit (> threshold 0: successes)
    stats = group_stats(rewards, 4)
    assert collapsed(stats, 4, "no_success").tolist() == [True, False, False, False]
    assert collapsed(stats, 4, "zero_variance").tolist() == [True, False, False, False]
    stats = group_stats(rewards, 4, success_threshold=0.6)  # now 0.5 is not a success
    assert collapsed(stats, 4, "zero_variance").tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="trigger"):
        collapsed(stats, 4, "sometimes")


def test_combine_rewards_is_trl_weighted_nansum_with_unscorable_rows_nan():
    per_func = torch.tensor([[1.0, 0.5], [float("nan"), 1.0], [float("nan"), float("nan")]])
    combined = combine_rewards(per_func, torch.tensor([2.0, 1.0]))
    assert combined[:2].tolist() == [2.5, 1.0] and torch.isnan(combined[2])


def make_roller(success_level: dict[int, int]):
    """A fake rollout: group g first has a success at hint level success_level[g] (4 = never)."""
    calls = []

    def roll(groups, level):
        calls.append((list(groups), level))
        return [level >= success_level[g] for g in groups]

    return roll, calls


def test_escalation_stops_at_first_level_with_a_success_and_level_3_is_final():
    roll, calls = make_roller({0: 1, 1: 2, 2: 3, 3: 4})
    final = escalate([0, 1, 2, 3], roll)
    assert final == {0: 1, 1: 2, 2: 3, 3: 3}  # group 3 never succeeds: level 3 is final anyway
    assert calls == [([0, 1, 2, 3], 1), ([1, 2, 3], 2), ([2, 3], 3)]


def test_escalation_keeps_calling_while_another_rank_has_work():
    """A rank with no collapsed groups still takes part in every round another rank runs (collective generation)."""
    roll, calls = make_roller({})
    other_rank_pending = iter([True, True, False])
    final = escalate([], roll, any_rank=lambda local: local or next(other_rank_pending))
    assert final == {} and calls == [([], 1), ([], 2)]


# --- SAGE-LIGHT ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level, p, expected", [
    (0, 0.0, 1), (0, 0.34, 1), (0, 0.35, 0), (2, 0.1, 3), (3, 0.0, 3), (2, 1.0, 2), (1, 0.5, 1)])
def test_light_paper_rule_raises_below_alpha_and_never_lowers(level, p, expected):
    assert next_light_level(level, p, "paper", alpha=0.35) == expected


@pytest.mark.parametrize("level, p, expected", [
    (0, 0.1, 1), (0, 0.0, 1), (3, 0.05, 3), (1, 0.2, 1), (1, 0.35, 1), (1, 0.36, 0), (0, 1.0, 0), (3, 0.5, 2)])
def test_light_bidirectional_rule(level, p, expected):
    assert next_light_level(level, p, "bidirectional", alpha=0.35, low=0.1) == expected


def test_light_rule_rejects_unknown_names():
    with pytest.raises(ValueError, match="rule"):
        next_light_level(0, 0.0, "sometimes")


def test_hint_state_and_solved_prompts_round_trip_through_json(tmp_path):
    state = HintState()
    state.update("a", 2, LEVELS)
    state.update("b", 0)
    state.update("a", 3)  # a failed hint leaves the last good one in place
    path = tmp_path / "sage_state.json"
    write_json_atomic(state.state_dict(), path)
    restored = HintState()
    restored.load_state_dict(json.loads(path.read_text()))
    assert restored == state and restored.levels == {"a": 3, "b": 0} and restored.last_hints == {"a": LEVELS}
    assert not (tmp_path / "sage_state.json.tmp").exists()

    solved = SolvedPrompts()
    assert solved.never_solved_frac() == 0.0
    solved.update(["a", "b", "c"], [False, True, False])
    solved.update(["a", "d"], [True, False])
    assert solved.never_solved_frac() == 0.5  # c and d of a, b, c, d
    again = SolvedPrompts()
    again.load_state_dict(json.loads(json.dumps(solved.state_dict())))
    assert again == solved


def test_hint_demonstrations_teach_writing_and_using_hints():
    rows = [{"prompt": [{"role": "user", "content": "Compute 47+38."}], "solution": "S", "hints": json.dumps(GOOD)},
            {"prompt": [{"role": "user", "content": "Compute 1+1."}], "solution": "", "hints": json.dumps(GOOD)}]
    cfg = HintConfig(system_prompt=None, user_template="{question}|{solution}", solve_template="{question}||{hint}")
    demos = hint_demonstrations(rows, cfg, "hints", seed=0)
    assert len(demos) == 2  # the row without a reference solution is skipped
    write, use = demos
    assert write["prompt"] == [{"role": "user", "content": "Compute 47+38.|S"}]
    assert parse_hints(write["completion"][0]["content"]) == LEVELS
    assert use["prompt"][0]["content"].split("||")[1] in LEVELS and use["completion"][0]["content"] == "S"
