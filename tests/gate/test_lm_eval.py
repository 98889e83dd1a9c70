"""The lm-evaluation-harness reader: real `lm_eval --log_samples` runs on the embedded tiny model over the local tasks
in tests/gate/lm_eval_task (no network), and hand-written sample files for the format's corners."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.gate.lm_eval import looks_like_lm_eval, read_lm_eval_samples
from align.gate.samples import GateInputError, Sample, pair_samples

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_task"
MC, GEN = "align_gate_mc", "align_gate_gen"
N_MC, N_GEN = 30, 10
GEN_FILTERS = ("strict-match", "flexible-extract")
STAMP = "2025-01-02T03-04-05.123456"


# --- real runs --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two lm-eval runs of the tiny model on both local tasks (the same model twice: a baseline and a candidate that
    cannot differ), run concurrently through the `lm_eval` CLI exactly as a user would; each side's output directory."""
    pytest.importorskip("lm_eval", reason="lm-eval is in the dev extra: pip install -e '.[dev]'")
    from align.models import ensure_tiny

    model = ensure_tiny()
    root = tmp_path_factory.mktemp("lm_eval_runs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    started = []
    for side in ("baseline", "candidate"):
        out, log = root / side, root / f"{side}.log"
        cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
               "--tasks", f"{MC},{GEN}", "--include_path", str(TASK_DIR), "--log_samples", "--output_path", str(out),
               "--device", "cpu", "--batch_size", "8"]
        with log.open("w") as sink:
            started.append((out, log, subprocess.Popen(cmd, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT)))
    for _, log, process in started:
        assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
    return {log.stem: out for out, log, _ in started}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.rglob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_real_output_layout(runs):
    """The layout the reader relies on: <output>/<sanitized model>/results_<ts>.json and samples_<task>_<ts>.jsonl,
    one timestamp per run, the results file listing each task's config and document count."""
    out = runs["baseline"]
    (model_dir,) = [p for p in out.iterdir() if p.is_dir()]
    results = _one(model_dir, "results_*.json")
    stamp = results.name[len("results_"):-len(".json")]
    assert sorted(p.name for p in model_dir.glob("samples_*.jsonl")) == [
        f"samples_{GEN}_{stamp}.jsonl", f"samples_{MC}_{stamp}.jsonl"]
    data = json.loads(results.read_text())
    assert data["configs"][MC]["output_type"] == "multiple_choice"
    assert data["configs"][GEN]["output_type"] == "generate_until"
    assert data["n-samples"][MC]["effective"] == N_MC and data["n-samples"][GEN]["effective"] == N_GEN
    assert looks_like_lm_eval(out) and looks_like_lm_eval(_one(out, f"samples_{MC}_*.jsonl"))
    assert not looks_like_lm_eval(results)


def test_real_multiple_choice(runs):
    samples = [s for s in read_lm_eval_samples(runs["baseline"]) if s.task == MC]
    assert len(samples) == N_MC * 2  # items x metrics (acc, acc_norm)
    assert [s.metric for s in samples[:4]] == ["acc", "acc_norm", "acc", "acc_norm"]  # the line's metric order
    for metric in ("acc", "acc_norm"):
        assert [s.doc_id for s in samples if s.metric == metric] == [str(i) for i in range(N_MC)]
    assert {s.score for s in samples} <= {0.0, 1.0}
    assert all(1 / 4 <= s.confidence <= 1 for s in samples)  # four choices: the top one has at least 1/4

    by_doc = {s.doc_id: s for s in samples if s.metric == "acc"}
    lines = _lines(_one(runs["baseline"], f"samples_{MC}_*.jsonl"))
    assert len(lines) == N_MC
    for line in lines:
        lls = np.array([float(ll) for ll, _greedy in line["filtered_resps"]])
        assert len(lls) == len(line["doc"]["choices"])
        probs = np.exp(lls - lls.max()) / np.exp(lls - lls.max()).sum()
        chosen = int(np.argmax(lls))
        sample = by_doc[str(line["doc_id"])]
        assert sample.confidence == pytest.approx(probs[chosen], rel=1e-12)
        assert sample.score == float(chosen == line["doc"]["label"])  # acc scores exactly the choice we take


