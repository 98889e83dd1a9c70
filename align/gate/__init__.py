"""Per-sample degradation gate: is a candidate model significantly worse than its baseline on the same items?

Following Kübler et al., "When LLMs get significantly worse: A statistical approach to detect model degradations"
(arXiv 2602.10144), the two models are compared item by item rather than by their aggregate accuracies: paired tests
(exact McNemar for 0/1 scores, a sign-flip permutation test otherwise) cancel the per-item difficulty that makes
unpaired comparisons noisy, so small real degradations are detected while the false-positive rate stays at the chosen
alpha. Results across tasks are combined by one of three aggregations (pooled items, per-task tests with
Holm-Bonferroni, or a task-weighted permutation test). Layout: `stats` (the tests, pure numpy), `samples` (the `Sample`
data model and item pairing), one reader per result format (`align_results`, `lm_eval`), `report` (JSON and
markdown), `cli` (`python -m align.gate`). See docs/gate.md.
"""
