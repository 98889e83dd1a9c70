"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict:
    """Mean, min, max and the values themselves: what every benchmark reports per method over seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def interval95(values: list[float]) -> dict:
    """Mean with a two-sided 95% Student-t interval over seeds (n >= 2): mean +- t(0.975, n-1) * sd / sqrt(n)."""
    from scipy.stats import t  # a dev dependency: only the benchmarks that report intervals need it

    mean, n = statistics.fmean(values), len(values)
    half = t.ppf(0.975, n - 1) * statistics.stdev(values) / n**0.5 if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "values": values}