def test_real_generation(runs):
    samples = [s for s in read_lm_eval_samples(runs["baseline"]) if s.task.startswith(GEN)]
    assert sorted({s.task for s in samples}) == sorted(f"{GEN}/{name}" for name in GEN_FILTERS)
    for name in GEN_FILTERS:
        task = [s for s in samples if s.task == f"{GEN}/{name}"]
        assert [s.doc_id for s in task] == [str(i) for i in range(N_GEN)]
        assert {s.metric for s in task} == {"exact_match"}
    assert {s.score for s in samples} <= {0.0, 1.0}
    assert all(s.confidence is None for s in samples)
    lines = _lines(_one(runs["baseline"], f"samples_{GEN}_*.jsonl"))
    assert len(lines) == N_GEN * len(GEN_FILTERS)  # one line per (document, filter); repeats do not add lines
    assert {line["filter"] for line in lines} == set(GEN_FILTERS)
    assert all(len(line["resps"]) == 1 and len(line["resps"][0]) == 2 for line in lines)  # repeats: 2


def test_real_runs_pair_identically(runs):
    baseline, candidate = (read_lm_eval_samples(runs[side]) for side in ("baseline", "candidate"))
    paired = pair_samples(baseline, candidate)
    assert [p.task for p in paired] == sorted([MC] + [f"{GEN}/{name}" for name in GEN_FILTERS])
    for task in paired:
        assert len(task.doc_ids) == (N_MC if task.task == MC else N_GEN)
        np.testing.assert_array_equal(task.baseline, task.candidate)
        if task.task == MC:
            assert task.metric == "acc"
            np.testing.assert_allclose(task.baseline_confidence, task.candidate_confidence, rtol=1e-6)
        else:
            assert task.baseline_confidence is None and task.candidate_confidence is None


def test_real_files_and_runs(runs):
    files = sorted(runs["baseline"].rglob("samples_*.jsonl"))
    assert sorted(read_lm_eval_samples(files), key=repr) == sorted(read_lm_eval_samples(runs["baseline"]), key=repr)
    with pytest.raises(GateInputError, match=r"task 'align_gate_\w+' comes from 2 runs: .*Pass one run's files"):
        read_lm_eval_samples(runs["baseline"].parent)  # holds the baseline's and the candidate's runs
    with pytest.raises(GateInputError, match="comes from 2 runs"):
        read_lm_eval_samples([runs["baseline"], _one(runs["candidate"], f"samples_{MC}_*.jsonl")])


# --- hand-written files -----------------------------------------------------------------------------------------------


def _line(doc_id, metrics=None, filter="none", filtered_resps=None, **extra) -> dict:
    metrics = {"acc": 1.0} if metrics is None else metrics
    line = {"doc_id": doc_id, "doc": {}, "target": "0", "arguments": {}, "resps": [], "filter": filter,
            "filtered_resps": filtered_resps if filtered_resps is not None else ["answer"],
            "metrics": list(metrics), "doc_hash": "d", "prompt_hash": "p", "target_hash": "t"}
    line.update(metrics)
    line.update(extra)
    return line


