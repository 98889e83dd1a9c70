"""Statistics core of the degradation gate: paired one-sided tests, multiplicity correction, aggregation, calibration.

Conventions used throughout:

* Scores are item-aligned: ``baseline[i]`` and ``candidate[i]`` are the two models' scores on the same item ``i``.
  Higher is better. A score array is ``(n,)`` (one run per item) or ``(n, reruns)`` (several runs per item; the
  runs are averaged per item before testing, so an item counts once however often it was rerun).
* Every test is one-sided for *degradation*: the null hypothesis is "the candidate is as good as the baseline", and a
  small p-value is evidence that the candidate is worse. An improved candidate gets a p-value near 1.
* Bad input raises ``ValueError`` naming the problem; nothing is silently dropped or coerced.

Pure functions on numpy arrays; no state, no I/O.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "AGGREGATES",
    "GateDecision",
    "McNemarResult",
    "PermutationResult",
    "TaskResult",
    "expected_calibration_error",
    "gate",
    "holm_adjusted",
    "holm_bonferroni",
    "mcnemar_exact",
    "paired_permutation_test",
    "per_task",
    "pooled",
    "weighted",
]

# Up to this many discordant pairs the McNemar tail is summed over Python integers: exact, and int / int division
# rounds correctly, so the p-value is right to the last bit. The sum costs O(n^2) bit operations (about 10 ms here,
# about 1 s at 1e5), so larger counts use the log-space sum, whose relative error is ~1e-12.
_EXACT_INT_MAX = 10_000
# The aggregations enumerate sign patterns exactly up to this many nonzero differences (2^20 patterns, ~8 MB).
_EXACT_MAX = 20
# Hard cap on exact enumeration: 2^24 float64 subset sums are already 128 MB.
_EXACT_MAX_LIMIT = 24
# Monte Carlo sign patterns are drawn in blocks of about this many entries, bounding memory at any n x permutations.
_MC_BLOCK = 1 << 20


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class McNemarResult:
    """Exact one-sided McNemar test for degradation on paired 0/1 scores.

    ``b`` = #(baseline right, candidate wrong), ``c`` = #(baseline wrong, candidate right); only these discordant
    pairs carry information. ``p_value`` = P(Binomial(b + c, 1/2) >= b), and 1.0 when b + c = 0.
    """

    n: int
    baseline_correct: int
    candidate_correct: int
    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class PermutationResult:
    """Paired sign-flip permutation test for degradation.

    ``mean_difference`` is the mean over items of candidate - baseline (negative = candidate worse). ``exact`` says
    whether all 2^m sign patterns of the m nonzero differences were enumerated; ``permutations`` is how many patterns
    the p-value is based on (2^m when exact, else the Monte Carlo count).
    """

    n: int
    mean_difference: float
    p_value: float
    exact: bool
    permutations: int


@dataclass(frozen=True)
class TaskResult:
    """One task's line in a gate decision.

    ``b`` / ``c`` are the discordant counts (see `McNemarResult`) when the task's scores are binary with one run per
    item, else None. ``test`` names the task's own test ("mcnemar_exact" or "paired_permutation") and ``p_value`` is its
    unadjusted one-sided p-value. ``adjusted_p`` (Holm) and ``degraded`` are set by the ``per_task`` aggregation only;
    under ``pooled`` and ``weighted`` the decision is made on the aggregate alone, so they are None there and the
    per-task p-value is descriptive, not a decision.
    """

    task: str
    n: int
    baseline_mean: float
    candidate_mean: float
    b: int | None
    c: int | None
    test: str
    p_value: float
    adjusted_p: float | None
    degraded: bool | None


@dataclass(frozen=True)
class GateDecision:
    """The gate's single decision across tasks.

    ``degraded`` is True when the null "candidate is not worse" is rejected at ``alpha``. ``p_value`` is the overall
    p-value the decision compares with alpha (for ``per_task``: the smallest Holm-adjusted p-value). ``method`` is the
    aggregation, ``test`` the test behind ``p_value`` ("mcnemar_exact", "paired_permutation", "holm_bonferroni" or
    "weighted_permutation"). ``tasks`` holds one `TaskResult` per task, in input order.
    """

    degraded: bool
    p_value: float
    method: str
    test: str
    alpha: float
    tasks: tuple[TaskResult, ...]


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def _check_permutations(permutations) -> int:
    if isinstance(permutations, bool) or not isinstance(permutations, numbers.Integral) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    return int(permutations)


def _check_exact_max(exact_max) -> int:
    if (isinstance(exact_max, bool) or not isinstance(exact_max, numbers.Integral)
            or not 0 <= exact_max <= _EXACT_MAX_LIMIT):
        raise ValueError(f"exact_max must be an integer in [0, {_EXACT_MAX_LIMIT}] (exact enumeration is 2^exact_max "
                         f"patterns), got {exact_max!r}")
    return int(exact_max)


def _numeric_array(x, name: str) -> np.ndarray:
    """`x` as a float64 array; refuses non-numeric, NaN and infinite values."""
    arr = np.asarray(x)
    if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN scores ({int(np.isnan(arr).sum())} of {arr.size})")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite scores")
    return arr


def _binary_vector(x, name: str) -> np.ndarray:
    """`x` as an int64 0/1 vector of shape (n,), n >= 1."""
    arr = _numeric_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of 0/1 scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (no items)")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only 0/1 scores")
    return arr.astype(np.int64)


def _item_scores(x, name: str) -> tuple[np.ndarray, bool]:
    """(per-item mean score of shape (n,), whether there was exactly one run per item) for an (n,) / (n, r) array."""
    arr = _numeric_array(x, name)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (n,) or (n, reruns), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (no items)")
    if arr.ndim == 1:
        return arr, True
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no runs per item (shape {arr.shape})")
    # Averaging reruns first keeps the item as the exchangeable unit: the sign flip under H0 swaps whole items.
    return arr.mean(axis=1), arr.shape[1] == 1


def _paired_items(baseline, candidate, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(baseline item means, candidate item means, binary) where binary = 0/1 scores with one run per item."""
    base, base_single = _item_scores(baseline, names[0])
    cand, cand_single = _item_scores(candidate, names[1])
    if base.shape[0] != cand.shape[0]:
        raise ValueError(f"{names[0]} has {base.shape[0]} items but {names[1]} has {cand.shape[0]}: scores must be "
                         "item-aligned (same items, same order)")
    binary = base_single and cand_single and bool(np.isin(base, (0.0, 1.0)).all() and np.isin(cand, (0.0, 1.0)).all())
    return base, cand, binary


