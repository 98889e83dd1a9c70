"""Offline preference pairs for f-HAL: the embedded pairs and loading from files, with clear errors."""

import json

import pytest

from align.config import PairsConfig
from align.data import DataError
from align.data.pairs import arithmetic_pairs, load_pairs


def test_embedded_pairs_prefer_the_correct_carry():
    pairs = arithmetic_pairs(50, seed=3)
    assert len(pairs) == 50 and len({p["prompt"][0]["content"] for p in pairs}) == 50
    for pair in pairs:
        assert "carry 1" in pair["chosen"] and "carry" not in pair["rejected"]
        a, b = map(int, pair["prompt"][0]["content"][len("Compute "):-1].split("+"))
        assert pair["chosen"].endswith(f"\\boxed{{{a + b}}}") and not pair["rejected"].endswith(f"\\boxed{{{a + b}}}")
    assert load_pairs(PairsConfig(num_synthetic=10, max_rows=4)) == arithmetic_pairs(10)[:4]


def test_pairs_from_a_file_with_mapped_columns_and_chat_responses(tmp_path):
    rows = [{"q": "Be nice?", "good": [{"role": "assistant", "content": "Yes."}], "bad": "No."},
            {"q": "Again?", "good": "Sure.", "bad": [{"role": "assistant", "content": "Never."}]}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(PairsConfig(source=str(path), prompt_column="q", chosen_column="good", rejected_column="bad",
                                   system_prompt="Be brief."))
    assert pairs == [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Be nice?"}],
         "chosen": "Yes.", "rejected": "No."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Again?"}],
         "chosen": "Sure.", "rejected": "Never."},
    ]


def test_pairs_errors_name_the_column_and_the_fix(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": "a", "worse": "b"}) + "\n")
    with pytest.raises(DataError, match="no 'rejected' column .* algorithm.pairs.rejected_column"):
        load_pairs(PairsConfig(source=str(path)))
    path.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(DataError, match="pairs row 0: 'rejected' is empty"):
        load_pairs(PairsConfig(source=str(path)))
    with pytest.raises(DataError, match="looks like a local path but does not exist"):
        load_pairs(PairsConfig(source=str(tmp_path / "missing.jsonl")))


def test_pairs_from_two_responses_and_a_preferred_index(tmp_path):
    rows = [{"prompt": "How do I stay safe?", "response_0": "Carefully.", "response_1": "Don't.", "safer": 0},
            {"prompt": "Again?", "response_0": "No.", "response_1": "Yes, safely.", "safer": 1}]
    path = tmp_path / "safe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PairsConfig(source=str(path), response_columns=["response_0", "response_1"], preferred_index_column="safer")
    assert [(p["chosen"], p["rejected"]) for p in load_pairs(cfg)] == [("Carefully.", "Don't."),
                                                                         ("Yes, safely.", "No.")]
    rows[1]["safer"] = 2
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="pairs row 1: 'safer' is 2, not 0 or 1"):
        load_pairs(cfg)
