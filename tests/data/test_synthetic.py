"""The embedded arithmetic task: deterministic, disjoint splits, correct answers and reference solutions."""

import re

import pytest

from align.config import DataConfig, SyntheticConfig
from align.data import TASKS, DataError, load_splits
from align.data.synthetic import arithmetic, arithmetic_row, arithmetic_splits

QUESTION = re.compile(r"^Compute (\d+)([+-])(\d+)\.$")


def question(row: dict) -> str:
    return row["prompt"][0]["content"]


def test_same_seed_same_rows_and_other_seed_other_rows():
    assert arithmetic_splits(50, 10, seed=3) == arithmetic_splits(50, 10, seed=3)
    assert arithmetic(50, seed=3) != arithmetic(50, seed=4)


def test_train_and_held_out_are_disjoint():
    # 1-digit "+" has 100 problems, so 90 + 10 forces the held-out split to take exactly the leftovers.
    train, held_out = arithmetic_splits(90, 10, digits=1)
    train_q, held_q = {question(r) for r in train}, {question(r) for r in held_out}
    assert len(train_q) == 90 and len(held_q) == 10
    assert not train_q & held_q


@pytest.mark.parametrize("op", ["+", "-"])
def test_answer_is_true_result_and_solution_ends_in_boxed_answer(op):
    for row in arithmetic(200, digits=3, operators=(op,), seed=1):
        match = QUESTION.match(question(row))
        assert match, question(row)
        a, found_op, b = int(match[1]), match[2], int(match[3])
        assert found_op == op
        assert row["answer"] == str(a + b if op == "+" else a - b)
        assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}")
        assert row["prompt"] == [{"role": "user", "content": question(row)}]


def test_both_operators_are_drawn():
    ops = {QUESTION.match(question(r))[2] for r in arithmetic(100, operators=("+", "-"))}
    assert ops == {"+", "-"}


@pytest.mark.parametrize("digits", [1, 2, 4])
def test_operands_have_the_requested_digits(digits):
    for row in arithmetic(50, digits=digits, operators=("+", "-")):
        a, _, b = QUESTION.match(question(row)).groups()
        assert len(a) == digits and len(b) == digits


def test_more_rows_than_problems_is_an_error():
    with pytest.raises(ValueError, match="Only 100 distinct 1-digit problems"):
        arithmetic(101, digits=1)
    with pytest.raises(ValueError, match="Only 10 distinct"):  # the held-out split gets only what train left
        arithmetic_splits(90, 11, digits=1)


def test_unknown_operator_is_an_error():
    with pytest.raises(ValueError, match=r"Unsupported operator '\*'"):
        arithmetic(5, operators=("*",))


def test_load_splits_synthetic_uses_the_config():
    cfg = DataConfig(synthetic=SyntheticConfig(num_train=30, num_eval=7, digits=3, operators=["-"], seed=5,
                                               min_carries=1))
    train, held_out = load_splits(cfg, required=("prompt", "answer", "solution"))
    expected_train, expected_held_out = TASKS["arithmetic"](30, 7, digits=3, operators=("-",), seed=5,
                                                            min_carries=1)
    assert train.to_list() == expected_train
    assert held_out.to_list() == expected_held_out


def test_load_splits_synthetic_without_held_out():
    # eval_size does not apply: the synthetic task sizes its own held-out split with num_eval.
    train, held_out = load_splits(DataConfig(eval_size=2, synthetic=SyntheticConfig(num_train=5, num_eval=0)))
    assert len(train) == 5 and held_out is None


def test_load_splits_synthetic_errors_name_the_key():
    # An unknown data.synthetic.task is refused by validation (tests/test_bad_input.py).
    with pytest.raises(DataError, match=r"Only 100 distinct .*data.synthetic.num_train"):
        load_splits(DataConfig(synthetic=SyntheticConfig(num_train=101, digits=1)))


def test_chat_task_asks_the_same_problems_as_word_problems_with_a_boxed_system_prompt():
    from align.data.synthetic import CHAT_SYSTEM_PROMPT

    plain_train, plain_held_out = arithmetic_splits(40, 10, operators=("+", "-"), seed=5)
    chat_train, chat_held_out = TASKS["arithmetic_chat"](40, 10, operators=("+", "-"), seed=5)
    for plain, chat in zip(plain_train + plain_held_out, chat_train + chat_held_out):
        assert {k: v for k, v in chat.items() if k != "prompt"} == {k: v for k, v in plain.items() if k != "prompt"}
        system, user = chat["prompt"]
        assert system == {"role": "system", "content": CHAT_SYSTEM_PROMPT} and "\\boxed{}" in system["content"]
        a, op, b = QUESTION.match(question(plain)).groups()
        assert user["role"] == "user" and user["content"].endswith("?")
        assert re.findall(r"\d+", user["content"]) == [a, b]
        assert ("more" in user["content"] or "afternoon" in user["content"] or "another" in user["content"]) == \
            (op == "+")
    assert len({row["prompt"][1]["content"] for row in chat_train + chat_held_out}) == 50  # still distinct


def test_chat_task_loads_through_the_data_config():
    cfg = DataConfig(synthetic=SyntheticConfig(task="arithmetic_chat", num_train=8, num_eval=4))
    train, held_out = load_splits(cfg, required=("prompt", "answer", "solution"))
    assert [m["role"] for m in train[0]["prompt"]] == ["system", "user"] and len(held_out) == 4


@pytest.mark.parametrize(("a", "op", "b", "carries"), [
    (123, "+", 456, 0), (487, "+", 398, 2), (187, "+", 111, 0), (95, "+", 17, 1), (999, "+", 1, 2),
    (52, "-", 17, 1), (500, "-", 1, 2), (987, "-", 123, 0)])
def test_carries_count_the_columns_that_pass_a_carry_or_borrow_on(a, op, b, carries):
    # 187+111: 8+1 = 9 and 1+1 = 2 pass nothing on; a carry out of the last column (999+1 -> 1000 would) is not one
    # the next column must add, so it does not count.
    assert arithmetic_row(a, op, b)["carries"] == carries


def test_min_carries_keeps_only_problems_a_carry_forgetting_teacher_gets_wrong():
    hard = arithmetic(200, digits=3, min_carries=2, sloppy_fraction=1.0)
    assert len(hard) == 200 and all(row["carries"] == 2 for row in hard)
    for row in hard:  # every sloppy demonstration's worked answer is wrong
        assert not row["demonstration"].endswith(f"\\boxed{{{row['answer']}}}")
    assert any(row["carries"] == 0 for row in arithmetic(50, digits=3))


def test_min_carries_beyond_what_the_digits_allow_is_an_error():
    with pytest.raises(ValueError, match=r"a 2-digit problem carries at most 1 time\(s\)"):
        arithmetic(5, digits=2, min_carries=2)
    # 2-digit additions with a carry: 3,645 of 8,100; the filter runs out before 4,000 and says so.
    with pytest.raises(ValueError, match="Found only 3645 distinct 2-digit problems with at least 1 carries"):
        arithmetic(4000, digits=2, min_carries=1)