@dataclass(frozen=True)
class _Task:
    name: str
    baseline: np.ndarray  # (n,) item means
    candidate: np.ndarray  # (n,) item means
    binary: bool


def _check_tasks(tasks) -> list[_Task]:
    if not isinstance(tasks, Mapping):
        raise ValueError(f"tasks must be a mapping task name -> (baseline scores, candidate scores), got "
                         f"{type(tasks).__name__}")
    if not tasks:
        raise ValueError("tasks is empty: at least one task is needed")
    checked = []
    for name, pair in tasks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"task {name!r}: expected a (baseline scores, candidate scores) pair")
        base, cand, binary = _paired_items(pair[0], pair[1], (f"task {name!r} baseline", f"task {name!r} candidate"))
        checked.append(_Task(name, base, cand, binary))
    return checked


# ---------------------------------------------------------------------------------------------------------------------
# Exact McNemar


def _binomial_sum_upper(n: int, k: int) -> int:
    """sum_{j=k}^{n} C(n, j) as an exact integer, 0 <= k <= n."""
    # Walk down from C(n, n) = 1: C(n, j - 1) = C(n, j) * j / (n - j + 1), an exact integer division. Starting at the
    # small end keeps the big-integer operands short for as long as possible.
    term, total = 1, 1
    for j in range(n, k, -1):
        term = term * j // (n - j + 1)
        total += term
    return total


