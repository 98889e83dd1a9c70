"""Reader for lm-evaluation-harness per-sample output (`lm_eval ... --log_samples --output_path DIR`).

What lm-eval writes (checked against lm-eval 0.4.13; the per-line ``filter`` and ``metrics`` fields this reader
needs exist since 0.4.7):

- ``DIR/<model name, sanitized>/results_<timestamp>.json`` (aggregates; ``configs`` maps each task name to its
  config, with ``output_type``; ``n-samples`` maps it to ``{"original", "effective"}`` document counts) and, per
  task, ``samples_<task>_<timestamp>.jsonl`` with the same timestamp (``datetime.isoformat()`` with ':' -> '-', so it
  holds no '_'; a task name may hold '_', hence the task is everything between ``samples_`` and the last '_'). With
  ``--output_path x.json`` the files go next to it and the results file is ``x_<timestamp>.json``. A group (e.g.
  ``mmlu``) writes one samples file per subtask and none for itself.
- One JSON line per (document, filter): ``doc_id``, ``doc``, ``target`` (stringified), ``arguments``, ``resps`` (per
  request, the list of its ``repeats`` raw responses), ``filtered_resps`` (per request, the response after the
  filter), ``filter`` (the filter's name: ``none`` when the task defines no ``filter_list``, else the names from it,
  e.g. gsm8k's ``strict-match`` / ``flexible-extract``), ``metrics`` (the metric names, in the task's order), each
  metric's value under its own name, and ``doc_hash`` / ``prompt_hash`` / ``target_hash``. Repeats never add lines:
  the filter reduces them to one scored answer per line. Responses are written as strings (``sanitize_list``): a
  log-likelihood request's response is ``["-5.62", "False"]`` (log-likelihood, is-greedy).

Each line gives one `Sample` per numeric metric, in the line's ``metrics`` order (bools as 0/1; per-sample values
that are not numbers, like f1's ``[gold, pred]`` pairs, are skipped). A filter other than ``none`` becomes part of the
task, ``<task>/<filter>``, so each filter is gated as its own task. Confidence: for a multiple-choice line (two or more
requests, each with one (log-likelihood, is-greedy) response) the softmax of the choices' log-likelihoods at the
choice the model picks (the highest log-likelihood, lm-eval's ``acc`` prediction); generation and single-request
log-likelihood lines have no probability of the given answer: None.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from align.gate.samples import GateInputError, Sample

SAMPLES_GLOB = "samples_*.jsonl"
DEFAULT_FILTER = "none"
MIN_FORMAT_VERSION = "0.4.7"
_STAMPED = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$")
_UNSTAMPED = re.compile(r"^samples_(?P<task>.+)\.jsonl$")


@dataclass(frozen=True)
class _SamplesFile:
    """One lm-eval samples file and what its run's results file says about its task."""

    path: Path
    task: str
    stamp: str | None
    output_type: str | None = None
    n_docs: int | None = None


def looks_like_lm_eval(path: str | os.PathLike) -> bool:
    """Whether `path` is lm-eval ``--log_samples`` output: a ``samples_*.jsonl`` file, or a directory holding one
    at any depth."""
    path = Path(path)
    if path.is_file():
        return _UNSTAMPED.match(path.name) is not None
    if path.is_dir():
        return next(iter(path.rglob(SAMPLES_GLOB)), None) is not None
    return False


def read_lm_eval_samples(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Sample]:
    """Every per-sample result in lm-eval ``--log_samples`` output.

    Args:
        paths: one path or several, each an lm-eval output directory (searched recursively for ``samples_*.jsonl``)
            or a ``samples_<task>_<timestamp>.jsonl`` file.

    Returns:
        One `Sample` per (line, numeric metric), files in path order, lines in file order.

    Raises:
        GateInputError: a path is missing or holds no samples file, a file is not named like lm-eval's, a task comes
            from more than one run, a line is malformed (named by file and line number), a document repeats, or a
            file holds fewer documents than its run's results file says were evaluated.
    """
    files = _collect(paths)
    by_task: dict[str, list[_SamplesFile]] = defaultdict(list)
    for f in files:
        by_task[f.task].append(f)
    for task, task_files in by_task.items():
        if len(task_files) > 1:
            listed = "; ".join(str(f.path) for f in task_files)
            raise GateInputError(
                f"lm-eval task {task!r} comes from {len(task_files)} runs: {listed}. Pass one run's files: the "
                f"samples_*.jsonl files of one timestamp, or a directory that holds a single run of each task (each "
                f"`lm_eval --output_path` run adds new timestamped files next to the old ones).")
    samples: list[Sample] = []
    for f in files:
        samples.extend(_read_file(f))
    return samples


def _collect(paths) -> list[_SamplesFile]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[Path, None] = {}  # resolved path -> None, in first-seen order
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(path.rglob(SAMPLES_GLOB))
            if not inside:
                raise GateInputError(f"{path} holds no lm-eval samples file ({SAMPLES_GLOB}, searched recursively); "
                                     f"run lm_eval with --log_samples --output_path {path}")
            found.update((p.resolve(), None) for p in inside)
        elif path.is_file():
            found[path.resolve()] = None
        else:
            raise GateInputError(f"{path} does not exist")
    return [_describe(p) for p in found]


def _describe(path: Path) -> _SamplesFile:
    """The task and run of a samples file, from its name, plus its output type and document count from the results
    file lm-eval wrote with the same timestamp, when that file is there."""
    match = _STAMPED.match(path.name) or _UNSTAMPED.match(path.name)
    if match is None:
        raise GateInputError(f"{path} is not an lm-eval samples file: lm-eval names them "
                             f"samples_<task>_<timestamp>.jsonl, and the task is read from that name")
    task, stamp = match["task"], match.groupdict().get("stamp")
    config, n_docs = {}, None
    results = _results_for(path, stamp)
    if results is not None:
        config = (results.get("configs") or {}).get(task) or {}
        counts = (results.get("n-samples") or {}).get(task) or {}
        if isinstance(counts.get("effective"), int):
            n_docs = counts["effective"]
    output_type = config.get("output_type") if isinstance(config, dict) else None
    return _SamplesFile(path, task, stamp, output_type if isinstance(output_type, str) else None, n_docs)


