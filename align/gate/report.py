"""The gate's report: the decision, a line per task and each side's calibration, as a JSON-able dict and markdown."""

from __future__ import annotations

import numpy as np

from align.gate.samples import PairedTask
from align.gate.stats import GateDecision, expected_calibration_error


def _is_binary(scores: np.ndarray) -> bool:
    return bool(np.isin(scores, (0.0, 1.0)).all())


def side_calibration(confidence: np.ndarray | None, scores: np.ndarray, bins: int) -> dict | None:
    """ECE, mean confidence, accuracy and their gap (overconfidence > 0) of one side's answers; None when the
    source gave no confidences or the scores are not 0/1 correctness."""
    if confidence is None or not _is_binary(scores):
        return None
    accuracy, mean_confidence = float(scores.mean()), float(confidence.mean())
    return {"n": int(scores.size), "ece": expected_calibration_error(confidence, scores, bins),
            "mean_confidence": mean_confidence, "accuracy": accuracy,
            "overconfidence": mean_confidence - accuracy}


def calibration(paired: list[PairedTask], bins: int = 10) -> dict[str, dict | None]:
    """Each side's calibration over all tasks that have confidences and 0/1 scores on that side."""
    result = {}
    for side in ("baseline", "candidate"):
        usable = [(getattr(t, f"{side}_confidence"), getattr(t, side)) for t in paired
                  if side_calibration(getattr(t, f"{side}_confidence"), getattr(t, side), bins) is not None]
        result[side] = side_calibration(np.concatenate([c for c, _ in usable]),
                                        np.concatenate([s for _, s in usable]), bins) if usable else None
    return result


def build_report(decision: GateDecision, paired: list[PairedTask], *, baseline: list[str], candidate: list[str],
                 permutations: int, seed: int, bins: int = 10) -> dict:
    """The JSON report: inputs, settings, the overall decision, one entry per task and calibration."""
    tasks = []
    for line, task in zip(decision.tasks, paired):
        tasks.append({
            "task": line.task, "metric": task.metric, "n": line.n,
            "baseline_mean": line.baseline_mean, "candidate_mean": line.candidate_mean,
            "difference": line.candidate_mean - line.baseline_mean,
            "baseline_better": line.b, "candidate_better": line.c, "test": line.test, "p_value": line.p_value,
            "adjusted_p": line.adjusted_p, "degraded": line.degraded,
            "calibration": {side: side_calibration(getattr(task, f"{side}_confidence"), getattr(task, side), bins)
                            for side in ("baseline", "candidate")},
        })
    return {
        "degraded": decision.degraded, "p_value": decision.p_value, "alpha": decision.alpha,
        "aggregate": decision.method, "test": decision.test, "permutations": permutations, "seed": seed,
        "baseline": baseline, "candidate": candidate, "tasks": tasks,
        "calibration": calibration(paired, bins), "calibration_bins": bins,
    }


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value) -> str:
    return "–" if value is None else str(value)


def _p(value) -> str:
    return "–" if value is None else (f"{value:.2e}" if value < 1e-3 else f"{value:.4f}")


def markdown(report: dict) -> str:
    """A human-readable report: verdict, per-task table, calibration table."""
    verdict = "**DEGRADED**" if report["degraded"] else "no significant degradation"
    lines = [
        "# Degradation gate", "",
        f"- baseline: {', '.join(report['baseline'])}",
        f"- candidate: {', '.join(report['candidate'])}",
        f"- decision: {verdict} (p = {_p(report['p_value'])}, alpha = {report['alpha']}, aggregate "
        f"`{report['aggregate']}`, test `{report['test']}`)", "",
        "| task | metric | n | baseline | candidate | diff | b (base better) | c (cand better) | test | p | Holm p "
        "| degraded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for t in report["tasks"]:
        degraded = "–" if t["degraded"] is None else ("yes" if t["degraded"] else "no")
        lines.append(f"| {t['task']} | {t['metric']} | {t['n']} | {_number(t['baseline_mean'])} | "
                     f"{_number(t['candidate_mean'])} | {t['difference']:+.3f} | {_count(t['baseline_better'])} | "
                     f"{_count(t['candidate_better'])} | {t['test']} | {_p(t['p_value'])} | {_p(t['adjusted_p'])} | "
                     f"{degraded} |")
    if report["aggregate"] != "per_task":
        lines += ["", f"Per-task p-values are descriptive; the decision is the `{report['aggregate']}` test's."]
    lines += ["", f"## Calibration (answer confidence, {report['calibration_bins']} bins)", "",
              "| side | n | ECE | mean confidence | accuracy | overconfidence |", "|---|---:|---:|---:|---:|---:|"]
    for side in ("baseline", "candidate"):
        c = report["calibration"][side]
        lines.append(f"| {side} | – | – | – | – | – |" if c is None else
                     f"| {side} | {c['n']} | {c['ece']:.3f} | {c['mean_confidence']:.3f} | {c['accuracy']:.3f} | "
                     f"{c['overconfidence']:+.3f} |")
    if any(report["calibration"][side] is None for side in ("baseline", "candidate")):
        lines += ["", "–: no answer confidences in that side's results (e.g. lm-eval generation tasks), or scores "
                      "that are not 0/1."]
    return "\n".join(lines) + "\n"
