"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict:
    """Mean, min, max and the values themselves: what every benchmark reports per method over seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}
