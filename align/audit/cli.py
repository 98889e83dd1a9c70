"""`python -m align.audit`: what did alignment change inside the model, and how concentrated is the change?

Exit status: 0 written, 2 bad input (one line on stderr, before any weights load).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align.audit import report as writer
from align.audit.prompts import AuditInputError
from align.console import quiet_dependencies

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,3,10, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.1, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m align.audit", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 written, 2 bad input. Docs: docs/audit.md")
    parser.add_argument("--base", required=True, help="the starting checkpoint (directory, hub name, embedded:*)")
    parser.add_argument("--aligned", required=True, help="the trained checkpoint, same architecture and tokenizer")
    parser.add_argument("--target", default="embedded:arithmetic",
                        help="prompts whose shift is audited: .jsonl of chat prompts, a text file (one prompt a "
                             "line) or a shipped set (default embedded:arithmetic)")
    parser.add_argument("--control", default="embedded:neutral",
                        help="matched neutral prompts (default embedded:neutral)")
    parser.add_argument("--contrast", nargs=2, metavar=("FIRST", "SECOND"),
                        help="two paired prompt sets of equal length (prompt i of one matches prompt i of the "
                             "other) for the rank baseline: the base model's H(first_i) - H(second_i) without the "
                             "chat template over the first --n pairs, an unrelated contrast (e.g. embedded:questions "
                             "embedded:statements)")
    parser.add_argument("--eps", type=float, default=0.05, help="energy left out by rank_eps, in (0, 1) (default 0.05)")
    parser.add_argument("--sensitivity-eps", type=_floats, default=(0.01, 0.10, 0.20),
                        help="further eps for the rank table (default 0.01,0.1,0.2)")
    parser.add_argument("--n", type=int, default=64, help="prompts per set: the first n of each (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="weights dtype: float32 (default), bfloat16, float16")
    parser.add_argument("--direction", help="a .npy reference direction, shape (d,) or (L, d) (default: per layer, "
                                            "the aligned model's difference in means, target minus control)")
    parser.add_argument("--ablate-k", type=_ints, default=(),
                        help="ablate the top-k directions, e.g. 1,3,10 (default: no ablation check)")
    parser.add_argument("--ablate-prompts", help="held-out prompts for the ablation check (default: "
                                                 "embedded:arithmetic-heldout for the shipped target, else the "
                                                 "--target prompts after the first --n)")
    parser.add_argument("--ablate-n", type=int, default=32, help="ablation prompts (default 32)")
    parser.add_argument("--ablate-seeds", type=int, default=2, help="random k-frames per k (default 2)")
    parser.add_argument("--ablate-singles", type=int, default=3, help="single directions u_1..u_N (default 3)")
    parser.add_argument("--band", default="narrow", help="narrow (5 blocks over 0.45-0.70 L) or wide (8 over "
                                                         "0.30-0.85 L)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--trust-remote-code", action="store_true", help="run model code from the checkpoint")
    parser.add_argument("--out", type=Path, default=Path("audit"), help="output directory (default ./audit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_dependencies("none")  # before the imports below: some dependency noise is printed at import
    # Imported after the arguments are parsed: they load torch and transformers (seconds), and --help must be fast.
    from align.audit.run import AuditConfig, run_audit
    from align.models import ModelLoadError

    cfg = AuditConfig(base=args.base, aligned=args.aligned, target=args.target, control=args.control, eps=args.eps,
                      sensitivity_eps=args.sensitivity_eps, n=args.n, batch_size=args.batch_size, dtype=args.dtype,
                      direction=args.direction, ablate_k=args.ablate_k, ablate_prompts=args.ablate_prompts,
                      ablate_n=args.ablate_n, ablate_seeds=args.ablate_seeds, ablate_singles=args.ablate_singles,
                      max_new_tokens=args.max_new_tokens, band=args.band,
                      contrast=tuple(args.contrast) if args.contrast else None,
                      trust_remote_code=args.trust_remote_code)
    try:
        report = run_audit(cfg, args.out)
        paths = writer.write(report, args.out)
    except (AuditInputError, ModelLoadError) as err:
        print(f"align.audit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"align.audit: wrote {', '.join(str(p) for p in paths)}")
    return EXIT_OK
