"""`python -m align.gate`: is the candidate model significantly worse than the baseline on the same items?

Exit status: 0 no significant degradation, 1 degraded, 2 bad input (unreadable or mismatched results, bad options).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from align.gate.align_results import looks_like_align, read_align_samples
from align.gate.lm_eval import looks_like_lm_eval, read_lm_eval_samples
from align.gate.report import build_report, markdown
from align.gate.samples import GateInputError, Sample, pair_samples
from align.gate.stats import AGGREGATES, gate

EXIT_OK, EXIT_DEGRADED, EXIT_BAD_INPUT = 0, 1, 2


def read_side(paths: list[str | Path], side: str) -> list[Sample]:
    """Every sample of one side. Each path is lm-eval `--log_samples` output (a directory or samples_*.jsonl files)
    or align evaluation output (a run directory, meaning its final measurement, or an eval/step-<N>.jsonl file)."""
    lm_eval_paths, samples = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise GateInputError(f"{side}: {path} does not exist")
        if looks_like_align(path):  # first: a run directory may also hold lm-eval output further down
            samples += read_align_samples(path)
        elif looks_like_lm_eval(path):
            lm_eval_paths.append(path)
        else:
            raise GateInputError(
                f"{side}: {path} is neither lm-eval --log_samples output (a directory with samples_<task>_*.jsonl, "
                f"or such files) nor align evaluation output (a run directory with eval/step-<N>.jsonl, or one of "
                f"those files)")
    if lm_eval_paths:
        samples += read_lm_eval_samples(lm_eval_paths)
    return samples


def run_gate(baseline: list[str | Path], candidate: list[str | Path], *, alpha: float = 0.05,
             aggregate: str = "pooled", metric: str | None = None, permutations: int = 10_000, seed: int = 0,
             bins: int = 10) -> dict:
    """Read both sides, pair them item by item, test, and return the report (see `align.gate.report`).

    Raises:
        GateInputError: unreadable inputs, or sides that do not cover the same tasks, items and metric.
        ValueError: bad alpha, aggregate, permutations or bins.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    paired = pair_samples(read_side(baseline, "baseline"), read_side(candidate, "candidate"), metric)
    decision = gate({t.task: (t.baseline, t.candidate) for t in paired}, alpha, aggregate, permutations, seed)
    return build_report(decision, paired, baseline=[str(p) for p in baseline], candidate=[str(p) for p in candidate],
                        permutations=permutations, seed=seed, bins=bins)


def write_reports(report: dict, json_path: Path | None, markdown_path: Path | None) -> None:
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (markdown_path, markdown(report))):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m align.gate", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 no significant degradation, 1 degraded, 2 bad input. Docs: docs/gate.md")
    parser.add_argument("--baseline", nargs="+", required=True, metavar="RUN_OR_FILES",
                        help="the reference model's per-sample results: lm-eval --log_samples output or an align "
                             "run directory / eval/step-<N>.jsonl")
    parser.add_argument("--candidate", nargs="+", required=True, metavar="RUN_OR_FILES",
                        help="the model under test's results, on the same items")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="false-positive rate: chance of flagging a model that is not worse (default 0.05)")
    parser.add_argument("--aggregate", choices=tuple(AGGREGATES), default="pooled",
                        help="pooled: one test over all items; per_task: a test per task, Holm-Bonferroni, degraded "
                             "if any task is; weighted: permutation test on the task-weighted mean difference")
    parser.add_argument("--metric", help="metric to compare in every task (default: each task's primary metric)")
    parser.add_argument("--permutations", type=int, default=10_000,
                        help="Monte Carlo sign patterns where the permutation test is not exact (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of those patterns (default 0)")
    parser.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="write the markdown report here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run_gate(args.baseline, args.candidate, alpha=args.alpha, aggregate=args.aggregate,
                          metric=args.metric, permutations=args.permutations, seed=args.seed, bins=args.bins)
        write_reports(report, args.json, args.markdown)
    except (GateInputError, ValueError, OSError) as err:  # never exit 1 ("degraded") for a problem of the inputs
        print(f"align.gate: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(markdown(report), end="")
    return EXIT_DEGRADED if report["degraded"] else EXIT_OK
