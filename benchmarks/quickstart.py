"""Quickstart over several seeds: held-out accuracy before/after GRPO and wall time -> results/quickstart.json.

    .venv/bin/python benchmarks/quickstart.py [--seeds 1 2 3]

Each seed runs the full quickstart recipe (SFT warm start, then GRPO) as a separate process, exactly as
`make quickstart` does, with `trainer.seed` changed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"held-out accuracy \(greedy, no hint\): ([0-9.]+) -> ([0-9.]+)")


def run_seed(seed: int, output_root: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "align.train", "recipe=grpo-arithmetic-tiny", f"trainer.seed={seed}",
         f"trainer.output_root={output_root}", f"trainer.run_name=seed{seed}"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    before, after = map(float, LINE.search(result.stdout).groups())
    return {"seed": seed, "accuracy_before": before, "accuracy_after": after,
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as output_root:
        runs = [run_seed(seed, Path(output_root)) for seed in args.seeds]
        for r in runs:
            print(f"seed {r['seed']}: {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f} ({r['wall_s']} s)")
    gains = [r["accuracy_after"] - r["accuracy_before"] for r in runs]
    summary = {
        "recipe": "grpo-arithmetic-tiny",
        "runs": runs,
        "gain_mean": statistics.mean(gains),
        "gain_min": min(gains),
        "wall_s_max": max(r["wall_s"] for r in runs),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))


if __name__ == "__main__":
    main()
