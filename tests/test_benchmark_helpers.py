"""The statistics the benchmark scripts report, against hand-computed values."""

import math

import pytest

from benchmarks.common import interval95, spread


def test_spread_reports_mean_min_max_and_values():
    assert spread([1.0, 3.0, 2.0]) == {"mean": 2.0, "min": 1.0, "max": 3.0, "values": [1.0, 3.0, 2.0]}


def test_interval95_is_the_student_t_interval():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653; half-width 4.302653 / sqrt(3) = 2.484138.
    result = interval95([1.0, 2.0, 3.0])
    assert result["mean"] == 2.0 and result["n"] == 3
    assert result["low"] == pytest.approx(2 - 2.484138, abs=1e-6)
    assert result["high"] == pytest.approx(2 + 2.484138, abs=1e-6)


def test_interval95_of_one_value_has_no_width():
    result = interval95([0.5])
    assert result["mean"] == 0.5 and math.isnan(result["low"]) and math.isnan(result["high"])
