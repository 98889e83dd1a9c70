"""Padding helpers of align.tokens against hand-worked batches."""

from __future__ import annotations

import pytest
import torch

from align.tokens import split_by_length


def test_split_by_length_cuts_where_the_padded_area_is_smallest():
    mask = torch.tensor([[0, 0, 0, 1, 1, 1],   # left padding 3
                         [1, 1, 1, 1, 1, 0],   # 0
                         [0, 0, 0, 1, 1, 0],   # 3
                         [0, 1, 1, 1, 1, 1]])  # 1
    # Ordered by padding: rows 0, 2, 3, 1 (pads 3, 3, 1, 0). Cut after 1 / 2 / 3 rows: 1*3 + 3*6 = 21,
    # 2*3 + 2*6 = 18, 3*5 + 1*6 = 21 padded cells, against 24 for the whole batch.
    (short, short_start), (long, long_start) = split_by_length(mask)
    assert short.tolist() == [0, 2] and short_start == 3
    assert long.tolist() == [3, 1] and long_start == 0


def test_split_by_length_keeps_every_row_once_when_lengths_are_equal():
    mask = torch.ones(5, 4, dtype=torch.long)
    buckets = split_by_length(mask)
    assert len(buckets) == 2 and all(len(rows) > 0 and start == 0 for rows, start in buckets)
    assert sorted(torch.cat([rows for rows, _ in buckets]).tolist()) == [0, 1, 2, 3, 4]


def test_split_by_length_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_by_length(torch.ones(1, 3, dtype=torch.long))
