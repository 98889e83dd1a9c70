"""Reader for align's own per-sample evaluation output (`<run_dir>/eval/step-<N>.jsonl`, see
`align.evaluation.write_samples`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from align.gate.samples import GateInputError, Sample

_STEP_FILE = re.compile(r"^step-(\d+)\.jsonl$")
_REQUIRED = ("task", "doc_id", "metric", "score")


def step_files(run_dir: Path) -> dict[int, Path]:
    """A run directory's per-sample files by optimizer step."""
    directory = Path(run_dir) / "eval"
    if not directory.is_dir():
        return {}
    return {int(m.group(1)): path for path in directory.iterdir() if (m := _STEP_FILE.match(path.name))}


def is_align_run(path: Path) -> bool:
    return Path(path).is_dir() and bool(step_files(path))


def resolve(path: Path) -> Path:
    """The per-sample file a path stands for: a run directory means its last measurement (the final model)."""
    path = Path(path)
    if path.is_dir():
        steps = step_files(path)
        if not steps:
            raise GateInputError(f"{path} holds no align evaluation output (eval/step-<N>.jsonl); enable eval "
                                 f"(eval.enabled=true with a held-out split) or pass result files.")
        return steps[max(steps)]
    return path


def item_id(row: dict) -> str:
    """The row's index in the held-out split, tagged with a hash of its question and answer: two runs whose
    held-out splits differ (another data seed, size or source) then differ in ids and are refused, never paired
    question against wrong question."""
    if "prompt" not in row:
        return str(row["doc_id"])
    content = json.dumps([row["prompt"], row.get("answer")], sort_keys=True, default=str)
    return f"{row['doc_id']}:{hashlib.sha256(content.encode()).hexdigest()[:10]}"


def read_align_samples(path: Path) -> list[Sample]:
    """Samples of one align result file (or a run directory's final one).

    Raises:
        GateInputError: the file is missing, empty, not JSON lines, or a line lacks task / doc_id / metric / score.
    """
    file = resolve(path)
    if not file.is_file():
        raise GateInputError(f"{file} does not exist")
    samples = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise GateInputError(f"{file}:{number} is not JSON ({err.msg})") from None
        missing = [key for key in _REQUIRED if not isinstance(row, dict) or key not in row]
        if missing:
            raise GateInputError(f"{file}:{number} lacks {', '.join(missing)}: not an align per-sample result line")
        try:
            score = float(row["score"])
            confidence = None if row.get("confidence") is None else float(row["confidence"])
        except (TypeError, ValueError):
            raise GateInputError(f"{file}:{number}: score / confidence must be numbers, got {row['score']!r} / "
                                 f"{row.get('confidence')!r}") from None
        samples.append(Sample(str(row["task"]), item_id(row), str(row["metric"]), score, confidence))
    if not samples:
        raise GateInputError(f"{file} holds no samples")
    return samples


def looks_like_align(path: Path) -> bool:
    """A run directory with eval output, or a .jsonl whose first line has align's per-sample keys."""
    path = Path(path)
    if path.is_dir():
        return is_align_run(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path) as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and all(key in row for key in _REQUIRED)