def _write(directory: Path, task: str, lines: list, stamp: str | None = STAMP, results: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"samples_{task}_{stamp}.jsonl" if stamp else f"samples_{task}.jsonl"
    path = directory / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    if results is not None:
        (directory / f"results_{stamp}.json").write_text(json.dumps(results))
    return path


def _mc(*lls: float) -> list[list[str]]:
    return [[str(ll), "False"] for ll in lls]


def test_filters_name_the_task(tmp_path):
    path = _write(tmp_path, "gsm8k", [_line(0, {"exact_match": 1.0}, "strict-match"),
                                       _line(1, {"exact_match": 0.0}, "strict-match"),
                                       _line(0, {"exact_match": 1.0}, "flexible-extract"),
                                       _line(1, {"exact_match": 1.0}, "flexible-extract")])
    plain = _write(tmp_path, "arc_easy", [_line(0)])
    assert read_lm_eval_samples([path, plain]) == [
        Sample("gsm8k/strict-match", "0", "exact_match", 1.0), Sample("gsm8k/strict-match", "1", "exact_match", 0.0),
        Sample("gsm8k/flexible-extract", "0", "exact_match", 1.0),
        Sample("gsm8k/flexible-extract", "1", "exact_match", 1.0), Sample("arc_easy", "0", "acc", 1.0)]


def test_metrics_in_line_order_numeric_only(tmp_path):
    line = _line("q-7", {"exact_match": True, "f1": ["gold", "pred"], "bleu": 12.5, "acc": 0})
    assert read_lm_eval_samples(_write(tmp_path, "my_task", [line])) == [
        Sample("my_task", "q-7", "exact_match", 1.0), Sample("my_task", "q-7", "bleu", 12.5),
        Sample("my_task", "q-7", "acc", 0.0)]


def test_task_name_with_underscores_and_timestamps(tmp_path):
    for stamp, task in [(STAMP, "mmlu_high_school_math"), ("2025-01-02T03-04-05", "a_b_2025"), (None, "x_y")]:
        path = _write(tmp_path / task, task, [_line(0)], stamp=stamp)
        assert [s.task for s in read_lm_eval_samples(path)] == [task]


def test_repeats_give_one_sample_per_metric(tmp_path):
    line = _line(0, {"exact_match": 1.0}, "maj@3", filtered_resps=["4"], resps=[["4", "5", "4"]])
    assert read_lm_eval_samples(_write(tmp_path, "t", [line])) == [Sample("t/maj@3", "0", "exact_match", 1.0)]


def test_multiple_choice_confidence(tmp_path):
    lines = [_line(0, filtered_resps=_mc(-1.0, -2.0, -3.0)),
             _line(1, filtered_resps=[["-4.5", "True"], [-0.5, False]]),  # numbers as well as lm-eval's strings
             _line(2, {"acc": 1.0, "acc_mutual_info": 0.0}, filtered_resps=_mc(-1.0, -1.0, -9.0, -0.1)),
             _line(3, filtered_resps=_mc(-1.0, float("-inf"))),
             _line(4, filtered_resps=[["-1.0", "False"]]),  # one loglikelihood request (e.g. lambada): no choices
             _line(5, filtered_resps=["[invalid]"])]  # a generation
    confidences = [s.confidence for s in read_lm_eval_samples(_write(tmp_path, "t", lines)) if s.metric == "acc"]
    assert confidences[0] == pytest.approx(1 / (1 + math.exp(-1) + math.exp(-2)))
    assert confidences[1] == pytest.approx(1 / (1 + math.exp(-4)))
    assert confidences[2] == pytest.approx(0.5)  # only the conditional half: two tied choices
    assert confidences[3] == 1.0
    assert confidences[4:] == [None, None]


def test_results_file_output_type_and_counts(tmp_path):
    pairs = _line(0, filtered_resps=_mc(-1.0, -2.0))
    results = {"configs": {"t": {"output_type": "generate_until"}}, "n-samples": {"t": {"effective": 1}}}
    assert read_lm_eval_samples(_write(tmp_path / "gen", "t", [pairs], results=results))[0].confidence is None
    results["configs"]["t"]["output_type"] = "multiple_choice"
    assert read_lm_eval_samples(_write(tmp_path / "mc", "t", [pairs], results=results))[0].confidence is not None
    results["n-samples"]["t"]["effective"] = 2
    with pytest.raises(GateInputError, match=r"1 documents for filter 'none'.*says 2 were evaluated.*incomplete"):
        read_lm_eval_samples(_write(tmp_path / "short", "t", [pairs], results=results))
    # lm_eval --output_path x.json: the results file is x_<timestamp>.json next to the samples
    path = _write(tmp_path / "named", "t", [pairs])
    (path.parent / f"x_{STAMP}.json").write_text(json.dumps(results))
    with pytest.raises(GateInputError, match="incomplete"):
        read_lm_eval_samples(path)


@pytest.mark.parametrize("raw, message", [
    ("{not json", r"line 2: not JSON"),
    ("[1, 2]", r"line 2: expected a JSON object"),
    (json.dumps({k: v for k, v in _line(1).items() if k != "doc_id"}), r"line 2: no doc_id"),
    (json.dumps(_line(None)), r"line 2: no doc_id"),
    (json.dumps({k: v for k, v in _line(1).items() if k not in ("filter", "metrics")}),
     r"line 2: no 'filter' or 'metrics' field; lm-eval writes both since 0.4.7"),
    (json.dumps(_line(1, {"f1": ["a", "b"]})), r"line 2: no numeric metric value"),
    (json.dumps({**_line(1, {"acc": 1.0}), "metrics": ["acc", "acc_norm"]}), r"line 2: metric 'acc_norm' is listed"),
    (json.dumps(_line(1, {})), r"line 2: 'metrics' should be a non-empty list"),
    (json.dumps(_line(0)), r"line 2: document 0 appears twice for filter 'none'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, raw, message):
    path = _write(tmp_path, "t", [_line(0), raw])
    with pytest.raises(GateInputError, match=message) as caught:
        read_lm_eval_samples(path)
    assert str(path) in str(caught.value)


def test_two_runs_of_a_task_in_a_directory_are_refused(tmp_path):
    _write(tmp_path / "model", "arc_easy", [_line(0)])
    _write(tmp_path / "model", "hellaswag", [_line(0)], stamp="2025-03-04T05-06-07.000001")  # another task: fine
    assert {s.task for s in read_lm_eval_samples(tmp_path)} == {"arc_easy", "hellaswag"}
    _write(tmp_path / "model", "arc_easy", [_line(0)], stamp="2025-03-04T05-06-07.000001")
    with pytest.raises(GateInputError, match=r"task 'arc_easy' comes from 2 runs: .*_2025-01-02T03-04-05\.123456"):
        read_lm_eval_samples(tmp_path)
    one_run = sorted((tmp_path / "model").glob("*_2025-03-04T05-06-07.000001.jsonl"))
    assert {s.task for s in read_lm_eval_samples(one_run)} == {"arc_easy", "hellaswag"}
    assert len(read_lm_eval_samples([one_run[0], one_run[0], tmp_path / "model" / one_run[0].name])) == 1


def test_paths_that_are_not_lm_eval_output(tmp_path):
    other = tmp_path / "results.jsonl"
    other.write_text(json.dumps(_line(0)) + "\n")
    with pytest.raises(GateInputError, match="not an lm-eval samples file"):
        read_lm_eval_samples(other)
    with pytest.raises(GateInputError, match="does not exist"):
        read_lm_eval_samples(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GateInputError, match="holds no lm-eval samples file.*--log_samples"):
        read_lm_eval_samples(tmp_path / "empty")
    with pytest.raises(GateInputError, match="holds no samples"):
        read_lm_eval_samples(_write(tmp_path, "t", []))


def test_looks_like_lm_eval(tmp_path):
    path = _write(tmp_path / "out" / "model", "t", [_line(0)])
    assert looks_like_lm_eval(tmp_path / "out") and looks_like_lm_eval(path)
    other = tmp_path / "per_sample.jsonl"
    shutil.copy(path, other)
    assert not looks_like_lm_eval(other)
    assert not looks_like_lm_eval(tmp_path / "missing")
    (tmp_path / "run").mkdir()
    assert not looks_like_lm_eval(tmp_path / "run")
