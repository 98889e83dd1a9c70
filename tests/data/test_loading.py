"""load_splits on local files and saved datasets (all written to tmp_path; nothing touches the hub)."""

import json

import datasets
import pytest

from align.config import DataConfig
from align.data import DataError, load_splits, rows_to_dataset, to_messages

ROWS = [{"question": f"What is {i}+1?", "final": i + 1, "solution": f"{i}+1={i + 1}"} for i in range(10)]
MAPPING = {"prompt": "question", "answer": "final"}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(source, **kwargs):
    return load_splits(DataConfig(source=str(source), columns=dict(MAPPING), **kwargs),
                       required=("prompt", "answer"))


def check_rows(ds, indices=range(10)):
    assert ds["prompt"] == [user(f"What is {i}+1?") for i in indices]
    assert ds["answer"] == [str(i + 1) for i in indices]  # numbers are cast to strings for the verifiers
    assert ds["solution"] == [f"{i}+1={i + 1}" for i in indices]  # unmapped columns pass through


# --------------------------------------------------------------------------------------------------------------------
# Sources


def test_jsonl(tmp_path):
    train, held_out = load(write_jsonl(tmp_path / "d.jsonl", ROWS))
    check_rows(train)
    assert held_out is None


def test_json(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS))
    check_rows(load(path)[0])


def test_parquet(tmp_path):
    rows_to_dataset(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    check_rows(load(tmp_path / "d.parquet")[0])


def test_csv(tmp_path):
    rows_to_dataset(ROWS).to_csv(str(tmp_path / "d.csv"), index=False)
    check_rows(load(tmp_path / "d.csv")[0])


def test_save_to_disk_dataset(tmp_path):
    rows_to_dataset(ROWS).save_to_disk(str(tmp_path / "saved"))
    train, held_out = load(tmp_path / "saved")
    check_rows(train)
    assert held_out is None


def test_save_to_disk_dataset_dict_picks_split_and_eval_split(tmp_path):
    datasets.DatasetDict({"dev": rows_to_dataset(ROWS[:3]), "test": rows_to_dataset(ROWS[3:5]),
                          "other": rows_to_dataset(ROWS[5:])}).save_to_disk(str(tmp_path / "saved"))
    train, held_out = load(tmp_path / "saved", split="dev", eval_split="test")
    check_rows(train, range(3))
    check_rows(held_out, range(3, 5))  # the column mapping applies to the held-out split too


def test_directory_of_data_files_infers_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:6])
    write_jsonl(tmp_path / "test.jsonl", ROWS[6:])
    train, held_out = load(tmp_path, eval_split="test")
    check_rows(train, range(6))
    check_rows(held_out, range(6, 10))


def test_hub_dataset_loads_split_and_eval_split(monkeypatch):
    calls = []

    def fake_hub(name, subset, split):
        calls.append((name, subset, split))
        return rows_to_dataset(ROWS[:6] if split == "train" else ROWS[6:])

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    train, held_out = load("someone/data", subset="main", eval_split="test")
    assert calls == [("someone/data", "main", "train"), ("someone/data", "main", "test")]
    check_rows(train, range(6))
    check_rows(held_out, range(6, 10))


def test_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    check_rows(load("~/d.jsonl")[0])


# --------------------------------------------------------------------------------------------------------------------
# Held-out split and truncation


def test_eval_size_carves_the_last_rows(tmp_path):
    train, held_out = load(write_jsonl(tmp_path / "d.jsonl", ROWS), eval_size=3)
    check_rows(train, range(7))
    check_rows(held_out, range(7, 10))


def test_max_train_rows_truncates_train_after_carving(tmp_path):
    train, held_out = load(write_jsonl(tmp_path / "d.jsonl", ROWS), eval_size=3, max_train_rows=2)
    check_rows(train, range(2))
    check_rows(held_out, range(7, 10))  # unchanged by the truncation
    assert len(load(tmp_path / "d.jsonl", max_train_rows=100)[0]) == 10


def test_eval_split_takes_precedence_over_eval_size(tmp_path):
    datasets.DatasetDict({"train": rows_to_dataset(ROWS[:8]), "test": rows_to_dataset(ROWS[8:])}).save_to_disk(
        str(tmp_path / "saved"))
    train, held_out = load(tmp_path / "saved", eval_split="test", eval_size=5)
    check_rows(train, range(8))
    check_rows(held_out, range(8, 10))


# --------------------------------------------------------------------------------------------------------------------
# Columns and prompts


