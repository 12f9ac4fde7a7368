"""CrestBatchSampler inside real DataLoaders: workers, prefetch, weights, pickling, resume."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import CrestBatchSampler, RandomBatchSampler, WithWeights

N = 240


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(N, dtype=torch.float32)[:, None], torch.arange(N))


class ChangingProxies:
    """Fresh random proxies at every call (deterministic in the call count), so every selection
    has different weights; holds a lock, so it cannot be pickled."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, indices: list[int]) -> Tensor:
        with self.lock:
            table = torch.randn(N, 3, generator=torch.Generator().manual_seed(self.calls))
            self.calls += 1
        return table[indices]


def make(callback: Any = None, **kw: Any) -> CrestBatchSampler:
    kw.setdefault("budget", 0.5)  # 15 steps per epoch
    kw.setdefault("weighting", "cluster_size")  # (weights that tell the batches apart)
    return CrestBatchSampler(
        N,
        8,
        callback=callback or ChangingProxies(),
        pool_size=24,
        num_pools=2,
        reselect_every=2,
        seed=0,
        **kw,
    )


def reference(epochs: int) -> list[tuple[list[int], list[float], int]]:
    """Batches, weights, and the selection count right after each batch, straight from the
    sampler (no loader)."""
    s = make()
    out = []
    for _ in range(epochs):
        for batch in s:
            out.append(
                ([int(i) for i in batch], [i.weight for i in batch], s.telemetry.num_selections)
            )
    return out


@pytest.mark.parametrize(
    "loader_kw",
    [
        {"num_workers": 0},
        {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 2},
    ],
    ids=["workers0", "workers2-persistent"],
)
def test_every_batch_gets_its_own_weights(loader_kw: dict[str, Any]) -> None:
    sampler = make()
    loader = DataLoader(WithWeights(dataset()), batch_sampler=sampler, **loader_kw)
    assert len(loader) == len(sampler) == 15
    expected = reference(2)
    assert len({tuple(ws) for _, ws, _ in expected}) > 10  # (a stale weight would show)
    got = []
    stale = 0
    for _ in range(2):
        for _x, idx, w in loader:
            j = len(got)
            got.append((idx.tolist(), w.tolist()))
            assert w.dtype == torch.float32
            # the lookup by exact batch agrees with what travelled with the batch
            assert sampler.weights_for(idx).tolist() == w.tolist()
            made_by = expected[j][2]
            stale += sampler.telemetry.num_selections > made_by
    assert [b for b, _ in got] == [b for b, _, _ in expected]
    for (_, w), (_, w_exp, _) in zip(got, expected, strict=True):
        assert w == pytest.approx(w_exp, rel=1e-6)
    if loader_kw["num_workers"] > 0:
        # the test really exercised prefetch: newer selections existed while older batches were
        # consumed, and their weights still arrived intact
        assert stale > 0
    else:
        assert stale == 0


def test_the_callback_and_model_are_never_pickled() -> None:
    # spawn pickles everything a worker gets; the batch sampler (holding an unpicklable
    # callback and a model) stays in the main process
    model = torch.nn.Linear(1, 2)
    cb = ChangingProxies()
    cb.model = model  # type: ignore[attr-defined]
    sampler = make(cb, budget=0.2)  # 6 steps
    loader = DataLoader(
        WithWeights(dataset()),
        batch_sampler=sampler,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    batches = [idx.tolist() for _x, idx, _w in loader]
    assert len(batches) == 6
    assert batches == [b for b, _, _ in reference(1)[:6]]


def test_random_batch_sampler_in_a_loader() -> None:
    sampler = RandomBatchSampler(N, 8, budget=0.5, seed=0)
    loader = DataLoader(WithWeights(dataset()), batch_sampler=sampler, num_workers=2)
    ws = [w for _x, _i, w in loader]
    assert len(ws) == len(sampler) == 15
    assert all(w.tolist() == [1.0] * 8 for w in ws)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_mid_epoch(num_workers: int) -> None:
    sdl = pytest.importorskip("torchdata.stateful_dataloader")

    def loader(sampler: CrestBatchSampler) -> Any:
        return sdl.StatefulDataLoader(
            WithWeights(dataset()), batch_sampler=sampler, num_workers=num_workers
        )

    expected = reference(2)
    first = loader(make())
    seen = [idx.tolist() for _x, idx, _w in first]
    assert seen == [b for b, _, _ in expected[:15]]
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    del it

    made_before = expected[15 + 4][2]  # selections made for the first 20 batches
    cb = ChangingProxies()
    cb.calls = made_before  # so that later selections see the reference's proxies
    resumed = loader(make(cb))
    resumed.load_state_dict(state)
    tail = [(idx.tolist(), w.tolist()) for _x, idx, w in resumed]
    assert [b for b, _ in tail] == [b for b, _, _ in expected[20:30]]
    for (_, w), (_, w_exp, _) in zip(tail, expected[20:30], strict=True):
        assert w == pytest.approx(w_exp, rel=1e-6)
    # the callback ran only for the selections after the save
    assert cb.calls - made_before == expected[29][2] - made_before > 0