def _results_for(samples_path: Path, stamp: str | None) -> dict | None:
    """The run's results JSON: ``results_<stamp>.json`` next to the samples file, or ``<name>_<stamp>.json`` when
    lm-eval ran with ``--output_path <name>.json``. None when absent or unreadable (the samples still stand alone)."""
    if stamp is None:
        return None
    candidates = [samples_path.with_name(f"results_{stamp}.json")]
    candidates += sorted(p for p in samples_path.parent.glob(f"*_{stamp}.json") if p not in candidates)
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("configs"), dict):
            return data
    return None


def _read_file(f: _SamplesFile) -> list[Sample]:
    samples: list[Sample] = []
    docs_by_filter: dict[str, set[str]] = defaultdict(set)
    try:
        text = f.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GateInputError(f"{f.path}: cannot read it as UTF-8 text ({exc})") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{f.path}, line {number}"
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise GateInputError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(line, dict):
            raise GateInputError(f"{where}: expected a JSON object (one lm-eval sample), got {type(line).__name__}")
        doc_id, filter_name, metrics = _line_keys(line, where)
        if doc_id in docs_by_filter[filter_name]:
            raise GateInputError(f"{where}: document {doc_id} appears twice for filter {filter_name!r}; lm-eval writes "
                                 f"each (document, filter) once, so this file mixes runs. Pass one run's file.")
        docs_by_filter[filter_name].add(doc_id)
        task = f.task if filter_name == DEFAULT_FILTER else f"{f.task}/{filter_name}"
        confidence = _choice_confidence(line, metrics, f.output_type)
        scores = [(metric, _numeric(line[metric])) for metric in metrics]
        scores = [(metric, value) for metric, value in scores if value is not None]
        if not scores:
            raise GateInputError(f"{where}: no numeric metric value (metrics {metrics} hold "
                                 f"{[line[m] for m in metrics]})")
        samples.extend(Sample(task, doc_id, metric, value, confidence) for metric, value in scores)
    if not docs_by_filter:
        raise GateInputError(f"{f.path}: holds no samples")
    if f.n_docs is not None:
        for filter_name, docs in docs_by_filter.items():
            if len(docs) != f.n_docs:
                raise GateInputError(f"{f.path}: {len(docs)} documents for filter {filter_name!r}, but the run's "
                                     f"results file says {f.n_docs} were evaluated; the samples file is incomplete")
    return samples


def _line_keys(line: dict, where: str) -> tuple[str, str, list[str]]:
    """The line's document id (stringified), filter name and metric names; GateInputError naming what is missing."""
    doc_id = line.get("doc_id")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (int, str)) or doc_id == "":
        raise GateInputError(f"{where}: no doc_id (an int or a non-empty string), got {doc_id!r}")
    missing = [key for key in ("filter", "metrics") if key not in line]
    if missing:
        raise GateInputError(f"{where}: no {' or '.join(map(repr, missing))} field; lm-eval writes both since "
                             f"{MIN_FORMAT_VERSION}: rerun the evaluation with a newer lm-eval")
    filter_name, metrics = line["filter"], line["metrics"]
    if not isinstance(filter_name, str) or not filter_name:
        raise GateInputError(f"{where}: 'filter' should be the filter's name, got {filter_name!r}")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise GateInputError(f"{where}: 'metrics' should be a non-empty list of metric names, got {metrics!r}")
    absent = [m for m in metrics if m not in line]
    if absent:
        raise GateInputError(f"{where}: metric {', '.join(map(repr, absent))} is listed in 'metrics' but has no value")
    return str(doc_id), filter_name, metrics


def _numeric(value) -> float | None:
    """A per-sample metric value as a float (bool -> 0/1); None for values that are not a single number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _choice_confidence(line: dict, metrics: list[str], output_type: str | None) -> float | None:
    """Softmax probability of the highest-log-likelihood choice, for a multiple-choice line; None otherwise.

    The line is multiple-choice when its run says so (``output_type``) or, without a results file, when
    ``filtered_resps`` holds two or more (log-likelihood, is-greedy) pairs. With ``acc_mutual_info`` lm-eval appends
    one unconditional request per choice; only the first (conditional) half are the choices' log-likelihoods.
    """
    if output_type is not None and output_type != "multiple_choice":
        return None
    lls = _logliks(line.get("filtered_resps"))
    if lls is None:
        return None
    if "acc_mutual_info" in metrics and len(lls) % 2 == 0:
        lls = lls[: len(lls) // 2]
    if len(lls) < 2 or any(math.isnan(ll) for ll in lls):
        return None
    top = max(lls)
    if not math.isfinite(top):
        return None
    return 1.0 / math.fsum(math.exp(ll - top) for ll in lls)


def _logliks(responses) -> list[float] | None:
    """The log-likelihoods of a list of (log-likelihood, is-greedy) responses (strings as lm-eval writes them, or
    numbers), or None when `responses` is not such a list."""
    if not isinstance(responses, list) or not responses:
        return None
    lls = []
    for response in responses:
        if not isinstance(response, list) or len(response) != 2:
            return None
        value, greedy = response
        if not (isinstance(greedy, bool) or greedy in ("True", "False")):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return None
        try:
            lls.append(float(value))
        except ValueError:
            return None
    return lls
