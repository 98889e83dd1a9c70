"""Inference-time decoding: greedy, sampling, best-of-N, reward-guided Sequential Monte Carlo (prefix and lookahead
twists) and power sampling, on any align reward source. `python -m align.decode --help`; docs/decode.md.

Modules: `smc` (the pure math), `particles` (the particle engine on `align.generation.generate`), `methods` (each
method as engine settings, and the per-prompt result rows), `io` (prompt loading, atomic JSONL, the one-line error
parser, shared with `align.best_of_n`), `cli`.
"""
