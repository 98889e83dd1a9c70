"""The degradation gate's statistics: hand-computed values, scipy references, error rates by simulation, bad input.

All simulations are seeded and small, so the file runs in seconds; scipy is a dev dependency used only as a reference.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

from align.gate.stats import (
    AGGREGATES,
    _binomial_half_sf,
    expected_calibration_error,
    gate,
    holm_adjusted,
    holm_bonferroni,
    mcnemar_exact,
    paired_permutation_test,
    per_task,
    pooled,
    weighted,
)

ALPHA = 0.05


def pairs(b: int, c: int, both_right: int = 0, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0/1 baseline / candidate scores with exactly b (right -> wrong) and c (wrong -> right) discordant items."""
    base = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
    cand = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
    return np.array(base), np.array(cand)


def binomial_tail(n: int, k: int) -> Fraction:
    """P(Binomial(n, 1/2) >= k) as an exact fraction."""
    return Fraction(sum(math.comb(n, j) for j in range(max(k, 0), n + 1)), 2**n)


# ---------------------------------------------------------------------------------------------------------------------
# Exact McNemar


def test_mcnemar_hand_computed():
    base, cand = pairs(5, 1, both_right=10, both_wrong=4)
    result = mcnemar_exact(base, cand)
    assert (result.n, result.b, result.c) == (20, 5, 1)
    assert (result.baseline_correct, result.candidate_correct) == (15, 11)
    assert result.p_value == 7 / 64  # P(Bin(6, 1/2) >= 5) = (C(6,5) + C(6,6)) / 64
    assert mcnemar_exact(*pairs(1, 5)).p_value == 63 / 64  # improvement: P(Bin(6, 1/2) >= 1) = 1 - 1/64
    assert mcnemar_exact(*pairs(3, 0)).p_value == 1 / 8


def test_mcnemar_no_discordant_pairs_gives_one():
    result = mcnemar_exact(*pairs(0, 0, both_right=7, both_wrong=3))
    assert (result.b, result.c, result.p_value) == (0, 0, 1.0)


def test_mcnemar_accepts_bool_and_float_scores():
    base, cand = pairs(4, 2, both_right=3)
    expected = mcnemar_exact(base, cand)
    assert mcnemar_exact(base.astype(bool), cand.astype(bool)) == expected
    assert mcnemar_exact(base.astype(float), list(cand.astype(float))) == expected


