"""Best-of-N selection (`python -m align.best_of_n`): the pure selection step, argument checks that fail before any
model loads, and end-to-end runs of the tiny policy against real tiny reward-model checkpoints (random heads), whose
written keys are checked against an independent rescoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.best_of_n import main, parse_select, select_best
from align.decode.io import DecodeError, load_prompts, write_jsonl

N = 4
PROMPTS = 3
# Batches of 2 prompts: 3 prompts take two generate calls, one of them partial.
FAST = ["--n", str(N), "--num-prompts", str(PROMPTS), "--max-new-tokens", "12", "--batch-size", "2", "--seed", "7"]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory) -> dict[str, Path]:
    """{'gaussian': ..., 'scalar': ...}: tiny reward-model checkpoints as `algorithm=reward_model` saves them."""
    from align.models import TINY, load_tokenizer
    from align.rewards.reward_model import load_reward_model

    root = tmp_path_factory.mktemp("reward-models")
    paths = {}
    for name, objective in (("gaussian", "gaussian_anchor"), ("scalar", "bradley_terry")):
        torch.manual_seed(0)  # the fresh head's weights
        model = load_reward_model(TINY, objective)
        paths[name] = root / name
        model.save_pretrained(paths[name], safe_serialization=True)
        load_tokenizer(TINY).save_pretrained(paths[name])
    return paths


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    return raised.value.code


# --------------------------------------------------------------------------------------------------------------------
# Selection


def test_select_best_takes_the_largest_key_and_the_first_of_ties():
    nan, inf = float("nan"), float("inf")
    keys = torch.tensor([[1.0, 3.0, 3.0, 0.0],   # tie between 1 and 2 -> 1
                         [5.0, 5.0, 5.0, 5.0],   # all tied -> 0
                         [nan, -1.0, 2.0, 2.0],  # NaN never wins
                         [-inf, nan, -inf, nan],  # nothing real -> 0
                         [-2.0, -1.0, -3.0, inf]])
    assert select_best(keys).tolist() == [1, 0, 2, 0, 3]
    assert select_best(keys).dtype == torch.int64
    assert select_best(torch.tensor([[2, 7, 7]])).tolist() == [1]  # integer keys
    assert select_best(torch.tensor([[0.5]])).tolist() == [0]  # N = 1
    for bad in (torch.zeros(4), torch.zeros(2, 0), torch.zeros(2, 2, 2)):
        with pytest.raises(ValueError, match="shape"):
            select_best(bad)


def test_parse_select():
    assert parse_select("mean") is None and parse_select("MEAN") is None
    assert parse_select("0.25") == 0.25 and parse_select(0.9) == 0.9
    for bad in ("0", "1", "1.5", "-0.1", "nan", "median", ""):
        with pytest.raises(DecodeError):
            parse_select(bad)


# --------------------------------------------------------------------------------------------------------------------
# End to end


def test_gaussian_mean_and_quantile_end_to_end(reward_models, tmp_path, capsys):
    from align.rewards.reward_model import RewardModelScorer

    rm = str(reward_models["gaussian"])
    by_mean, by_quantile = tmp_path / "nested" / "mean.jsonl", tmp_path / "q25.jsonl"
    summary = main(["--reward-model", rm, "--out", str(by_mean), "--all", *FAST])
    stderr = capsys.readouterr().err
    assert "2/3 prompts" in stderr and "3/3 prompts" in stderr  # one progress line per batch
    assert "gain" in stderr and str(by_mean) in stderr
    rows = _read(by_mean)
    assert len(rows) == PROMPTS == summary["rows"]

    fresh = RewardModelScorer(rm)  # the CLI's dtype: bf16 on a bf16 GPU, where batching shifts the last bits
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if fresh.model.dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-5}
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["answer"]  # synthetic rows keep their verifier target
        candidates = row["candidates"]
        assert len(candidates) == N
        keys = torch.tensor([c["key"] for c in candidates])
        assert row["index"] == select_best(keys[None])[0].item()
        best = candidates[row["index"]]
        assert (row["completion"], row["reward"], row["mu"], row["sigma"]) == \
            (best["completion"], best["key"], best["mu"], best["sigma"])
        mu, sigma = fresh.score([row["prompt"]] * N, [c["completion"] for c in candidates])
        torch.testing.assert_close(keys, mu, **tolerance)  # --select mean: the key is mu
        torch.testing.assert_close(torch.tensor([c["sigma"] for c in candidates]), sigma, **tolerance)
    selected = sum(r["reward"] for r in rows) / PROMPTS
    overall = sum(c["key"] for r in rows for c in r["candidates"]) / (PROMPTS * N)
    assert summary["mean_selected"] == pytest.approx(selected) and summary["mean_all"] == pytest.approx(overall)
    assert summary["gain"] >= 0  # the maximum of each row is at least its mean

    main(["--reward-model", rm, "--out", str(by_quantile), "--all", "--select", "0.25", *FAST])
    quantile_rows = _read(by_quantile)
    for row, mean_row in zip(quantile_rows, rows, strict=True):
        # Same seed and arguments: the same candidates, now ranked by their 0.25-quantile.
        assert [c["completion"] for c in row["candidates"]] == [c["completion"] for c in mean_row["candidates"]]
        mu = torch.tensor([c["mu"] for c in row["candidates"]])
        sigma = torch.tensor([c["sigma"] for c in row["candidates"]])
        keys = torch.tensor([c["key"] for c in row["candidates"]])
        torch.testing.assert_close(keys, mu + torch.special.ndtri(torch.tensor(0.25)) * sigma)
        assert row["index"] == select_best(keys[None])[0].item()
        assert row["reward"] == row["candidates"][row["index"]]["key"]


def test_scalar_model_overwrite_and_file_prompts(reward_models, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"Compute {a}+{a}."}) + "\n" for a in range(5)))
    out = tmp_path / "best.jsonl"
    out.write_text("old\n")
    main(["--reward-model", str(reward_models["scalar"]), "--prompts", str(prompts), "--prompt-column", "question",
          "--out", str(out), "--overwrite", *FAST])
    rows = _read(out)
    assert len(rows) == PROMPTS
    for i, row in enumerate(rows):
        assert row["prompt"] == [{"role": "user", "content": f"Compute {i}+{i}."}]  # strings became chat messages
        assert row["sigma"] is None and row["reward"] == row["mu"]
        assert "candidates" not in row and "answer" not in row  # no --all; the file has no answer column
        assert 0 <= row["index"] < N
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------------------------
# Errors: one line, exit code 2, nothing generated or written


def test_scalar_model_with_quantile_is_refused_before_generation(reward_models, tmp_path, capsys):
    out = tmp_path / "best.jsonl"
    assert _exit_code(["--reward-model", str(reward_models["scalar"]), "--select", "0.25", "--out", str(out),
                       *FAST]) == 2
    err = capsys.readouterr().err
    # One line and no progress line before it: refused before any generation.
    assert err.startswith("align: error: ") and err.count("\n") == 1 and "scalar reward model" in err
    assert not out.exists()


def test_existing_out_is_kept_without_overwrite(reward_models, tmp_path, capsys):
    out = tmp_path / "best.jsonl"
    out.write_text("keep me\n")
    assert _exit_code(["--reward-model", str(reward_models["gaussian"]), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "--n must be >= 1"),
    (["--n", "4", "--temperature", "0"], "--temperature must be > 0"),
    (["--select", "1.0"], "strictly inside (0, 1)"),
    (["--select", "median"], "'mean' or a quantile"),
    (["--top-p", "0"], "--top-p"),
    (["--num-prompts", "0"], "--num-prompts"),
    (["--prompts", "missing.jsonl"], "does not exist"),
    (["--policy", "./no/such/policy"], "does not exist"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2(reward_models, tmp_path, capsys, extra, message):
    out = tmp_path / "best.jsonl"
    assert _exit_code(["--reward-model", str(reward_models["gaussian"]), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align: error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_prompt_file_without_the_column_is_a_data_error(reward_models, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "Compute 1+1."}) + "\n")
    assert _exit_code(["--reward-model", str(reward_models["gaussian"]), "--prompts", str(prompts),
                       "--out", str(tmp_path / "o.jsonl")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after datasets' progress bar for reading the file
    assert last.startswith("align: error: ") and "column 'prompt' is missing" in last


def test_reward_model_without_config_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert _exit_code(["--reward-model", str(path), "--out", str(tmp_path / "o.jsonl")]) == 2
        assert "no config.json" in capsys.readouterr().err


def test_write_jsonl_is_atomic(tmp_path):
    out = tmp_path / "best.jsonl"
    out.write_text("previous\n")
    with pytest.raises(TypeError):  # the second row cannot be serialised: the write fails halfway
        write_jsonl([{"a": 1}, {"b": object()}], out)
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["best.jsonl"]
    write_jsonl([{"a": 1}, {"b": [2]}], out)
    assert _read(out) == [{"a": 1}, {"b": [2]}]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not the temporary file's 0600


def test_module_help_states_the_usage():
    result = subprocess.run([sys.executable, "-m", "align.best_of_n", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--reward-model" in result.stdout and "--select" in result.stdout and "python -m align.best_of_n" in \
        result.stdout


def test_a_missing_prompt_column_names_the_flag(tmp_path):
    """The loader's messages speak of the training config (data.columns.prompt); this CLI's setting is a flag."""

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "Compute 1+1."}) + "\n")
    with pytest.raises(DecodeError, match=r"^--prompt-column is 'nope', but column 'nope' is not in") as err:
        load_prompts(str(prompts), "nope", None)
    assert "data.columns" not in str(err.value)
    with pytest.raises(DecodeError, match=r"column 'prompt' is missing .* Map it with --prompt-column=<your column>"):
        load_prompts(str(prompts), "prompt", None)
