"""benchmarks/gpu/check.py through its dry mode: the same entry point and code path as on a GPU, on a tiny random
model on CPU, one step of each method."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu.check import CHECKS, main


def test_dry_mode_runs_every_method_and_writes_one_result_each(tmp_path):
    results = main(["--device", "cpu", "--out-dir", str(tmp_path)])
    assert [r["recipe"] for r in results] == list(CHECKS)
    for result in results:
        written = json.loads((tmp_path / f"gpu_{result['recipe'].removesuffix('-tiny')}-tiny.json").read_text())
        assert written == result and result["device"] == "cpu" and result["steps"] == 1 and result["mfu"] is None
        assert result["step_s"] > 0 and result["peak_memory_gib"] > 0 and result["parameters"] > 0
        if result["recipe"] != "reward-gaussian-prefs-tiny":
            assert result["tokens_per_s"] > 0 and "update" in result["phase_shares"]
            assert all(0 <= share <= 1.01 for share in result["phase_shares"].values())
    policy = {r["recipe"]: r["phase_shares"] for r in results}
    assert "generation" in policy["grpo-arithmetic-tiny"] and "hint_writing" in policy["sage-arithmetic-tiny"]


def test_dry_mode_needs_its_own_out_dir(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--device", "cpu"])
    assert raised.value.code == 2 and "--out-dir" in capsys.readouterr().err