@pytest.mark.parametrize("b, c", [(1, 0), (0, 1), (5, 1), (10, 10), (30, 12), (12, 30), (100, 70), (500, 430),
                                  (2500, 2400)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    expected = scipy.stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_exact(*pairs(b, c)).p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar_exact(*pairs(b, c)).p_value == pytest.approx(float(binomial_tail(b + c, b)), rel=1e-15)


@pytest.mark.parametrize("n, k", [(10_000, 5_100), (10_001, 5_001), (10_001, 4_900), (30_000, 15_300),
                                  (100_000, 50_000), (100_000, 50_500), (100_000, 49_000), (100_000, 52_000),
                                  (100_000, 100_000), (100_000, 1)])
def test_binomial_tail_large_n_both_paths(n, k):
    # Up to 10,000 discordant pairs the tail is an exact integer sum, beyond it a log-space sum: both must agree with
    # scipy (itself accurate to ~1e-13 here) across the boundary and up to n = 1e5.
    expected = scipy.stats.binomtest(k, n, 0.5, alternative="greater").pvalue
    assert _binomial_half_sf(n, k) == pytest.approx(expected, rel=1e-11, abs=1e-300)


def test_mcnemar_large_sample_is_fast_and_finite():
    rng = np.random.default_rng(0)
    base = (rng.random(100_000) < 0.7).astype(int)
    cand = np.where(rng.random(100_000) < 0.15, 1 - base, base)  # ~15,000 discordant pairs: the log-space path
    result = mcnemar_exact(base, cand)
    assert result.b + result.c > 10_000
    expected = scipy.stats.binomtest(result.b, result.b + result.c, 0.5, alternative="greater").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-11)


# ---------------------------------------------------------------------------------------------------------------------
# Paired permutation test


def test_permutation_exact_hand_computed():
    # d = [1, 1, -1], observed sum 1. The 8 sign patterns give sums 3, 1, 1, 1, -1, -1, -1, -3 (by how many signs are
    # flipped): 7 of them are <= 1, so p = 7/8.
    result = paired_permutation_test([0, 0, 1], [1, 1, 0])
    assert result.exact and result.permutations == 8
    assert result.p_value == 7 / 8
    assert result.mean_difference == pytest.approx(1 / 3)
    # d = [-1, -1, -1]: only the observed pattern reaches -3, p = 1/8 (= McNemar with b = 3, c = 0).
    assert paired_permutation_test([1, 1, 1], [0, 0, 0]).p_value == 1 / 8


def test_permutation_exact_hand_computed_continuous():
    # d = [-0.5, -0.2, 0.1], observed sum -0.6. Sign-flipped sums: +-0.5 +-0.2 +-0.1 -> 0.8, 0.6, 0.4, 0.2, -0.2, -0.4,
    # -0.6 (observed), -0.8: 2 of 8 are <= -0.6. Zero differences do not count as patterns.
    result = paired_permutation_test([0.5, 0.7, 0.3, 0.4], [0.0, 0.5, 0.4, 0.4])
    assert result.exact and result.permutations == 8
    assert result.p_value == 2 / 8
    assert result.n == 4 and result.mean_difference == pytest.approx(-0.6 / 4)


def test_permutation_all_ties_gives_one():
    result = paired_permutation_test([1, 0, 0.5], [1, 0, 0.5])
    assert (result.p_value, result.exact, result.mean_difference) == (1.0, True, 0.0)
    assert paired_permutation_test([1, 0, 0.5], [1, 0, 0.5], exact_max=0).p_value == 1.0


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (3, 2), (5, 1), (8, 3), (2, 9), (10, 10), (14, 6)])
def test_permutation_exact_equals_mcnemar_on_binary_scores(b, c):
    base, cand = pairs(b, c, both_right=6, both_wrong=3)
    permutation = paired_permutation_test(base, cand)
    assert permutation.exact
    assert permutation.p_value == pytest.approx(mcnemar_exact(base, cand).p_value, rel=1e-12)


def test_permutation_matches_scipy_permutation_test():
    rng = np.random.default_rng(3)
    base = rng.random(11)
    cand = base + rng.normal(-0.1, 0.2, size=11)
    reference = scipy.stats.permutation_test((base, cand), lambda x, y, axis: np.mean(y - x, axis=axis),
                                             permutation_type="samples", alternative="less", n_resamples=np.inf,
                                             vectorized=True)
    result = paired_permutation_test(base, cand)
    assert result.exact
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert result.mean_difference == pytest.approx(reference.statistic)


def test_permutation_monte_carlo_close_to_exact():
    rng = np.random.default_rng(7)
    base = rng.random(40)
    cand = base.copy()
    cand[:16] += rng.normal(-0.08, 0.25, size=16)  # 16 nonzero differences: exact enumeration is cheap
    exact = paired_permutation_test(base, cand)
    assert exact.exact and 0.02 < exact.p_value < 0.5
    permutations = 20_000
    mc = paired_permutation_test(base, cand, permutations=permutations, exact_max=0, seed=1)
    assert not mc.exact and mc.permutations == permutations
    tolerance = 4 * math.sqrt(exact.p_value * (1 - exact.p_value) / permutations) + 1 / (permutations + 1)
    assert abs(mc.p_value - exact.p_value) <= tolerance


def test_permutation_monte_carlo_counts_ties_as_exact_does():
    # 0/1 scores make many sign patterns tie with the observed one; Monte Carlo must count them (<=), as the exact
    # test and McNemar do: P(Bin(14, 1/2) >= 8) = 0.395, while counting only strictly lower patterns would give 0.21.
    base, cand = pairs(8, 6, both_right=20, both_wrong=10)
    exact = mcnemar_exact(base, cand).p_value
    mc = paired_permutation_test(base, cand, permutations=20_000, exact_max=0, seed=3)
    assert abs(mc.p_value - exact) <= 4 * math.sqrt(exact * (1 - exact) / 20_000)


