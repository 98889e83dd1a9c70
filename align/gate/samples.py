"""Per-sample results and their pairing: the data model between result files and the gate's statistics.

A reader (lm-evaluation-harness sample files, align's own eval output) turns files into `Sample`s, one per
(task, document, metric, rerun). `pair_samples` matches the baseline's and the candidate's samples by task and
document id and returns, per task, the two item-aligned score vectors the tests in `align.gate.stats` take, plus the
confidences the calibration report needs. Everything that would make the comparison meaningless (a task, a document or
a metric on one side only) is refused with a `GateInputError` that names it, before any statistics run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


class GateInputError(ValueError):
    """The inputs cannot be compared (missing or malformed files, mismatched items, tasks or metrics): exit code 2."""


@dataclass(frozen=True)
class Sample:
    """One scored answer.

    ``doc_id`` identifies the item within ``task`` (stringified, so ints and strings from different files compare
    equal). Several samples with the same (task, doc_id, metric) are reruns of the item (e.g. sampled generations)
    and are averaged before testing. ``confidence`` is the model's probability for the answer it gave (token
    probability of the chosen option or of the generated answer), in [0, 1], or None where the source has none.
    """

    task: str
    doc_id: str
    metric: str
    score: float
    confidence: float | None = None


@dataclass(frozen=True)
class PairedTask:
    """One task's items, in sorted doc-id order on both sides.

    ``baseline`` / ``candidate`` are (n,) per-item scores (reruns averaged). ``*_confidence`` are (n,) arrays when
    every item of that side has a confidence for every rerun (averaged like the scores), else None.
    """

    task: str
    metric: str
    doc_ids: tuple[str, ...]
    baseline: np.ndarray
    candidate: np.ndarray
    baseline_confidence: np.ndarray | None
    candidate_confidence: np.ndarray | None


def _by_task(samples: list[Sample], side: str) -> dict[str, dict[str, dict[str, list[Sample]]]]:
    """task -> metric -> doc_id -> reruns, metrics in first-seen order (a source lists its primary metric first)."""
    if not samples:
        raise GateInputError(f"the {side} has no per-sample results")
    grouped: dict[str, dict[str, dict[str, list[Sample]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for sample in samples:
        grouped[sample.task][sample.metric][sample.doc_id].append(sample)
    return grouped


def _examples(ids) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _side_vectors(reruns_by_doc: dict[str, list[Sample]], doc_ids: list[str],
                  side: str) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.array([np.mean([s.score for s in reruns_by_doc[d]]) for d in doc_ids], dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = next(s for d in doc_ids for s in reruns_by_doc[d] if not np.isfinite(s.score))
        raise GateInputError(f"the {side} has a non-finite score for {bad.task} document {bad.doc_id} "
                             f"({bad.metric}={bad.score})")
    confidences = [[s.confidence for s in reruns_by_doc[d]] for d in doc_ids]
    if any(c is None for per_doc in confidences for c in per_doc):
        return scores, None
    return scores, np.array([np.mean(per_doc) for per_doc in confidences], dtype=np.float64)


def pair_samples(baseline: list[Sample], candidate: list[Sample], metric: str | None = None) -> list[PairedTask]:
    """Match the two sides item by item.

    Args:
        baseline, candidate: every sample of each side.
        metric: the metric to compare in every task; None takes each task's first metric on the baseline side (the
            source's primary metric, e.g. lm-eval's first listed one).

    Returns:
        One `PairedTask` per task, in sorted task order.

    Raises:
        GateInputError: a side is empty, the sides cover different tasks, a task's documents differ between the
            sides, the metric is missing from a task on either side, or a score is not finite.
    """
    sides = {"baseline": _by_task(baseline, "baseline"), "candidate": _by_task(candidate, "candidate")}
    only = {side: set(tasks) - set(sides[other]) for (side, tasks), other in
            zip(sides.items(), ("candidate", "baseline"))}
    if only["baseline"] or only["candidate"]:
        parts = [f"{len(names)} only in the {side} ({_examples(names)})" for side, names in only.items() if names]
        raise GateInputError(f"the two sides cover different tasks: {'; '.join(parts)}. Evaluate both models on the "
                             f"same tasks.")
    paired = []
    for task in sorted(sides["baseline"]):
        chosen = metric or next(iter(sides["baseline"][task]))
        for side, tasks in sides.items():
            if chosen not in tasks[task]:
                raise GateInputError(f"task {task!r}: metric {chosen!r} is missing from the {side} (it has "
                                     f"{', '.join(tasks[task])}); choose one both sides report with --metric.")
        base_docs, cand_docs = (set(tasks[task][chosen]) for tasks in sides.values())
        if base_docs != cand_docs:
            raise GateInputError(
                f"task {task!r}: the sides cover different documents ({len(base_docs)} baseline, {len(cand_docs)} "
                f"candidate; only in the baseline: {_examples(base_docs - cand_docs) or 'none'}; only in the "
                f"candidate: {_examples(cand_docs - base_docs) or 'none'}). Evaluate both models on the same items "
                f"(same task version, limit and few-shot seed).")
        doc_ids = sorted(base_docs, key=_natural_key)
        base_scores, base_conf = _side_vectors(sides["baseline"][task][chosen], doc_ids, "baseline")
        cand_scores, cand_conf = _side_vectors(sides["candidate"][task][chosen], doc_ids, "candidate")
        paired.append(PairedTask(task, chosen, tuple(doc_ids), base_scores, cand_scores, base_conf, cand_conf))
    return paired


def _natural_key(doc_id: str) -> tuple:
    """Numeric ids in numeric order ("2" before "10"), then the rest as strings."""
    return (0, int(doc_id), "") if doc_id.lstrip("-").isdigit() else (1, 0, doc_id)