def test_mapping_replaces_an_existing_canonical_column(tmp_path):
    rows = [{"prompt": "stale", "question": "Q", "answer": "old", "final": "new"}]
    train, _ = load(write_jsonl(tmp_path / "d.jsonl", rows))
    assert train.column_names == ["prompt", "answer"]
    assert train[0] == {"prompt": user("Q"), "answer": "new"}


def test_mapping_can_swap_and_copy_columns(tmp_path):
    rows = [{"prompt": "A", "answer": "Q"}]
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "d.jsonl", rows)),
                     columns={"prompt": "answer", "answer": "prompt", "solution": "prompt"})
    train, _ = load_splits(cfg, required=("prompt", "answer", "solution"))
    assert train[0] == {"prompt": user("Q"), "answer": "A", "solution": "A"}


def test_string_prompt_without_and_with_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "answer": "1"}])
    assert load_splits(DataConfig(source=str(path)))[0][0]["prompt"] == user("Hi")
    train, _ = load_splits(DataConfig(source=str(path), system_prompt="Be brief."))
    assert train[0]["prompt"] == [{"role": "system", "content": "Be brief."}, *user("Hi")]


def test_message_prompts_get_the_system_prompt_only_when_they_have_none(tmp_path):
    system = {"role": "system", "content": "Own system."}
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": user("Q1")}, {"prompt": [system, *user("Q2")]}])
    assert load_splits(DataConfig(source=str(path)))[0]["prompt"] == [user("Q1"), [system, *user("Q2")]]
    train, _ = load_splits(DataConfig(source=str(path), system_prompt="S"))
    assert train["prompt"] == [[{"role": "system", "content": "S"}, *user("Q1")], [system, *user("Q2")]]


def test_synthetic_gets_the_system_prompt():
    from align.config import SyntheticConfig
    train, held_out = load_splits(DataConfig(system_prompt="S", synthetic=SyntheticConfig(num_train=3, num_eval=2)))
    assert all(p[0] == {"role": "system", "content": "S"} and p[1]["role"] == "user" for p in train["prompt"])
    assert all(p[0]["content"] == "S" for p in held_out["prompt"])


def test_to_messages():
    assert to_messages("x") == user("x")
    assert to_messages("x", "S") == [{"role": "system", "content": "S"}, *user("x")]
    assert to_messages(user("x")) == user("x")


# --------------------------------------------------------------------------------------------------------------------
# Errors


def test_missing_local_paths(tmp_path):
    for source in (tmp_path / "nope.jsonl", "./no/such/dir", "data/missing.parquet", "~/missing-align-data"):
        with pytest.raises(DataError, match="looks like a local path but does not exist"):
            load_splits(DataConfig(source=str(source)))


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match=r"d.txt' has an unsupported extension '.txt'; use one of .jsonl"):
        load_splits(DataConfig(source=str(tmp_path / "d.txt")))


def test_malformed_file_names_the_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(DataError, match=r"could not read data.source '.*bad.jsonl' as json"):
        load_splits(DataConfig(source=str(tmp_path / "bad.jsonl")))


def test_eval_split_on_sources_without_splits(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="data.eval_split is 'test' but data.source .* is a single file"):
        load(path, eval_split="test")
    rows_to_dataset(ROWS).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="data.eval_split is 'test' but .* holds a single Dataset"):
        load(tmp_path / "saved", eval_split="test")


def test_unknown_split_lists_available_splits(tmp_path):
    datasets.DatasetDict({"train": rows_to_dataset(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"data.eval_split 'validation' is not in .*available splits: \['train'\]"):
        load(tmp_path / "saved", eval_split="validation")
    with pytest.raises(DataError, match=r"data.split 'dev' is not in"):
        load(tmp_path / "saved", split="dev")


def test_hub_failure_is_wrapped(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"(?s)could not load data.source 'someone/gsm-like'.*split 'train'.*"
                                        r"hub could not be reached.*Couldn't reach.*local path") as info:
        load_splits(DataConfig(source="someone/gsm-like", subset="main"))
    assert isinstance(info.value.__cause__, ConnectionError)


def test_mapped_column_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data.columns.answer is 'result', but column 'result' is not in .*d.jsonl "
                                        r"\(split train\); available columns: \['question', 'final', 'solution'\]"):
        load_splits(DataConfig(source=str(path), columns={"prompt": "question", "answer": "result"}))


def test_required_column_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "final": "1"}])
    with pytest.raises(DataError, match=r"column 'answer' is missing from .*d.jsonl \(split train\); available "
                                        r"columns: \['prompt', 'final'\]. Map it with data.columns.answer="):
        load_splits(DataConfig(source=str(path)), required=("answer",))
    no_prompt = write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(DataError, match=r"column 'prompt' is missing from .*n.jsonl"):  # prompt is always required
        load_splits(DataConfig(source=str(no_prompt)), required=("answer",))