def test_permutation_monte_carlo_is_seeded_and_never_zero():
    rng = np.random.default_rng(11)
    base = rng.random(200)
    cand = base - 0.3  # every item worse: no sign pattern but the observed one is as low
    first = paired_permutation_test(base, cand, permutations=500, seed=5)
    assert first == paired_permutation_test(base, cand, permutations=500, seed=5)
    assert first.p_value == 1 / 501 and not first.exact

    noisy = base + rng.normal(0, 0.3, size=200)
    one = paired_permutation_test(base, noisy, permutations=2_000, seed=1)
    assert one == paired_permutation_test(base, noisy, permutations=2_000, seed=1)
    assert one.p_value != paired_permutation_test(base, noisy, permutations=2_000, seed=2).p_value


def test_permutation_averages_reruns_first():
    rng = np.random.default_rng(4)
    base_runs = (rng.random((30, 3)) < 0.6).astype(float)
    cand_runs = (rng.random((30, 5)) < 0.5).astype(float)  # rerun counts may differ between the models
    on_runs = paired_permutation_test(base_runs, cand_runs, permutations=1_000, seed=2)
    on_means = paired_permutation_test(base_runs.mean(axis=1), cand_runs.mean(axis=1), permutations=1_000, seed=2)
    assert on_runs == on_means
    assert on_runs.n == 30  # items, not runs


# ---------------------------------------------------------------------------------------------------------------------
# Holm-Bonferroni


def test_holm_hand_worked_example():
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone: 0.06).
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Step-down at 0.05: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 -> stop.
    assert holm_bonferroni(p, 0.05) == [True, False, False, True]
    assert holm_bonferroni(p, 0.01) == [False, False, False, False]


def test_holm_caps_at_one_and_handles_edge_cases():
    assert holm_adjusted([0.5, 0.6]) == [1.0, 1.0]
    assert holm_adjusted([0.4, 0.7]) == pytest.approx([0.8, 0.8])
    assert holm_adjusted([0.02]) == [0.02]
    assert holm_adjusted([]) == [] and holm_bonferroni([], 0.05) == []
    assert holm_adjusted([0.01, 0.01]) == [0.02, 0.02]  # ties keep a monotone, order-independent adjustment


# ---------------------------------------------------------------------------------------------------------------------
# Aggregations


def test_pooled_uses_mcnemar_on_binary_and_reports_tasks():
    tasks = {"math": pairs(5, 1, both_right=4), "code": pairs(3, 2, both_wrong=2)}
    decision = pooled(tasks, 0.05)
    assert decision.method == "pooled" and decision.test == "mcnemar_exact"
    assert decision.p_value == float(binomial_tail(11, 8))  # b = 8, c = 3 over both tasks
    assert decision.degraded == (decision.p_value <= 0.05)
    math_task, code_task = decision.tasks
    assert (math_task.task, math_task.n, math_task.b, math_task.c) == ("math", 10, 5, 1)
    assert math_task.baseline_mean == 0.9 and math_task.candidate_mean == 0.5
    assert math_task.p_value == 7 / 64 and math_task.test == "mcnemar_exact"
    assert (code_task.b, code_task.c, code_task.adjusted_p, code_task.degraded) == (3, 2, None, None)


def test_pooled_uses_permutation_test_with_reruns():
    rng = np.random.default_rng(0)
    tasks = {"a": (rng.random((12, 2)), rng.random((12, 2))), "b": (rng.integers(0, 2, 5), rng.integers(0, 2, 5))}
    decision = pooled(tasks, 0.05, permutations=300)
    assert decision.test == "paired_permutation"
    assert decision.tasks[0].b is None and decision.tasks[0].test == "paired_permutation"
    assert decision.tasks[1].test == "mcnemar_exact"
    base = np.concatenate([tasks["a"][0].mean(axis=1), tasks["b"][0]])
    cand = np.concatenate([tasks["a"][1].mean(axis=1), tasks["b"][1]])
    assert decision.p_value == paired_permutation_test(base, cand, permutations=300, seed=0).p_value


