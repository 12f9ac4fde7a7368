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


@pytest.mark.parametrize("return_index", [False, True])
def test_a_batch_of_items_is_the_items_one_by_one(return_index: bool) -> None:
    """``__getitems__`` (one weight tensor per batch, split) gives what ``__getitem__`` gives
    item by item: the same values, 0-d float32 weights and int64 indices, and the same
    collated batch."""
    from torch.utils.data import default_collate

    x = torch.arange(12.0).reshape(6, 2)
    indices = [WeightedIndex(4, 0.1), 2, WeightedIndex(5, 3.0), WeightedIndex(0, 1e-3)]
    for ds in (TensorDataset(x, torch.arange(6)), x):  # tuple items, and items kept whole
        wrapped = WithWeights(ds, return_index=return_index)
        batch = wrapped.__getitems__(indices)
        single = [wrapped[i] for i in indices]
        assert len(batch) == len(single)
        for got, want in zip(batch, single, strict=True):
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        collated = default_collate(batch)
        assert collated[-1 - return_index].dtype == torch.float32
        for a, b in zip(collated, default_collate(single), strict=True):
            assert torch.equal(a, b)
    assert WithWeights(x).__getitems__([]) == []
