"""Pairing, align's result reader, the report and the command line of the degradation gate."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.evaluation import answer_span, samples_path, span_probability, write_samples
from align.gate.align_results import read_align_samples
from align.gate.cli import EXIT_BAD_INPUT, EXIT_DEGRADED, EXIT_OK, main, run_gate
from align.gate.report import calibration, markdown, side_calibration
from align.gate.samples import GateInputError, Sample, pair_samples
from align.gate.stats import mcnemar_exact

REPO = Path(__file__).resolve().parents[2]


def samples(task, scores, metric="acc", confidences=None, ids=None):
    ids = ids if ids is not None else range(len(scores))
    confidences = confidences if confidences is not None else [None] * len(scores)
    return [Sample(task, str(i), metric, float(s), c) for i, s, c in zip(ids, scores, confidences)]


# --- pairing --------------------------------------------------------------------------------------------------------

def test_pairing_aligns_items_by_doc_id_whatever_the_order():
    base = samples("t", [1, 0, 1], ids=[2, 0, 10])
    cand = samples("t", [0, 1, 1], ids=[10, 2, 0])
    [task] = pair_samples(base, cand)
    assert task.doc_ids == ("0", "2", "10"), "numeric ids in numeric order"
    assert task.baseline.tolist() == [0, 1, 1] and task.candidate.tolist() == [1, 1, 0]


def test_reruns_are_averaged_per_item():
    base = samples("t", [1, 0, 1, 1], ids=[0, 0, 1, 1])
    cand = samples("t", [0, 0, 1, 0], ids=[0, 0, 1, 1])
    [task] = pair_samples(base, cand)
    assert task.baseline.tolist() == [0.5, 1.0] and task.candidate.tolist() == [0.0, 0.5]


def test_first_metric_of_the_baseline_is_the_default_and_metric_can_be_chosen():
    base = samples("t", [1, 1], "acc") + samples("t", [0, 0], "acc_norm")
    cand = samples("t", [1, 0], "acc") + samples("t", [1, 1], "acc_norm")
    assert pair_samples(base, cand)[0].metric == "acc"
    chosen = pair_samples(base, cand, metric="acc_norm")[0]
    assert chosen.metric == "acc_norm" and chosen.candidate.tolist() == [1, 1]


def test_confidence_kept_only_when_every_item_has_one():
    [task] = pair_samples(samples("t", [1, 0], confidences=[0.9, 0.2]), samples("t", [1, 0], confidences=[0.8, None]))
    assert task.baseline_confidence.tolist() == [0.9, 0.2] and task.candidate_confidence is None


@pytest.mark.parametrize("base, cand, message", [
    ([], samples("t", [1]), "baseline has no per-sample results"),
    (samples("t", [1]), samples("u", [1]), "different tasks: 1 only in the baseline (t); 1 only in the candidate (u)"),
    (samples("t", [1, 0]), samples("t", [1, 0], ids=[0, 5]), "only in the baseline: 1; only in the candidate: 5"),
    (samples("t", [1]), samples("t", [1], metric="f1"), "metric 'acc' is missing from the candidate (it has f1)"),
    (samples("t", [float("nan")]), samples("t", [1]), "non-finite score"),
])
def test_mismatched_inputs_are_refused_with_what_differs(base, cand, message):
    with pytest.raises(GateInputError, match=None) as info:
        pair_samples(base, cand)
    assert message in str(info.value)


def test_an_explicit_metric_missing_anywhere_is_refused():
    with pytest.raises(GateInputError, match="metric 'f1' is missing from the baseline"):
        pair_samples(samples("t", [1]), samples("t", [1]), metric="f1")


# --- answer confidence ----------------------------------------------------------------------------------------------

def test_answer_span_is_the_last_box_content_else_the_stripped_text():
    text = "so \\boxed{3} no, \\boxed{42}."
    start, end = answer_span(text)
    assert text[start:end] == "42"
    text = "  17 \n"
    start, end = answer_span(text)
    assert text[start:end] == "17"


def test_span_probability_multiplies_the_probabilities_of_the_overlapping_tokens():
    # tokens "ab" "c" "de" (prefix lengths 0, 2, 3, 5); span "cd" = chars [2, 4) overlaps tokens 2 and 3
    logprobs = [math.log(0.5), math.log(0.8), math.log(0.25)]
    prefix = [0, 2, 3, 5].__getitem__
    assert span_probability(prefix, logprobs, (2, 4)) == pytest.approx(0.8 * 0.25)
    assert span_probability(prefix, logprobs, (0, 1)) == pytest.approx(0.5)
    assert span_probability(prefix, logprobs, (3, 5)) == pytest.approx(0.25)
    assert span_probability(prefix, logprobs, (5, 5)) == pytest.approx(0.5 * 0.8 * 0.25), "empty answer: all"
    # a zero-width token (a special token, decoded to nothing) inside the span counts too
    assert span_probability([0, 2, 2, 5].__getitem__, logprobs, (1, 3)) == pytest.approx(0.5 * 0.8 * 0.25)


def test_greedy_confidence_is_the_models_probability_of_its_answer_tokens():
    """The recorded confidence equals the answer tokens' probability recomputed by a plain forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.evaluation import decoded_prefix_length, generate_greedy
    from align.models import ensure_tiny

    tiny_model_path = ensure_tiny()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    prompts = [[{"role": "user", "content": "What is 12 + 30?"}], [{"role": "user", "content": "Say hi"}]]
    results = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=2)
    for prompt, (text, confidence) in zip(prompts, results):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        with torch.no_grad():  # the same greedy tokens, unbatched, then one teacher-forced forward pass
            output = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=12,
                                    pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            ids = output[0, len(prompt_ids):].tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
            logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist()
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
        expected = span_probability(decoded_prefix_length(tokenizer, ids), logprobs, answer_span(text))
        assert 0.0 < confidence <= 1.0
        assert math.log(confidence) == pytest.approx(math.log(expected), abs=1e-3)