def test_per_task_applies_holm_across_tasks():
    tasks = {"worse": pairs(12, 1, both_right=20), "same": pairs(4, 4), "better": pairs(1, 6)}
    decision = per_task(tasks, 0.05)
    raw = [float(binomial_tail(13, 12)), float(binomial_tail(8, 4)), float(binomial_tail(7, 1))]
    assert [t.p_value for t in decision.tasks] == pytest.approx(raw, rel=1e-15)
    adjusted = holm_adjusted(raw)
    assert [t.adjusted_p for t in decision.tasks] == pytest.approx(adjusted)
    assert [t.degraded for t in decision.tasks] == [True, False, False]
    assert decision.degraded and decision.p_value == pytest.approx(min(adjusted))
    assert decision.method == "per_task" and decision.test == "holm_bonferroni"


def test_weighted_matches_brute_force_enumeration():
    # 6 + 3 items, 7 nonzero differences: every sign pattern is enumerated; the statistic is the mean of the two task
    # means, each item's flip feeding its own task's mean.
    big = (np.array([0.9, 0.8, 0.5, 0.7, 0.6, 0.4]), np.array([0.7, 0.8, 0.1, 0.6, 0.9, 0.4]))
    small = (np.array([1.0, 0.5, 0.2]), np.array([0.6, 0.3, 0.5]))
    d = [big[1] - big[0], small[1] - small[0]]
    observed = (d[0].mean() + d[1].mean()) / 2
    count = 0
    for signs in itertools.product((-1, 1), repeat=9):
        s = np.array(signs)
        count += (s[:6] * d[0]).mean() / 2 + (s[6:] * d[1]).mean() / 2 <= observed + 1e-12
    decision = weighted({"big": big, "small": small}, 0.05)
    assert decision.p_value == pytest.approx(count / 2**9)
    assert decision.method == "weighted" and decision.test == "weighted_permutation"
    # Unlike pooling, a small task's items weigh more: pooled and weighted differ here.
    assert decision.p_value != pooled({"big": big, "small": small}, 0.05).p_value


@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
def test_gate_dispatches_and_is_reproducible(aggregate):
    rng = np.random.default_rng(8)
    tasks = {f"t{i}": ((rng.random(30) < 0.7).astype(int), (rng.random(30) < 0.6).astype(int)) for i in range(3)}
    decision = gate(tasks, alpha=0.1, aggregate=aggregate, permutations=500, seed=3)
    assert decision == AGGREGATES[aggregate](tasks, 0.1, permutations=500, seed=3)
    assert decision == gate(tasks, alpha=0.1, aggregate=aggregate, permutations=500, seed=3)
    assert decision.method == aggregate and decision.alpha == 0.1 and len(decision.tasks) == 3
    assert decision.degraded == (decision.p_value <= 0.1)


@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
def test_improvement_is_not_a_degradation(aggregate):
    tasks = {"a": pairs(2, 30, both_right=50), "b": pairs(1, 25, both_wrong=10)}
    decision = gate(tasks, aggregate=aggregate, permutations=500)
    assert not decision.degraded and decision.p_value > 0.99


# ---------------------------------------------------------------------------------------------------------------------
# Error rates by simulation

NULL_SIMULATIONS = 400
FPR_BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / NULL_SIMULATIONS)  # ~0.083: alpha plus a binomial margin


def null_tasks(rng: np.random.Generator, reruns: int | None) -> dict:
    """Tasks where both models have the same quality: each item's correctness drawn independently for the two models
    with the same per-item probability (item difficulty varies)."""
    tasks = {}
    for name, n in (("a", 40), ("b", 25), ("c", 60)):
        p = rng.uniform(0.2, 0.95, size=n)
        shape = (n,) if reruns is None else (n, reruns)
        q = p if reruns is None else p[:, None]
        tasks[name] = ((rng.random(shape) < q).astype(int), (rng.random(shape) < q).astype(int))
    return tasks


def false_positive_rate(aggregate: str, reruns: int | None, seed: int) -> float:
    rng = np.random.default_rng(seed)
    rejections = sum(gate(null_tasks(rng, reruns), ALPHA, aggregate, permutations=200, seed=i).degraded
                     for i in range(NULL_SIMULATIONS))
    return rejections / NULL_SIMULATIONS


@pytest.mark.parametrize("reruns", [None, 3], ids=["binary", "reruns"])
@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
def test_false_positive_rate_is_at_most_alpha(aggregate, reruns):
    assert false_positive_rate(aggregate, reruns, seed=2026) <= FPR_BOUND


