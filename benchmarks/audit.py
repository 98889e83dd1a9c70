"""Effective-rank audit of trained checkpoints against their starting models -> benchmarks/results/audit.json

    .venv/bin/python benchmarks/audit.py \\
        --pair grpo <run>/warm_start/final <run>/final \\
        --pair multiref-dpo embedded:smollm2-135m-instruct <dpo run>/final

Trains nothing: it audits finished runs (for the issue's benchmark, the embedded SmolLM2 chat model before and after
`grpo-arithmetic-smollm2-135m` and `multiref-dpo-prefs-smollm2-135m`; a GRPO run's starting model is its warm start).
For each pair it runs `python -m align.audit`'s audit on the shipped prompt pair (embedded:arithmetic vs
embedded:neutral, n = 64; the ablation check on embedded:arithmetic-heldout), keeps the full report under
`--workdir/<name>/` and summarises, per layer, rho_eps of M_template and M_DiD and their top direction's
|cos(u1, DiM_a)| (the aligned model's difference in means, target minus control), M_template's s1^2 share and
centered rank, the rank baseline's rho_eps (the base model's question - statement contrast, embedded:questions vs
embedded:statements, n 64), and per k the ablation effect of the top-k directions against random k-frames.
`--keep` keeps pairs already in --out (audited with the same settings; each pair stores its own); the JSON is
written after every pair. The paper's figures (7-9B models, n 200) are stored alongside for
context only: different models, prompts and training.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAPER = {  # arXiv 2605.24583, eps 0.05, n 200, last token, bf16: Llama-3.1-8B / Gemma-2-9B / Qwen-2.5-7B
    "rho_template": [0.0029, 0.0048, 0.0044], "rank_template": [12.0, 17.4, 15.7],
    "cos_u1_dim_did": [0.77, 0.86, 0.50], "cos_u1_dim_template": [0.34, 0.39, 0.18],
    "refusal_narrow_k3": {"baseline": [0.97, 0.99, 0.96], "ablated": [0.80, 0.00, 0.54], "random": [0.94, 0.99, 0.95]},
    "rho_unrelated_contrasts": {"llama": [0.0078, 0.0086], "gemma": [0.0086, 0.0104]},  # EN-FR, question-statement
}


def summarise(report: dict) -> dict:
    """The benchmark's columns from one audit report (align.audit.run.run_audit)."""
    per_layer = [{"layer": row["layer"],
                  **{f"{key}_{name}": row["variants"][name][key]
                     for name in ("template", "did") for key in ("rank_eps", "rho_eps", "cos_u1_ref")},
                  **{f"{key}_{name}": row["variants"][name][key]
                     for name in ("contrast",) if name in row["variants"] for key in ("rank_eps", "rho_eps")},
                  "s1_share_template": row["variants"]["template"]["s1_share"],
                  "centered_rank_template": row["variants"]["template"]["centered_rank"]}
                 for row in report["layers"]]
    summary = {"d": report["config"]["width"], "L": report["config"]["num_layers"], "per_layer": per_layer}
    ablation = report.get("ablation")
    if ablation:
        runs = ablation["runs"]
        summary["ablation"] = {
            "band": ablation["layers"], "metric": runs["baseline"]["metric"], "baseline": runs["baseline"]["rate"],
            "by_k": [{"k": k, **{source: {"rate": runs[f"{source}-k{k}"]["rate"],
                                          "mcnemar_p": runs[f"{source}-k{k}"]["mcnemar_p"]}
                                 for source in ("template", "did")},
                      "random": runs.get(f"random-k{k}")} for k in ablation["k"]],
        }
    return summary


def markdown(results: dict) -> str:
    lines = ["| pair | layer | rho template | rho DiD | rho contrast (baseline) | s1^2 share template | "
             "cos(u1, DiM) template | cos(u1, DiM) DiD |", "|---|---|---|---|---|---|---|---|"]
    for name, pair in results["pairs"].items():
        for row in pair["per_layer"]:
            cells = [row["rho_eps_template"], row["rho_eps_did"], row.get("rho_eps_contrast"),
                     row.get("s1_share_template"), row["cos_u1_ref_template"], row["cos_u1_ref_did"]]
            lines.append(f"| {name} | {row['layer']} | " + " | ".join("-" if c is None else f"{c:.3g}" for c in cells)
                         + " |")
    for name, pair in results["pairs"].items():
        if "ablation" in pair:
            a = pair["ablation"]
            lines += ["", f"{name}: ablation on blocks {a['band']} ({a['metric']}, unablated {a['baseline']:.3f})", "",
                      "| k | template | DiD | random mean +- sd |", "|---|---|---|---|"]
            for row in a["by_k"]:
                random = row["random"]
                lines.append(f"| {row['k']} | {row['template']['rate']:.3f} | {row['did']['rate']:.3f} | "
                             + (f"{random['rate_mean']:.3f} +- {random['rate_sd']:.3f}" if random else "-") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=3, action="append", required=True, metavar=("NAME", "BASE", "ALIGNED"))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--ablate-k", default="1,3,10")
    parser.add_argument("--ablate-n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "results" / "audit")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audit.json")
    parser.add_argument("--keep", action="store_true", help="keep the pairs already in --out (same name, base and "
                                                             "aligned model) instead of auditing them again")
    opts = parser.parse_args()

    from align.audit import report as writer
    from align.audit.run import AuditConfig, run_audit
    from align.console import quiet_dependencies

    quiet_dependencies("none")

    kept = json.loads(opts.out.read_text())["pairs"] if opts.keep and opts.out.is_file() else {}
    results = {"config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
                          "python": platform.python_version(), "machine": platform.machine()},
               "paper": PAPER, "pairs": kept}
    for name, base, aligned in opts.pair:
        settings = {"n": opts.n, "ablate_k": opts.ablate_k, "ablate_n": opts.ablate_n,
                    "max_new_tokens": opts.max_new_tokens}
        if name in kept and (kept[name]["base"], kept[name]["aligned"], kept[name].get("settings")) == (
                base, aligned, settings):
            continue  # --keep: audited by an earlier invocation with the same settings
        started = time.perf_counter()
        cfg = AuditConfig(base=base, aligned=aligned, target="embedded:arithmetic", control="embedded:neutral",
                          n=opts.n, contrast=("embedded:questions", "embedded:statements"),
                          ablate_k=tuple(int(k) for k in opts.ablate_k.split(",") if k),
                          ablate_n=opts.ablate_n, max_new_tokens=opts.max_new_tokens)
        report = run_audit(cfg, opts.workdir / name)
        writer.write(report, opts.workdir / name)
        results["pairs"][name] = {"base": base, "aligned": aligned, "settings": settings,
                                  "seconds": time.perf_counter() - started,
                                  **summarise(writer.json_safe(report))}
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(results, indent=1) + "\n")  # after every pair: an interruption keeps it
    print(markdown(results), end="")


if __name__ == "__main__":
    main()