# --- align's result files -------------------------------------------------------------------------------------------

def align_run(tmp_path: Path, name: str, step_scores: dict[int, list[float]], task="synthetic/arithmetic",
              question="q{}") -> Path:
    run_dir = tmp_path / name
    for step, scores in step_scores.items():
        rows = [{"doc_id": i, "prompt": question.format(i), "answer": "a", "completion": "c", "score": s,
                 "correct": s >= 1, "confidence": 0.5} for i, s in enumerate(scores)]
        write_samples(samples_path(run_dir, step), rows, task=task, metric="boxed_match", step=step)
    return run_dir


def test_a_run_directory_means_its_last_measurement(tmp_path):
    run_dir = align_run(tmp_path, "run", {0: [0, 0], 10: [1, 0], 2: [0, 1]})
    got = read_align_samples(run_dir)
    assert [(s.task, s.metric, s.score, s.confidence) for s in got] == [
        ("synthetic/arithmetic", "boxed_match", 1.0, 0.5), ("synthetic/arithmetic", "boxed_match", 0.0, 0.5)]
    assert [s.doc_id.split(":")[0] for s in got] == ["0", "1"], "the row index, tagged with a content hash"
    assert not list((run_dir / "eval").glob(".*")), "no staging file left behind"


def test_malformed_align_lines_are_refused_with_file_and_line(tmp_path):
    path = tmp_path / "step-0.jsonl"
    path.write_text(json.dumps({"task": "t", "doc_id": 0, "metric": "m", "score": 1}) + "\n{oops\n")
    with pytest.raises(GateInputError, match=r"step-0.jsonl:2 is not JSON"):
        read_align_samples(path)
    path.write_text(json.dumps({"task": "t", "doc_id": 0, "score": 1}) + "\n")
    with pytest.raises(GateInputError, match=r"step-0.jsonl:1 lacks metric"):
        read_align_samples(path)
    path.write_text(json.dumps({"task": "t", "doc_id": 0, "metric": "m", "score": None}) + "\n")
    with pytest.raises(GateInputError, match=r"step-0.jsonl:1: score / confidence must be numbers"):
        read_align_samples(path)


def test_runs_whose_held_out_questions_differ_are_refused_not_paired(tmp_path):
    a = align_run(tmp_path, "a", {0: [1, 0, 1]}, question="q{}")
    b = align_run(tmp_path, "b", {0: [1, 0, 1]}, question="other question {}")
    with pytest.raises(GateInputError, match="different documents"):
        run_gate([a], [b])


# --- report and command line ----------------------------------------------------------------------------------------

