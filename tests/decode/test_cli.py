"""`python -m align.decode` end to end on embedded:tiny (a few prompts, small N and B: seconds), the gate comparing two
decoding methods item by item, and the one-line errors for bad settings, which come before any model loads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from align.decode.cli import main

FAST = ["--num-prompts", "3", "--max-new-tokens", "8", "--batch-size", "2", "--seed", "3"]


def letter_share(prompts, completions, **columns) -> list[float]:
    """A reward of partial text too: the share of 'a' characters."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("align: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode")
    runs = {"greedy": ["--method", "greedy"],
            "smc": ["--method", "smc", "--variant", "prefix", "--reward", "tests.decode.test_cli:letter_share",
                    "--n", "3", "--block", "4", "--ess-threshold", "1.0"],
            "best_of_n": ["--method", "best_of_n", "--reward", "numeric_match", "--n", "2"]}
    paths = {}
    for name, argv in runs.items():
        paths[name] = root / f"{name}.jsonl"
        summary = main([*argv, *FAST, "--out", str(paths[name])])
        assert summary["rows"] == 3 and summary["seconds"]["generate"] > 0 and summary["forward_tokens"] > 0
    return paths


def test_rows_carry_the_answer_its_score_the_cost_and_the_gate_fields(outputs):
    for name, path in outputs.items():
        rows = _read(path)
        assert [r["doc_id"] for r in rows] == [0, 1, 2]
        for row in rows:
            assert {"task", "metric", "score", "confidence", "prompt", "answer", "completion", "reward",
                    "generated_tokens", "forward_tokens", "reward_calls", "finished", "truncated"} <= set(row)
            assert row["forward_tokens"] >= row["generated_tokens"] > 0
            assert row["method"] == name and row["metric"] == "boxed_match" and row["score"] in (0.0, 1.0)
    smc_rows = _read(outputs["smc"])
    assert all(r["reward_calls"] >= 3 and r["smc"]["ess_min"] <= 3 + 1e-9 for r in smc_rows)
    assert all(r["generated_tokens"] <= 8 for r in _read(outputs["greedy"]))
    assert all(r["reward_calls"] == 2 for r in _read(outputs["best_of_n"]))


def test_the_gate_compares_two_decoding_methods_item_by_item(outputs, tmp_path):
    from align.gate.cli import main as gate

    report = tmp_path / "gate.json"
    code = gate(["--baseline", str(outputs["greedy"]), "--candidate", str(outputs["smc"]), "--json", str(report)])
    assert code in (0, 1)
    assert "synthetic/arithmetic" in report.read_text()


def test_the_same_seed_gives_the_same_file(outputs, tmp_path):
    again = tmp_path / "again.jsonl"
    main(["--method", "smc", "--variant", "prefix", "--reward", "tests.decode.test_cli:letter_share", "--n", "3",
          "--block", "4", "--ess-threshold", "1.0", *FAST, "--out", str(again)])
    assert again.read_text() == outputs["smc"].read_text()


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be >= 1"),
    (["--block", "0"], "--block must be >= 1"),
    (["--method", "beam"], "unknown --method 'beam'"),
    (["--reward", "boxed_match"], "cannot score partial text for --variant prefix"),
    (["--method", "smc"], "needs a reward"),
    (["--method", "power", "--reward", "boxed_match"], "uses no reward"),
    (["--reward", "boxd_match", "--variant", "final"], "Did you mean 'boxed_match'"),
    (["--reward", "boxed_match", "--variant", "final", "--policy", "/nonexistent/policy"], "--policy"),
    (["--method", "power", "--ess-threshold", "2"], "--ess-threshold must lie in [0, 1]"),
    (["--method", "power", "--reward-kwarg", "x"], "KEY=VALUE"),
    (["--reward", "boxed_match", "--variant", "final", "--calibrate", "8"], "boxed_match needs none"),
    (["--method", "power", "--calibrate", "8"], "no reward needs none"),
    (["--method", "power", "--calibrate", "-1"], "--calibrate must be >= 0"),
    (["--method", "power", "--final-moves", "-1"], "--final-moves must be >= 0"),
    (["--method", "best_of_n", "--reward", "boxed_match", "--final-moves", "1"], "--method best_of_n has none"),
    (["--variant", "final", "--reward", "tests.decode.test_cli:char_codes", "--calibrate", "1"], "at least 2 samples"),
])
def test_bad_settings_fail_on_one_line_before_any_model_loads(argv, message, capsys, tmp_path):
    line = _error([*argv, "--out", str(tmp_path / "o.jsonl")], capsys)
    assert message in line


def test_module_help_and_best_of_n_alias_stay_fast():
    for module in ("align.decode", "align.best_of_n"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and f"python -m {module}" in result.stdout, result.stderr


def test_calibrate_maps_the_reward_through_a_sigmoid_fitted_on_policy_samples(tmp_path, capsys):
    out = tmp_path / "calibrated.jsonl"
    summary = main(["--method", "smc", "--variant", "final", "--reward", "tests.decode.test_cli:char_codes",
                    "--n", "3", "--calibrate", "6", *FAST, "--out", str(out)])
    calibration = summary["calibration"]
    assert calibration["samples"] == 6 and calibration["sigma"] > 0
    assert "reward calibrated on 6 policy samples" in capsys.readouterr().err
    for row in _read(out):  # the reward the potential saw, recomputed from the raw one
        raw = char_codes(None, [row["completion"]])[0]
        assert row["reward"] == pytest.approx(1 / (1 + math.exp(-(raw - calibration["mu"]) / calibration["sigma"])))


def test_calibration_refuses_a_reward_without_spread(capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:  # after the model loads (which may build the embedded model first)
        main(["--method", "smc", "--variant", "final", "--reward", "tests.decode.test_cli:constant", "--n", "2",
              "--calibrate", "4", *FAST, "--out", str(tmp_path / "o.jsonl")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert raised.value.code == 2 and line.startswith("align: error: --calibrate 4: calibration needs varied scores")
    assert "all equal to 0.5" in line and not (tmp_path / "o.jsonl").exists()


def char_codes(prompts, completions, **columns) -> list[float]:
    """A reward that varies with any text."""
    return [sum(map(ord, c)) % 10 / 10 for c in completions]


def constant(prompts, completions, **columns) -> list[float]:
    return [0.5] * len(completions)


def test_final_moves_cost_one_proposal_and_reward_call_per_particle(tmp_path):
    out = tmp_path / "moved.jsonl"
    main(["--method", "smc", "--variant", "final", "--reward", "tests.decode.test_cli:char_codes", "--n", "3",
          "--final-moves", "2", *FAST, "--out", str(out)])
    for row in _read(out):  # 3 final rewards, then 2 sweeps of 3 proposals each
        assert row["reward_calls"] == 3 + 2 * 3 and row["smc"]["mh_acceptance"] is not None
