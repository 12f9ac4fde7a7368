"""Tests of coreset_sampler.k_center_sampler: budget, batches as k-center picks of their pools,
schedule, stratified pools, DataLoader workers, seeds, state, errors."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler.kernels import greedy_k_center
from coreset_sampler.samplers import KCenterBatchSampler
from coreset_sampler.samplers._selection import largest_remainder as _largest_remainder
from coreset_sampler.samplers._stream import steps_per_epoch as _steps_per_epoch
from coreset_sampler.weights import WeightedIndex, WithWeights

from ._helpers import Proxies


def batches_of(sampler: KCenterBatchSampler) -> list[list[int]]:
    return [[int(i) for i in b] for b in sampler]


def pools_of(seed: int, epoch: int, n: int, r: int, p: int) -> list[np.ndarray]:
    """The pools of the first selection of an epoch, drawn from the documented stream."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(epoch, 0))))
    return [rng.choice(n, size=r, replace=False) for _ in range(p)]


@pytest.mark.parametrize(
    ("n", "m", "budget", "drop_last"),
    [(500, 10, 0.1, False), (500, 8, 0.1, False), (500, 8, 0.1, True), (97, 5, 1.0, False)],
)
def test_len_is_the_budget_arithmetic(n: int, m: int, budget: float, drop_last: bool) -> None:
    s = KCenterBatchSampler(n, m, callback=Proxies(n, 3), budget=budget, drop_last=drop_last)
    expected = _steps_per_epoch(budget, n, m, drop_last)
    assert len(s) == expected
    for _ in range(2):
        batches = list(s)
        assert len(batches) == expected
        assert all(len(b) == m == len(set(b)) for b in batches)
        assert all(isinstance(i, WeightedIndex) and i.weight == 1.0 for b in batches for i in b)


def test_batches_are_k_center_greedy_picks_of_their_pools() -> None:
    n, m, r, p = 400, 6, 40, 4
    proxies = Proxies(n, 3)
    s = KCenterBatchSampler(
        n, m, callback=proxies, budget=0.06, pool_size=r, num_pools=p, reselect_every=8, seed=3
    )
    batches = batches_of(s)
    assert len(batches) == 4  # one selection: each of the 4 batches once
    pools = pools_of(3, 0, n, r, p)
    assert sorted(proxies.calls[0]) == sorted(set(np.concatenate(pools).tolist()))
    picks = greedy_k_center(proxies.table[torch.from_numpy(np.stack(pools))], m).indices
    expected = [pool[row].tolist() for pool, row in zip(pools, picks.numpy(), strict=True)]
    assert s.coresets == expected
    assert sorted(batches) == sorted(expected)  # each coreset once, in a random order
    # each batch's covering radius of its pool is the greedy's final radius
    out = greedy_k_center(proxies.table[torch.from_numpy(np.stack(pools))], m)
    for pool, batch, radius in zip(pools, expected, out.radii[:, -1].tolist(), strict=True):
        x = proxies.table[torch.from_numpy(pool)]
        assert float(torch.cdist(x, proxies.table[batch]).amin(1).max()) == pytest.approx(radius)


def test_cycles_in_fresh_order_and_reselects_every_reselect_every_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = 300
    proxies = Proxies(n, 3)
    s = KCenterBatchSampler(
        n, 5, callback=proxies, budget=0.5, pool_size=20, num_pools=3, reselect_every=6, seed=0
    )
    with caplog.at_level(logging.DEBUG, logger="coreset_sampler.samplers.k_center"):
        batches = batches_of(s)  # 30 steps: selections at steps 0, 6, ..., 24
    assert len(batches) == 30 and len(proxies.calls) == 5
    first = [tuple(b) for b in batches[:6]]
    assert Counter(first) == Counter({c: 2 for c in set(first)}) and len(set(first)) == 3
    assert batches[6:9] != batches[:3]
    t = s.telemetry
    assert t.num_selections == 5 and [r.step for r in t.selections] == [0, 6, 12, 18, 24]
    assert t.selections[0].reason == "initial" and t.selections[1].reason == "interval"
    assert t.selections[0].num_pools == 3 and t.selections[0].pool_size == 20
    assert t.num_steps == 30 and t.kernel_seconds > 0
    assert sum("k-center selection" in r.getMessage() for r in caplog.records) == 5
    batches_of(s)  # the schedule carries over the epoch boundary: step 30 reselects
    assert len(proxies.calls) == 10


def test_labels_stratify_the_pools() -> None:
    n = 300
    labels = torch.tensor([0] * 200 + [1] * 70 + [2] * 30)
    proxies = Proxies(n, 3)
    s = KCenterBatchSampler(
        n, 4, callback=proxies, budget=0.1, labels=labels, pool_size=23, num_pools=1
    )
    next(iter(s))
    counts = Counter(int(labels[i]) for i in proxies.calls[0])
    expected = _largest_remainder(23, np.array([200, 70, 30])).tolist()
    assert [counts[c] for c in range(3)] == expected == [15, 6, 2]