def test_report_table_matches_mcnemar_on_the_items(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.7).astype(float)
    cand = base.copy()
    cand[rng.choice(np.flatnonzero(base == 1), 30, replace=False)] = 0  # 30 losses
    cand[rng.choice(np.flatnonzero(base == 0), 5, replace=False)] = 1  # 5 wins
    before, after = align_run(tmp_path, "a", {0: base.tolist()}), align_run(tmp_path, "b", {0: cand.tolist()})
    report = run_gate([before], [after])
    [line] = report["tasks"]
    assert (line["n"], line["baseline_better"], line["candidate_better"]) == (400, 30, 5)
    assert line["p_value"] == pytest.approx(mcnemar_exact(base, cand).p_value)
    assert report["degraded"] and report["test"] == "mcnemar_exact"
    assert line["difference"] == pytest.approx(-25 / 400)
    assert "| synthetic/arithmetic | boxed_match | 400 | " in markdown(report) and "**DEGRADED**" in markdown(report)


def test_side_calibration_is_ece_and_overconfidence():
    confidence, scores = np.array([0.9, 0.9, 0.1, 0.1]), np.array([1.0, 0.0, 0.0, 0.0])
    # bins: 0.9 -> acc 0.5 (gap 0.4), 0.1 -> acc 0 (gap 0.1); ECE = 0.5 * 0.4 + 0.5 * 0.1
    c = side_calibration(confidence, scores, bins=10)
    assert c["ece"] == pytest.approx(0.25) and c["overconfidence"] == pytest.approx(0.5 - 0.25)
    assert side_calibration(None, scores, 10) is None and side_calibration(confidence, scores * 0.5, 10) is None


def test_calibration_pools_the_tasks_that_have_confidences():
    t1 = pair_samples(samples("a", [1, 0], confidences=[1.0, 0.0]), samples("a", [1, 0], confidences=[0.6, 0.6]))
    t2 = pair_samples(samples("b", [1, 1]), samples("b", [1, 1], confidences=[0.6, 0.6]))
    result = calibration(t1 + t2)
    assert result["baseline"]["n"] == 2 and result["baseline"]["ece"] == pytest.approx(0.0)
    assert result["candidate"]["n"] == 4 and result["candidate"]["mean_confidence"] == pytest.approx(0.6)
    assert result["candidate"]["accuracy"] == pytest.approx(0.75)


def test_cli_exit_codes_and_reports(tmp_path, capsys):
    same = [1, 0, 1, 1, 0, 1, 1, 1] * 10
    worse = [0 if i % 8 in (0, 2, 3, 5) else s for i, s in enumerate(same)]
    base, ok, bad = (align_run(tmp_path, n, {0: s}) for n, s in (("base", same), ("ok", same), ("bad", worse)))
    assert main(["--baseline", str(base), "--candidate", str(ok)]) == EXIT_OK
    json_path, md_path = tmp_path / "out/gate.json", tmp_path / "out/gate.md"
    assert main(["--baseline", str(base), "--candidate", str(bad), "--aggregate", "per_task",
                 "--json", str(json_path), "--markdown", str(md_path)]) == EXIT_DEGRADED
    assert json.loads(json_path.read_text())["aggregate"] == "per_task" and "DEGRADED" in md_path.read_text()
    other = align_run(tmp_path, "other", {0: same}, task="gsm8k")
    capsys.readouterr()
    assert main(["--baseline", str(base), "--candidate", str(other)]) == EXIT_BAD_INPUT
    assert "different tasks" in capsys.readouterr().err
    assert main(["--baseline", str(base), "--candidate", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert main(["--baseline", str(base), "--candidate", str(ok), "--alpha", "1.5"]) == EXIT_BAD_INPUT
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["--baseline", str(base), "--candidate", str(tmp_path / "notes.txt")]) == EXIT_BAD_INPUT
    assert "neither lm-eval" in capsys.readouterr().err


def test_module_entry_point_runs(tmp_path):
    base = align_run(tmp_path, "base", {0: [1, 0, 1]})
    result = subprocess.run([sys.executable, "-m", "align.gate", "--baseline", str(base), "--candidate", str(base)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == EXIT_OK, result.stderr
    assert "no significant degradation" in result.stdout


def test_a_non_finite_score_in_a_metric_not_compared_does_not_block_the_gate():
    base = samples("t", [1, 0]) + samples("t", [float("nan"), 1.0], metric="f1")
    [task] = pair_samples(base, samples("t", [1, 1]))
    assert task.metric == "acc"
