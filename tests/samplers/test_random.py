"""Tests of coreset_sampler.samplers.random: the uniform baseline on the same code path."""

from __future__ import annotations

import json

import torch

from coreset_sampler.samplers import RandomBatchSampler

from ._helpers import stream


def test_random_batch_sampler() -> None:
    s = RandomBatchSampler(100, 8, budget=1.0, seed=1)
    batches = stream(s)
    assert len(batches) == len(s) == 13
    assert all(len(set(b)) == 8 and w == [1.0] * 8 for b, w in batches)
    # consecutive slices of permutations: the first 12 batches cover 96 distinct examples
    assert len({i for b, _ in batches[:12] for i in b}) == 96
    assert stream(s) != batches  # epoch 1 ≠ epoch 0
    a = RandomBatchSampler(100, 8, budget=1.0, seed=1)
    ref = stream(a) + stream(a)
    b = RandomBatchSampler(100, 8, budget=1.0, seed=1)
    stream(b)
    stream(b, 5)
    c = RandomBatchSampler(100, 8, budget=1.0, seed=1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert stream(c) == ref[13 + 5 :]
    assert c.weights_for([1, 2, 3]).tolist() == [1.0, 1.0, 1.0]
    assert c.telemetry.num_steps == 13 + 13 and c.telemetry.num_selections == 0


def test_each_example_once_per_permutation_and_the_generator() -> None:
    s = RandomBatchSampler(100, 10, budget=1.0, seed=2)
    epoch = stream(s)
    assert sorted(i for b, _ in epoch for i in b) == list(range(100))  # 10 batches: one permutation
    wrap = RandomBatchSampler(100, 30, budget=1.0, seed=2)  # 4 batches: 90 of one permutation,
    batches = stream(wrap)  # then a batch of a fresh one
    assert len({i for b, _ in batches[:3] for i in b}) == 90
    assert all(len(set(b)) == 30 for b, _ in batches)
    a = RandomBatchSampler(100, 10, generator=torch.Generator().manual_seed(1))
    b = RandomBatchSampler(100, 10, generator=torch.Generator().manual_seed(1))
    c = RandomBatchSampler(100, 10, generator=torch.Generator().manual_seed(2))
    assert a.seed == b.seed != c.seed and stream(a) == stream(b)
    assert len(RandomBatchSampler(12800)) == 10  # batch_size 128, budget 0.1