def test_dataloader_workers_get_unit_weights_with_their_batch() -> None:
    n, m = 200, 5
    ds = TensorDataset(torch.arange(n))
    expected = batches_of(
        KCenterBatchSampler(ds, m, callback=Proxies(n, 3), budget=0.2, reselect_every=3, seed=1)
    )
    s = KCenterBatchSampler(ds, m, callback=Proxies(n, 3), budget=0.2, reselect_every=3, seed=1)
    loader = DataLoader(WithWeights(ds), batch_sampler=s, num_workers=2)
    got = [(x.tolist(), w.tolist()) for x, w in loader]
    assert [x for x, _ in got] == expected
    assert all(w == [1.0] * m for _, w in got)


def test_same_seed_same_stream_and_generator() -> None:
    def run(**kw: object) -> list[list[int]]:
        s = KCenterBatchSampler(300, 5, callback=Proxies(300, 3), budget=0.2, **kw)  # type: ignore[arg-type]
        return batches_of(s) + batches_of(s)

    four = run(seed=4)
    assert run(seed=4) == four and run(seed=5) != four
    g1 = run(generator=torch.Generator().manual_seed(1))
    assert run(generator=torch.Generator().manual_seed(1)) == g1


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_state_round_trip_mid_epoch_gives_the_identical_tail_without_the_callback(
    cut: int,
) -> None:
    n = 300

    def make(p: Proxies) -> KCenterBatchSampler:
        return KCenterBatchSampler(
            n, 5, callback=p, budget=0.2, pool_size=15, num_pools=2, reselect_every=4, seed=9
        )

    ref_calls = Proxies(n, 3)
    ref = make(ref_calls)
    reference = [batches_of(ref) for _ in range(2)]  # 12 steps per epoch, selections every 4
    a = make(Proxies(n, 3))
    batches_of(a)
    it = iter(a)
    head = [[int(i) for i in next(it)] for _ in range(cut)]
    state = json.loads(json.dumps(a.state_dict()))
    second = Proxies(n, 3)
    b = make(second)
    b.load_state_dict(state)
    b.set_epoch(1)  # a no-op mid-epoch
    assert head + batches_of(b) == reference[1]
    # selections of epoch 1 happen at its steps 0, 4, 8; only those after the cut are redone
    assert len(second.calls) == sum(1 for step in (0, 4, 8) if step >= cut)
    assert second.calls == ref_calls.calls[len(ref_calls.calls) - len(second.calls) :]


def test_state_errors() -> None:
    s = KCenterBatchSampler(100, 5, callback=Proxies(100, 3))
    with pytest.raises(TypeError, match="state should be a mapping"):
        s.load_state_dict(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"missing keys \['cycle'"):
        s.load_state_dict({k: v for k, v in s.state_dict().items() if k != "cycle"})
    cycle = s.state_dict()
    del cycle["cycle"]["coresets"]
    with pytest.raises(ValueError, match=r"state\['cycle'\] is missing keys \['coresets'"):
        s.load_state_dict(cycle)
    with pytest.raises(ValueError, match="num_samples=101"):
        s.load_state_dict(KCenterBatchSampler(101, 5, callback=Proxies(101, 3)).state_dict())


def test_errors() -> None:
    p = Proxies(100, 3)
    with pytest.raises(TypeError, match="callback is required"):
        KCenterBatchSampler(100, 5, callback=None)
    with pytest.raises(TypeError, match="callback should be callable"):
        KCenterBatchSampler(100, 5, callback=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size=10 is larger than pool_size=5"):
        KCenterBatchSampler(100, 10, callback=p, pool_size=5)
    with pytest.raises(ValueError, match=r"pool_size=101 is larger than the dataset"):
        KCenterBatchSampler(100, 10, callback=p, pool_size=101)
    with pytest.raises(TypeError, match="pool_size=True"):
        KCenterBatchSampler(100, 1, callback=p, pool_size=True)
    with pytest.raises(ValueError, match="num_pools=0"):
        KCenterBatchSampler(100, 5, callback=p, num_pools=0)
    with pytest.raises(TypeError, match="reselect_every=True"):
        KCenterBatchSampler(100, 5, callback=p, reselect_every=True)
    with pytest.raises(TypeError, match="labels should hold integers"):
        KCenterBatchSampler(100, 5, callback=p, labels=torch.zeros(100))
    with pytest.raises(TypeError, match="drop_last should be a boolean"):
        KCenterBatchSampler(100, 5, callback=p, drop_last=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass seed or generator, not both"):
        KCenterBatchSampler(100, 5, callback=p, seed=1, generator=torch.Generator())

    def wrong(indices: list[int]) -> Tensor:
        return torch.zeros(len(indices))

    with pytest.raises(ValueError, match=r"callback\(indices\) at selection 0 \(step 0\) returned"):
        next(iter(KCenterBatchSampler(100, 5, callback=wrong)))


def test_defaults() -> None:
    s = KCenterBatchSampler(12800, callback=Proxies(12800, 3))
    assert len(s) == 10 and s.pool_size == 256  # batch_size 128, budget 0.1, r = 2·m > 1% of N
    batches = batches_of(s)
    assert s.telemetry.num_selections == 1  # reselect_every 20 > 10 steps
    assert len(batches[0]) == 128
