"""Tests of coreset_sampler.weights: indices that carry their batch's weight."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from coreset_sampler.weights import WeightedIndex, WithWeights


def test_weighted_index_and_with_weights() -> None:
    i = WeightedIndex(3, 0.25)
    j = pickle.loads(pickle.dumps(i))
    assert j == 3 and j.weight == 0.25 and isinstance(j, WeightedIndex)
    assert int(i + 1) == 4 and not isinstance(i + 1, WeightedIndex)
    x = torch.arange(10.0)
    ds = TensorDataset(x, x * 2)
    assert WithWeights(ds)[i][0] == 3.0 and float(WithWeights(ds)[i][2]) == 0.25
    assert float(WithWeights(ds)[3][2]) == 1.0  # a plain int weighs 1
    plain = WithWeights(x, return_index=True)  # a non-tuple item is kept whole
    item, w, idx = plain[i]
    assert float(item) == 3.0 and float(w) == 0.25 and int(idx) == 3
    sub = WithWeights(Subset(ds, [9, 8, 7, 6]))  # goes through Subset.__getitems__
    got = sub.__getitems__([WeightedIndex(0, 2.0), WeightedIndex(2, 3.0)])
    assert [(float(a), float(c)) for a, _, c in got] == [(9.0, 2.0), (7.0, 3.0)]
    assert len(sub) == 4
    with pytest.raises(TypeError, match="return_index should be a boolean value"):
        WithWeights(ds, return_index=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_batch_sampler_given_as_sampler_is_refused(num_workers: int) -> None:
    from torch.utils.data import DataLoader

    from coreset_sampler import RandomBatchSampler

    ds = TensorDataset(torch.randn(40, 3), torch.arange(40))
    sampler = RandomBatchSampler(ds, 8, budget=0.5, seed=0)
    wrong = DataLoader(WithWeights(ds), sampler=sampler, num_workers=num_workers)
    with pytest.raises(TypeError, match=r"batch of 8 indices .* batch_sampler=sampler"):
        next(iter(wrong))
    right = DataLoader(WithWeights(ds), batch_sampler=sampler, num_workers=num_workers)
    x, _, w = next(iter(right))
    assert x.shape == (8, 3) and w.shape == (8,)
    assert WithWeights(ds)[[1, 2]][0].shape == (2, 3)  # plain lists still reach the dataset
