"""What the audit writes: audit.json (everything, full spectra), audit.md (tables), and two PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

MARKDOWN, JSON, ENERGY_PNG, SPECTRA_PNG = "audit.md", "audit.json", "cumulative_energy.png", "spectra.png"
TABLE_VARIANTS = ("naive", "template", "aligned", "did", "template_control")
CONTRAST_VARIANT = "contrast"  # the base model's H(first_i) - H(second_i) over --contrast's pairs: the rank baseline


def json_safe(value):
    """JSON has no NaN: undefined quantities (a zero matrix's cosines) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def table_variants(report: dict) -> tuple[str, ...]:
    """The per-layer rows of the tables and plots: the five always computed, then the rank baseline when it ran."""
    return TABLE_VARIANTS + ((CONTRAST_VARIANT,) if CONTRAST_VARIANT in report["layers"][0]["variants"] else ())


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = ["# Effective-rank audit", "", f"> {report['caveat']}", "",
             f"base `{cfg['base']}`, aligned `{cfg['aligned']}`; target `{cfg['target']}` (n={cfg['n_target']}), "
             f"control `{cfg['control']}` (n={cfg['n_control']}); d={cfg['width']}, L={cfg['num_layers']}, "
             f"eps={cfg['eps']}; reference r: {cfg['reference']}.", "",
             "Variants: naive = H_a(chat) - H_b(raw); template = H_a(chat) - H_b(chat) (headline); aligned = "
             "H_a(chat) - H_a(raw); did = template minus the control set's mean template shift; template_control = "
             "template on the control set" + ("; contrast = the base model's raw H(first_i) - H(second_i) over "
                                               f"{cfg['contrast'][0]} / {cfg['contrast'][1]} (n={cfg['n_contrast']}), "
                                               "an unrelated contrast: the rank baseline" if cfg.get("contrast")
                                               else "") + ".", ""]
    header = ("| layer | variant | rank_eps | rho_eps | rank/min(d,n) | centered rank | top-5 s_i | s1^2 share | "
              "residual share | \\|cos(u1,r)\\| | \\|cos(u1,mbar)\\| | numerical rank | erank |")
    lines += [header, "|" + "---|" * (header.count("|") - header.count("\\|") - 1)]
    for row in report["layers"]:
        for name in table_variants(report):
            v = row["variants"][name]
            top = ", ".join(_fmt(s) for s in v["top_singular_values"])
            lines.append(f"| {row['layer']} | {name} | {v['rank_eps']} | {_fmt(v['rho_eps'])} | "
                         f"{_fmt(v['rank_per_min'])} | {v['centered_rank']} | {top} | {_fmt(v['s1_share'])} | "
                         f"{_fmt(v['residual_share'])} | {_fmt(v.get('cos_u1_ref'))} | {_fmt(v['cos_u1_mean'])} | "
                         f"{v['numerical_rank']} | {_fmt(v['erank'])} |")
    lines += ["", "rank_eps at other eps (sensitivity):", "",
              "| layer | variant | " + " | ".join(f"eps {e}" for e in report["layers"][0]["variants"]["template"]
                                                   ["rank_at_eps"]) + " |"]
    lines.append("|" + "---|" * (2 + len(report["layers"][0]["variants"]["template"]["rank_at_eps"])))
    for row in report["layers"]:
        for name in ("template", "did"):
            ranks = row["variants"][name]["rank_at_eps"].values()
            lines.append(f"| {row['layer']} | {name} | " + " | ".join(str(r) for r in ranks) + " |")
    if "ablation" in report:
        lines += ["", *ablation_markdown(report["ablation"])]
    return "\n".join(lines) + "\n"


def ablation_markdown(ablation: dict) -> list[str]:
    runs = ablation["runs"]
    metric = runs["baseline"]["metric"]
    lines = [f"## Ablation ({ablation['band']} band, blocks {ablation['layers']}, {ablation['n']} prompts of "
             f"`{ablation['prompts']}`, metric {metric})", "",
             *([] if ablation.get("held_out", True) else
               ["**Not held out:** these are prompts the SVD saw (give --ablate-prompts, or more --target prompts "
                "than --n).", ""]),
             "SVD order is variance order, not causal order: read the whole k-curve and the single-direction rows. "
             "Per-prompt results: ablation/<run>.jsonl (`python -m align.gate --baseline ablation/baseline.jsonl "
             "--candidate ablation/<run>.jsonl`).", "",
             "| run | rate [95% CI] | random k-frames, mean +- sd | McNemar p (worse than baseline) |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        if "rate" not in run or name.startswith("random-"):
            continue
        low, high = run["ci95"]
        k = name.rsplit("-k", 1)[1] if "-k" in name else None
        random = runs.get(f"random-k{k}") if k else None
        control = f"{random['rate_mean']:.3f} +- {random['rate_sd']:.3f}" if random else "-"
        lines.append(f"| {name} | {run['rate']:.3f} [{low:.3f}, {high:.3f}] | {control} | "
                     f"{_fmt(run['mcnemar_p'])} |")
    return lines


def plot(report: dict, out_dir: Path) -> list[Path]:
    """Cumulative energy vs k (with the 1 - eps line) and log10 s_i / s1 spectra, a panel per variant and a line
    per layer."""
    import matplotlib  # here, not at the top: only the plots need it, and it takes about a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after the backend is chosen)

    eps = report["config"]["eps"]
    paths = []
    for filename, kind in ((ENERGY_PNG, "energy"), (SPECTRA_PNG, "spectrum")):
        variants = table_variants(report)
        fig, axes = plt.subplots(1, len(variants), figsize=(4 * len(variants), 3.6), squeeze=False)
        for axis, name in zip(axes[0], variants):
            for row in report["layers"]:
                s = np.asarray(row["variants"][name]["spectrum"], dtype=float)
                if not s.size or s[0] == 0:
                    continue
                k = np.arange(1, s.size + 1)
                if kind == "energy":
                    axis.plot(k, np.cumsum(s**2) / np.sum(s**2), label=f"layer {row['layer']}")
                else:
                    axis.plot(k, np.log10(np.maximum(s / s[0], 1e-17)), label=f"layer {row['layer']}")
            if kind == "energy":
                axis.axhline(1 - eps, color="k", linestyle="--", linewidth=1, label=f"1 - eps = {1 - eps:g}")
                axis.set(xscale="log", xlabel="k", ylabel="cumulative energy", ylim=(0, 1.02))
            else:
                axis.set(xlabel="i", ylabel="log10 s_i / s_1")
            axis.set_title(name)
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6, loc="lower right" if kind == "energy" else "upper right")
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON).write_text(json.dumps(json_safe(report), indent=1) + "\n")
    (out_dir / MARKDOWN).write_text(markdown(report))
    return [out_dir / JSON, out_dir / MARKDOWN, *plot(report, out_dir)]