def _log_space_tail(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) >= k) for n / 2 < k <= n, summed in log space."""
    # Beyond the mode the terms decrease (ratio (n - j) / (j + 1) < 1), so the first term is the largest: factor it
    # out in log space (no overflow of C(n, k), no underflow of 2^-n) and add the ratios until they stop mattering.
    # log(C(n, k) / 2^n) from the exact integer: its top 64 bits carry the mantissa and the binary exponent is folded
    # into the power of 2, so the only rounding is in a log of a number near 1 plus a small multiple of log 2. (A
    # plain lgamma difference or n * log 2 would cost ~1e-11 absolute error in the log at n ~ 1e5.)
    first = math.comb(n, k)
    shift = max(first.bit_length() - 64, 0)
    log_first = math.log(first >> shift) + (shift - n) * math.log(2.0)
    ratio, total = 1.0, 1.0
    for j in range(k, n):
        ratio *= (n - j) / (j + 1)
        total += ratio
        if ratio < 1e-17 * total:
            break
    return math.exp(log_first + math.log(total))


def _binomial_half_sf(n: int, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), n >= 0."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    # Sum the shorter side; by symmetry P(X <= k - 1) = P(X >= n - k + 1).
    upper = 2 * k > n
    if n <= _EXACT_INT_MAX:
        total = 1 << n
        if upper:
            return _binomial_sum_upper(n, k) / total
        return (total - _binomial_sum_upper(n, n - k + 1)) / total
    if upper:
        return _log_space_tail(n, k)
    # The complement is < 1/2 here, so 1 - complement loses nothing that matters.
    return 1.0 - _log_space_tail(n, n - k + 1)


def mcnemar_exact(baseline, candidate) -> McNemarResult:
    """Exact one-sided McNemar test that the candidate is worse than the baseline.

    Args:
        baseline: (n,) 0/1 (or bool) correctness of the baseline per item, n >= 1.
        candidate: (n,) 0/1 (or bool) correctness of the candidate on the same items.

    Returns:
        `McNemarResult` with p_value = P(Binomial(b + c, 1/2) >= b): under H0 each discordant pair is equally likely to
        go either way, and degradation shows as many (baseline right, candidate wrong) pairs. p = 1 when b + c = 0.
        Exact for any n (integer arithmetic up to 10,000 discordant pairs, log space beyond).

    Raises:
        ValueError: not 1-D, empty, different lengths, NaN, or values other than 0/1.
    """
    base = _binary_vector(baseline, "baseline")
    cand = _binary_vector(candidate, "candidate")
    if base.shape != cand.shape:
        raise ValueError(f"baseline has {base.size} items but candidate has {cand.size}: scores must be item-aligned")
    b = int(np.count_nonzero((base == 1) & (cand == 0)))
    c = int(np.count_nonzero((base == 0) & (cand == 1)))
    return McNemarResult(n=int(base.size), baseline_correct=int(base.sum()), candidate_correct=int(cand.sum()),
                         b=b, c=c, p_value=_binomial_half_sf(b + c, b))


# ---------------------------------------------------------------------------------------------------------------------
# Paired sign-flip permutation test


def _sign_flip_p(x: np.ndarray, permutations: int, rng: np.random.Generator, exact_max: int) -> tuple[float, bool, int]:
    """One-sided sign-flip p-value: P(sum_i s_i x_i <= sum_i x_i) for independent uniform signs s_i in {-1, +1}.

    Args:
        x: (n,) per-item contributions to the statistic (differences, possibly weighted).

    Returns:
        (p_value, exact, patterns used).
    """
    nonzero = x[x != 0]  # a zero difference is its own sign flip: it changes no statistic, so it is left out
    a = np.abs(nonzero)
    m = a.size
    # With S = sum of |x_i| over the items whose flipped sign is negative, the flipped sum is sum|x| - 2 S, so
    # "flipped <= observed" is "S >= S_obs", S_obs summing |x_i| over the observed negative x_i. Comparing S avoids
    # the cancellation in sum|x| - 2 S; the tolerance (a bound on the summation rounding error) keeps exact ties,
    # e.g. between patterns of equal-magnitude 0/1 differences, counted as ties.
    s_obs = float(-nonzero[nonzero < 0].sum())
    threshold = s_obs - 4.0 * max(m, 1) * np.finfo(np.float64).eps * float(a.sum())
    if m <= exact_max:
        # All 2^m subset sums by doubling: each step appends the sums with item i's sign negative.
        sums = np.zeros(1)
        for value in a:
            sums = np.concatenate((sums, sums + value))
        return int(np.count_nonzero(sums >= threshold)) / sums.size, True, int(sums.size)
    count, done = 0, 0
    block = max(1, _MC_BLOCK // m)
    while done < permutations:
        rows = min(block, permutations - done)
        negative = rng.integers(0, 2, size=(rows, m), dtype=np.int8)
        count += int(np.count_nonzero(negative.astype(np.float64) @ a >= threshold))
        done += rows
    # (1 + count) / (1 + B) counts the observed pattern as one of the draws: a valid p-value (P(p <= alpha) <= alpha
    # under H0) that is never 0.
    return (1 + count) / (1 + permutations), False, permutations


def paired_permutation_test(baseline, candidate, *, permutations: int = 10_000, seed: int = 0,
                            exact_max: int = _EXACT_MAX) -> PermutationResult:
    """Paired sign-flip permutation test that the candidate is worse than the baseline.

    The statistic is the mean of d_i = candidate_i - baseline_i over items. Under H0 (the two models are exchangeable
    on every item) each d_i is as likely to be -d_i, so p = P(mean of sign-flipped d <= observed mean).

    Args:
        baseline: (n,) or (n, reruns) scores, n >= 1; reruns are averaged per item first.
        candidate: (n,) or (n, reruns') scores on the same items (its rerun count may differ from the baseline's).
        permutations: Monte Carlo sign patterns when the test is not exact.
        seed: seed of the numpy Generator used for the Monte Carlo patterns (same seed, same p).
        exact_max: all 2^m sign patterns of the m nonzero d_i are enumerated when m <= exact_max (at most 24).

    Returns:
        `PermutationResult`. Exact p is (#patterns with statistic <= observed) / 2^m; the Monte Carlo p is
        (1 + #{statistic <= observed}) / (1 + permutations), never 0. For 0/1 scores with one run per item the exact
        p equals `mcnemar_exact`'s.

    Raises:
        ValueError: bad shapes, different item counts, empty, NaN / infinite scores, bad permutations / exact_max.
    """
    base, cand, _ = _paired_items(baseline, candidate, ("baseline", "candidate"))
    permutations = _check_permutations(permutations)
    exact_max = _check_exact_max(exact_max)
    d = cand - base
    p, exact, used = _sign_flip_p(d, permutations, np.random.default_rng(seed), exact_max)
    return PermutationResult(n=int(d.size), mean_difference=float(d.mean()), p_value=p, exact=exact,
                             permutations=used)


# ---------------------------------------------------------------------------------------------------------------------
# Holm-Bonferroni


def _check_p_values(p_values) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a flat sequence, got shape {p.shape}")
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ValueError("p_values must all lie in [0, 1] (no NaN)")
    return p


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order.

    With p_(1) <= ... <= p_(m) sorted, adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)): monotone in the
    sorted order and capped at 1. Rejecting every hypothesis with adjusted p <= alpha is Holm's step-down procedure,
    which controls the family-wise error rate at alpha under any dependence between the tests.
    """
    p = _check_p_values(p_values)
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * float(p[index])))
        adjusted[index] = running
    return adjusted.tolist()


