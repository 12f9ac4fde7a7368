"""Tests of coreset_sampler.samplers._selection: the largest-remainder split, pools, weights."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from coreset_sampler.samplers._selection import (
    draw_pools,
    first_appearance,
    labels_digest,
    largest_remainder,
    mean_one,
)


@given(
    st.integers(1, 200),
    st.lists(st.integers(0, 60), min_size=1, max_size=8).filter(lambda c: sum(c) > 0),
)
def test_largest_remainder_property(total: int, counts: list[int]) -> None:
    arr = np.array(counts, dtype=np.int64)
    total = min(total, int(arr.sum()))
    out = largest_remainder(total, arr)
    exact = total * arr / arr.sum()
    assert out.sum() == total
    assert np.all(out >= np.floor(exact)) and np.all(out <= np.ceil(exact))
    assert np.all(out <= arr)


def test_largest_remainder_examples() -> None:
    assert largest_remainder(10, np.array([30, 15, 5])).tolist() == [6, 3, 1]
    assert largest_remainder(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]  # ties: lowest
    assert largest_remainder(7, np.array([5, 0, 5])).tolist() == [4, 0, 3]


def test_first_appearance_and_mean_one_weights() -> None:
    values, rank = first_appearance(np.array([7, 3, 7, 9, 3], dtype=np.int64))
    assert values.tolist() == [7, 3, 9] and rank.tolist() == [0, 1, 0, 2, 1]
    w = mean_one([3.0, 1.0, 0.0, 4.0], 4)
    assert w == [1.5, 0.5, 0.0, 2.0] and math.fsum(w) == 4.0


def test_pools_are_drawn_without_replacement_from_the_active_set() -> None:
    active = np.arange(0, 200, 2, dtype=np.int64)
    pools = draw_pools(np.random.default_rng(1), active, None, 30, 3)
    for pool in pools:
        assert len(set(pool.tolist())) == 30 and set(pool.tolist()) <= set(active.tolist())
    assert len({tuple(p.tolist()) for p in pools}) == 3


def test_labels_digest_tells_label_sets_apart() -> None:
    a = np.array([0, 1, 1, 2], dtype=np.int64)
    assert labels_digest(None) is None
    assert labels_digest(a) == labels_digest(a.copy())
    assert labels_digest(a) != labels_digest(np.array([0, 1, 2, 2], dtype=np.int64))
