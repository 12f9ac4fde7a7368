"""What is reproducible in real training, where the selections and checks read the model.

A model-dependent callback and monitor (``GradientProxyCallback`` and ``QuadraticLossMonitor``
on the model being trained) make every selection depend on how far training has gone when the
loader asks the sampler for a batch. With ``num_workers > 0`` the loader asks
``prefetch_factor · num_workers`` batches ahead, so these tests pin down exactly what
``docs/sampler.md`` claims: the same loader settings give the same run; resume is exact with
``num_workers=0`` anywhere, and with workers at epoch boundaries.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    WithWeights,
)

N, BATCH, EPOCHS = 240, 8, 2


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


class Run:
    """A model, its optimizer, and CREST reading that model, built the same way every time."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.data = dataset()
        self.model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.5)
        proxies = GradientProxyCallback(self.model, self.data)
        monitor = QuadraticLossMonitor(self.model, proxies.per_sample_loss, threshold=0.05)
        self.sampler = CrestBatchSampler(
            self.data, BATCH, callback=proxies, monitor=monitor, budget=0.3, seed=0,
            pool_size=24, labels=self.data.tensors[1],
        )  # fmt: skip

    def loader(self, num_workers: int, stateful: bool = False) -> Any:
        kind: Any = DataLoader
        if stateful:
            kind = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader
        return kind(
            WithWeights(self.data, return_index=True), batch_sampler=self.sampler,
            num_workers=num_workers,
        )  # fmt: skip

    def step(self, batch: Any) -> tuple[list[int], list[float]]:
        x, y, w, idx = batch
        loss = (w * F.cross_entropy(self.model(x), y, reduction="none")).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return idx.tolist(), w.tolist()

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        )

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def train(num_workers: int) -> tuple[list[Any], list[torch.Tensor]]:
    run = Run()
    loader = run.loader(num_workers)
    batches = [run.step(b) for _ in range(EPOCHS) for b in loader]
    assert run.sampler.telemetry.num_selections > 2 and run.sampler.telemetry.num_checks > 2
    return batches, [p.detach().clone() for p in run.model.parameters()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_same_loader_settings_give_the_same_run(num_workers: int) -> None:
    first, params = train(num_workers)
    again, params_again = train(num_workers)
    assert again == first
    assert all(torch.equal(a, b) for a, b in zip(params, params_again, strict=True))


def test_resume_mid_epoch_without_workers_continues_identically() -> None:
    expected, params = train(0)
    run = Run()
    loader = run.loader(0, stateful=True)
    seen, it = [], iter(loader)
    for _ in range(5):
        seen.append(run.step(next(it)))
    checkpoint = {**run.state(), "loader": loader.state_dict()}
    del it

    resumed = Run()  # everything rebuilt, as after a restart
    resumed.load(checkpoint)
    loader = resumed.loader(0, stateful=True)
    loader.load_state_dict(checkpoint["loader"])
    seen += [resumed.step(b) for b in loader]  # the rest of epoch 0
    seen += [resumed.step(b) for b in loader]  # epoch 1
    assert seen == expected
    assert all(torch.equal(a, b) for a, b in zip(params, resumed.model.parameters(), strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_at_an_epoch_boundary_continues_identically(num_workers: int) -> None:
    expected, params = train(num_workers)
    run = Run()
    seen = [run.step(b) for b in run.loader(num_workers)]
    checkpoint = {**run.state(), "sampler": copy.deepcopy(run.sampler.state_dict())}

    resumed = Run()
    resumed.load(checkpoint)
    resumed.sampler.load_state_dict(checkpoint["sampler"])
    resumed.sampler.set_epoch(1)
    seen += [resumed.step(b) for b in resumed.loader(num_workers)]
    assert seen == expected
    assert all(torch.equal(a, b) for a, b in zip(params, resumed.model.parameters(), strict=True))