def test_required_column_missing_from_held_out(tmp_path):
    datasets.DatasetDict({"train": rows_to_dataset(ROWS),
                          "test": rows_to_dataset([{"question": "q", "final": 1}])}
                         ).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"column 'solution' is missing from .*saved \(split test\)"):
        load_splits(DataConfig(source=str(tmp_path / "saved"), eval_split="test", columns=dict(MAPPING)),
                    required=("answer", "solution"))


@pytest.mark.parametrize("empty", [None, "", "   \n"])
def test_empty_string_values(tmp_path, empty):
    rows = [{"prompt": "p", "answer": "1"}, {"prompt": "p", "answer": empty}, {"prompt": "p", "answer": empty}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"column 'answer' is empty .* in 2 of 3 rows of .*d.jsonl \(split train\), "
                                        r"first at row 1"):
        load_splits(DataConfig(source=str(path)), required=("answer",))


def test_empty_message_list(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": user("a")}, {"prompt": []}])
    with pytest.raises(DataError, match="column 'prompt' is empty .* in 1 of 2 rows .* first at row 1"):
        load_splits(DataConfig(source=str(path)))


def test_empty_rows_in_carved_held_out_are_reported(tmp_path):
    rows = [{"prompt": "p", "answer": "1"}] * 3 + [{"prompt": "p", "answer": ""}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"split last 2 rows of train\), first at row 1"):
        load_splits(DataConfig(source=str(path), eval_size=2), required=("answer",))


@pytest.mark.parametrize("bad", [[{"role": "user"}], [{"content": "x"}], ["just text"], 5])
def test_malformed_prompt_names_the_row(tmp_path, bad):
    # Arrow cannot mix a number with message lists in one column, so a bad scalar prompt gets a file to itself.
    rows = [{"prompt": user("fine")}, {"prompt": bad}] if isinstance(bad, list) else [{"prompt": bad}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    row = len(rows) - 1
    with pytest.raises(DataError, match=rf"column 'prompt' in row {row} of .*d.jsonl .* is neither a string nor"):
        load_splits(DataConfig(source=str(path)))


def test_eval_size_too_large(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data.eval_size 10 leaves no training rows: .*d.jsonl has only 10 rows"):
        load(path, eval_size=10)


def test_bad_max_train_rows(tmp_path):
    with pytest.raises(DataError, match="data.max_train_rows must be >= 1"):
        load(write_jsonl(tmp_path / "d.jsonl", ROWS), max_train_rows=0)


def test_empty_split(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(DataError, match="d.jsonl' is an empty file"):
        load_splits(DataConfig(source=str(tmp_path / "d.jsonl")))



def test_empty_hub_split(monkeypatch):
    # `datasets` cannot even write or read back a local file with no rows, but a hub split can be empty.
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split, **k: rows_to_dataset(ROWS).select([]))
    with pytest.raises(DataError, match=r"someone/data \(split train\) has no rows"):
        load("someone/data")


def test_unreadable_directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"could not load directory data.source '.*'.*save_to_disk"):
        load_splits(DataConfig(source=str(tmp_path)))


def test_gsm8k_style_answers_feed_solution_and_extracted_answer(tmp_path):
    """One source column feeds both `solution` (as is) and `answer` (through answer_regex)."""
    import json

    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Ann has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "Half of 1,000?", "answer": "1,000 / 2 = 500\n#### 500"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(source=str(path), columns={"prompt": "question", "answer": "answer", "solution": "answer"},
                     answer_regex=r"####\s*(.+)$")
    train, _ = load_splits(cfg, required=("prompt", "answer", "solution"))
    assert train["answer"] == ["7", "500"]
    assert train["solution"] == [r["answer"] for r in rows]
    assert train["prompt"][0] == [{"role": "user", "content": rows[0]["question"]}]


def test_answer_regex_without_match_names_the_row(tmp_path):
    import json

    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "q", "answer": a}) for a in ("#### 1", "no marker")))
    with pytest.raises(DataError, match=r"answer_regex .* row 1"):
        load_splits(DataConfig(source=str(path), answer_regex=r"####\s*(.+)$"), required=("prompt", "answer"))