def holm_bonferroni(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm-Bonferroni rejections at family-wise error rate `alpha`, in input order (True = rejected)."""
    alpha = _check_alpha(alpha)
    return [q <= alpha for q in holm_adjusted(p_values)]


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation across tasks

Tasks = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _task_results(checked: list[_Task], permutations: int, seed: int) -> list[TaskResult]:
    """Each task's own unadjusted test (McNemar when binary, else the permutation test)."""
    # One independent stream per task, derived from the seed, so a task's p does not depend on the other tasks.
    streams = np.random.SeedSequence(seed).spawn(len(checked))
    results = []
    for task, stream in zip(checked, streams):
        if task.binary:
            test = mcnemar_exact(task.baseline, task.candidate)
            p, b, c, name = test.p_value, test.b, test.c, "mcnemar_exact"
        else:
            p, _, _ = _sign_flip_p(task.candidate - task.baseline, permutations, np.random.default_rng(stream),
                                   _EXACT_MAX)
            b, c, name = None, None, "paired_permutation"
        results.append(TaskResult(task=task.name, n=int(task.baseline.size), baseline_mean=float(task.baseline.mean()),
                                  candidate_mean=float(task.candidate.mean()), b=b, c=c, test=name, p_value=p,
                                  adjusted_p=None, degraded=None))
    return results


def pooled(tasks: Tasks, alpha: float = 0.05, *, permutations: int = 10_000, seed: int = 0) -> GateDecision:
    """One paired test over all items of all tasks together (large tasks weigh more, item for item).

    Exact McNemar when every task has 0/1 scores with one run per item, else the sign-flip permutation test on the
    per-item mean differences (exact up to 20 nonzero differences, else `permutations` seeded Monte Carlo patterns).
    """
    checked = _check_tasks(tasks)
    alpha = _check_alpha(alpha)
    permutations = _check_permutations(permutations)
    base = np.concatenate([t.baseline for t in checked])
    cand = np.concatenate([t.candidate for t in checked])
    if all(t.binary for t in checked):
        p, test = mcnemar_exact(base, cand).p_value, "mcnemar_exact"
    else:
        p, _, _ = _sign_flip_p(cand - base, permutations, np.random.default_rng(seed), _EXACT_MAX)
        test = "paired_permutation"
    return GateDecision(degraded=p <= alpha, p_value=p, method="pooled", test=test, alpha=alpha,
                        tasks=tuple(_task_results(checked, permutations, seed)))


def per_task(tasks: Tasks, alpha: float = 0.05, *, permutations: int = 10_000, seed: int = 0) -> GateDecision:
    """A paired test per task, Holm-Bonferroni across tasks; degraded when any task is.

    Controls the probability of flagging any task falsely at alpha; the overall p-value is the smallest Holm-adjusted
    one, so ``degraded == (p_value <= alpha)``.
    """
    checked = _check_tasks(tasks)
    alpha = _check_alpha(alpha)
    permutations = _check_permutations(permutations)
    results = _task_results(checked, permutations, seed)
    adjusted = holm_adjusted([r.p_value for r in results])
    results = [replace(r, adjusted_p=q, degraded=q <= alpha) for r, q in zip(results, adjusted)]
    p = min(adjusted)
    return GateDecision(degraded=p <= alpha, p_value=p, method="per_task", test="holm_bonferroni", alpha=alpha,
                        tasks=tuple(results))


def weighted(tasks: Tasks, alpha: float = 0.05, *, permutations: int = 10_000, seed: int = 0) -> GateDecision:
    """Sign-flip permutation test on the task-weighted mean difference (every task counts equally, whatever its size).

    Statistic: mean over the T tasks of the task's mean d = sum over items of d_i / (T n_task). Under H0 each item's
    sign is flipped independently and the same flips feed every task's mean, so this is a sign-flip test on the
    weighted differences: exact up to 20 nonzero differences in all, else `permutations` seeded Monte Carlo patterns.
    """
    checked = _check_tasks(tasks)
    alpha = _check_alpha(alpha)
    permutations = _check_permutations(permutations)
    x = np.concatenate([(t.candidate - t.baseline) / (len(checked) * t.baseline.size) for t in checked])
    p, _, _ = _sign_flip_p(x, permutations, np.random.default_rng(seed), _EXACT_MAX)
    return GateDecision(degraded=p <= alpha, p_value=p, method="weighted", test="weighted_permutation", alpha=alpha,
                        tasks=tuple(_task_results(checked, permutations, seed)))


AGGREGATES: dict[str, Callable[..., GateDecision]] = {"pooled": pooled, "per_task": per_task, "weighted": weighted}


def gate(tasks: Tasks, alpha: float = 0.05, aggregate: str = "pooled", permutations: int = 10_000,
         seed: int = 0) -> GateDecision:
    """The gate's decision: is the candidate significantly worse than the baseline across `tasks`?

    Args:
        tasks: task name -> (baseline scores, candidate scores), each (n,) or (n, reruns), item-aligned within a task.
        alpha: false-positive rate (probability of flagging a candidate that is not worse), in (0, 1).
        aggregate: "pooled", "per_task" or "weighted" (see those functions).
        permutations: Monte Carlo sign patterns for the permutation tests that are not exact.
        seed: seed of those patterns; the same inputs and seed give the same decision.

    Raises:
        ValueError: unknown aggregate, alpha outside (0, 1), no tasks, an empty task, lengths that differ within a
            task, NaN / infinite scores, bad permutations.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; expected one of {', '.join(AGGREGATES)}")
    return AGGREGATES[aggregate](tasks, alpha, permutations=permutations, seed=seed)


# ---------------------------------------------------------------------------------------------------------------------
# Calibration


def expected_calibration_error(confidence, correct, bins: int = 10) -> float:
    """Expected calibration error with equal-width confidence bins.

    Args:
        confidence: (n,) confidences in [0, 1], n >= 1. Bin k covers [k / bins, (k + 1) / bins); 1.0 goes into the
            last bin.
        correct: (n,) 0/1 (or bool) correctness of the same answers.
        bins: number of bins, >= 1.

    Returns:
        sum over non-empty bins of (bin size / n) * |accuracy(bin) - mean confidence(bin)|, in [0, 1].

    Raises:
        ValueError: not 1-D, empty, different lengths, NaN, confidence outside [0, 1], correct not 0/1, bad bins.
    """
    conf = _numeric_array(confidence, "confidence")
    if conf.ndim != 1:
        raise ValueError(f"confidence must be a 1-D array, got shape {conf.shape}")
    if conf.size == 0:
        raise ValueError("confidence is empty (no items)")
    if ((conf < 0) | (conf > 1)).any():
        raise ValueError("confidence must lie in [0, 1]")
    corr = _binary_vector(correct, "correct")
    if corr.size != conf.size:
        raise ValueError(f"confidence has {conf.size} items but correct has {corr.size}: they must be item-aligned")
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    index = np.minimum((conf * bins).astype(np.int64), bins - 1)
    # (size / n) * |sum(correct) / size - sum(confidence) / size| = |sum(correct) - sum(confidence)| / n per bin, so
    # only per-bin sums are needed and empty bins contribute 0 without a division by zero.
    correct_sum = np.bincount(index, weights=corr.astype(np.float64), minlength=bins)
    confidence_sum = np.bincount(index, weights=conf, minlength=bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / conf.size)