def degraded_pair(rng: np.random.Generator, n: int = 2_000, accuracy: float = 0.70,
                  flip: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Baseline at `accuracy` (exactly); the candidate flips each item's correctness with probability `flip`, so more
    right items turn wrong than wrong ones right: a 2-point drop in expectation (0.05 * 1400 - 0.05 * 600 = 40 net
    items, with ~100 discordant pairs of noise around it)."""
    base = np.zeros(n, dtype=int)
    base[rng.permutation(n)[: round(accuracy * n)]] = 1
    cand = np.where(rng.random(n) < flip, 1 - base, base)
    return base, cand


def test_power_two_point_degradation_detected():
    rng = np.random.default_rng(1)
    # A fixed instance: exactly 70 right -> wrong and 30 wrong -> right among 2,000 items (1,400 right).
    base, cand = pairs(70, 30, both_right=1_330, both_wrong=570)
    order = rng.permutation(base.size)
    tasks = {"only": (base[order], cand[order])}
    assert base.mean() == 0.7 and base.mean() - cand.mean() == pytest.approx(0.02)
    for aggregate in ("pooled", "per_task"):
        decision = gate(tasks, aggregate=aggregate)
        assert decision.degraded and decision.p_value < 1e-3, aggregate
    # And over random instances with discordance noise, all three aggregations detect it nearly always.
    simulations = 100
    detected = {aggregate: 0 for aggregate in AGGREGATES}
    for i in range(simulations):
        tasks = {"only": degraded_pair(rng)}
        for aggregate in AGGREGATES:
            detected[aggregate] += gate(tasks, aggregate=aggregate, permutations=1_000, seed=i).degraded
    for aggregate, count in detected.items():
        assert count / simulations >= 0.9, (aggregate, count)


# ---------------------------------------------------------------------------------------------------------------------
# Expected calibration error


def test_ece_hand_computed():
    # Bins of width 0.1: {0.05} -> bin 0, {0.15, 0.15} -> bin 1, {0.95, 1.0} -> bin 9 (1.0 joins the last bin).
    # 1/5 * |0 - 0.05| + 2/5 * |0.5 - 0.15| + 2/5 * |1 - 0.975| = 0.01 + 0.14 + 0.01 = 0.16.
    confidence = [0.05, 0.15, 0.15, 0.95, 1.0]
    correct = [0, 1, 0, 1, 1]
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.16)
    # One bin: |accuracy - mean confidence| = |3/5 - 0.46|.
    assert expected_calibration_error(confidence, correct, bins=1) == pytest.approx(0.14)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    # 1.0 must land in the last bin, not a bin of its own nor the first: (|1 - 0.1| + |0 - 1.0|) / 2, and with 0.75
    # sharing its bin, 2/2 * |1/2 - 1.75/2|.
    assert expected_calibration_error([0.1, 1.0], [1, 0], bins=2) == pytest.approx(0.95)
    assert expected_calibration_error([0.75, 1.0], [1, 0], bins=2) == pytest.approx(0.375)


def test_ece_calibrated_near_zero_and_overconfident_large():
    rng = np.random.default_rng(0)
    confidence = rng.random(50_000)
    calibrated = (rng.random(50_000) < confidence).astype(int)
    assert expected_calibration_error(confidence, calibrated) < 0.02
    overconfident = rng.uniform(0.9, 1.0, size=50_000)
    coin_flips = (rng.random(50_000) < 0.5).astype(int)
    assert expected_calibration_error(overconfident, coin_flips) == pytest.approx(0.45, abs=0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input

GOOD = {"a": ([1, 0, 1], [1, 1, 0])}
NAN = float("nan")


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": {"a": ([1, 0, 1], [1, 0])}}, r"task 'a' baseline has 3 items but task 'a' candidate has 2"),
    ({"tasks": {"a": ([], [])}}, r"task 'a' baseline is empty"),
    ({"tasks": {"a": ([1, 0], [])}}, r"task 'a' candidate is empty"),
    ({"tasks": {"a": ([1, NAN], [1, 0])}}, r"task 'a' baseline contains NaN"),
    ({"tasks": {"a": ([[1, 0], [0, 1]], [[1, NAN], [0, 1]])}}, r"task 'a' candidate contains NaN"),
    ({"tasks": {"a": ([1, float("inf")], [1, 0])}}, r"infinite"),
    ({"tasks": {"a": (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))}}, r"shape \(n,\) or \(n, reruns\)"),
    ({"tasks": {"a": (["x", "y"], [1, 0])}}, r"real numbers"),
    ({"tasks": {"a": ([1, 0],)}}, r"\(baseline scores, candidate scores\) pair"),
    ({"tasks": {}}, r"tasks is empty"),
    ({"tasks": [([1], [0])]}, r"tasks must be a mapping"),
    ({"tasks": GOOD, "alpha": 0.0}, r"alpha must be a number strictly between 0 and 1"),
    ({"tasks": GOOD, "alpha": 1.0}, r"alpha must be"),
    ({"tasks": GOOD, "alpha": -0.1}, r"alpha must be"),
    ({"tasks": GOOD, "alpha": 5}, r"alpha must be"),
    ({"tasks": GOOD, "alpha": NAN}, r"alpha must be"),
    ({"tasks": GOOD, "alpha": "0.05"}, r"alpha must be"),
    ({"tasks": GOOD, "aggregate": "mean"}, r"unknown aggregate 'mean'; expected one of pooled, per_task, weighted"),
    ({"tasks": GOOD, "permutations": 0}, r"permutations must be a positive integer"),
])
@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
def test_gate_bad_input_raises(kwargs, match, aggregate):
    kwargs = {"aggregate": aggregate, **kwargs}
    with pytest.raises(ValueError, match=match):
        gate(**kwargs)


@pytest.mark.parametrize("call, match", [
    (lambda: mcnemar_exact([1, 0], [1]), r"baseline has 2 items but candidate has 1"),
    (lambda: mcnemar_exact([1, 0.5], [1, 0]), r"baseline must contain only 0/1 scores"),
    (lambda: mcnemar_exact([1, 0], [1, 2]), r"candidate must contain only 0/1 scores"),
    (lambda: mcnemar_exact([[1, 0]], [[1, 0]]), r"1-D"),
    (lambda: mcnemar_exact([], []), r"baseline is empty"),
    (lambda: mcnemar_exact([1, NAN], [1, 0]), r"baseline contains NaN"),
    (lambda: paired_permutation_test([0.1, 0.2], [0.3]), r"baseline has 2 items but candidate has 1"),
    (lambda: paired_permutation_test([0.1, NAN], [0.3, 0.1]), r"baseline contains NaN"),
    (lambda: paired_permutation_test([], []), r"baseline is empty"),
    (lambda: paired_permutation_test(np.zeros((3, 0)), np.zeros(3)), r"no runs per item"),
    (lambda: paired_permutation_test([0.1], [0.2], permutations=0), r"permutations must be a positive integer"),
    (lambda: paired_permutation_test([0.1], [0.2], exact_max=30), r"exact_max must be an integer in \[0, 24\]"),
    (lambda: holm_adjusted([0.01, 1.5]), r"p_values must all lie in \[0, 1\]"),
    (lambda: holm_adjusted([0.01, NAN]), r"p_values must all lie in \[0, 1\] \(no NaN\)"),
    (lambda: holm_adjusted([[0.01, 0.2]]), r"flat sequence"),
    (lambda: holm_bonferroni([0.01], 1.2), r"alpha must be"),
    (lambda: expected_calibration_error([0.5, 1.2], [1, 0]), r"confidence must lie in \[0, 1\]"),
    (lambda: expected_calibration_error([0.5, NAN], [1, 0]), r"confidence contains NaN"),
    (lambda: expected_calibration_error([0.5, 0.2], [1]), r"confidence has 2 items but correct has 1"),
    (lambda: expected_calibration_error([0.5, 0.2], [1, 2]), r"correct must contain only 0/1 scores"),
    (lambda: expected_calibration_error([], []), r"confidence is empty"),
    (lambda: expected_calibration_error([0.5], [1], bins=0), r"bins must be a positive integer"),
])
def test_functions_bad_input_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
