"""CrestBatchSampler inside PyTorch Lightning and Hugging Face Accelerate training loops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CraigBatchSampler,
    CrestBatchSampler,
    GradientProxyCallback,
    KCenterBatchSampler,
    QuadraticLossMonitor,
    WithWeights,
)

N, BATCH, BUDGET = 600, 16, 0.2  # ceil(0.2 · 600 / 16) = 8 batches per epoch


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, y)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def crest(ds: TensorDataset, model: nn.Module, **kw: Any) -> CrestBatchSampler:
    proxies = GradientProxyCallback(model, ds)
    monitor = QuadraticLossMonitor(model, proxies.per_sample_loss)
    return CrestBatchSampler(
        ds,
        BATCH,
        callback=proxies,
        monitor=monitor,
        labels=ds.tensors[1],
        budget=BUDGET,
        seed=0,
        **kw,
    )


def test_lightning_trainer_with_crest_batches() -> None:
    lightning = pytest.importorskip("lightning")
    ds = data()

    class Module(lightning.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = net()
            self.sampler: CrestBatchSampler | None = None
            self.losses: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y, w = batch
            loss = (w * F.cross_entropy(self(x), y, reduction="none")).mean()
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.5)

        def train_dataloader(self) -> DataLoader[Any]:
            self.sampler = crest(ds, self)
            return DataLoader(WithWeights(ds), batch_sampler=self.sampler)

    module = Module()
    trainer = lightning.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,  # the sampler shards itself (num_replicas/rank)
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert module.sampler is not None
    assert trainer.num_training_batches == len(module.sampler) == 8
    assert trainer.global_step == 3 * 8
    assert module.sampler.telemetry.num_selections >= 1
    assert sum(module.losses[-4:]) < sum(module.losses[:4])


def test_accelerate_pattern_keeps_the_sampler_out_of_prepare() -> None:
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    ds = data()
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Accelerate shards batch samplers itself; CrestBatchSampler already yields this process's
    # share, so the loader is built here and not passed to `prepare`.
    sampler = crest(
        ds, model, num_replicas=accelerator.num_processes, rank=accelerator.process_index
    )
    loader = DataLoader(WithWeights(ds), batch_sampler=sampler)
    losses = []
    for _epoch in range(3):
        for x, y, w in loader:
            x, y, w = (t.to(accelerator.device) for t in (x, y, w))
            loss = (w * F.cross_entropy(model(x), y, reduction="none")).mean()
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
    assert len(losses) == 3 * len(sampler) == 24
    assert sampler.telemetry.num_selections >= 1
    assert sum(losses[-4:]) < sum(losses[:4])


@pytest.mark.parametrize("kind", [CrestBatchSampler, CraigBatchSampler, KCenterBatchSampler])
def test_lightning_recreating_the_batch_sampler_gets_the_flag_to_set(kind: Any) -> None:
    # Lightning with devices=2 and its default use_distributed_sampler=True re-creates a batch
    # sampler as cls(DistributedSampler, batch_size=..., drop_last=...): the message must say
    # what to do, not "missing 1 required keyword-only argument: 'callback'"
    pytest.importorskip("lightning")
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    ds = TensorDataset(torch.randn(300, 3), torch.arange(300))
    sampler = kind(ds, 10, callback=lambda i: torch.randn(len(i), 3))
    loader = DataLoader(WithWeights(ds), batch_sampler=sampler)
    with pytest.raises(TypeError, match=r"Trainer\(use_distributed_sampler=False\)"):
        _update_dataloader(loader, DistributedSampler(ds, num_replicas=2, rank=0))
    with pytest.raises(TypeError, match=r"callback is required \(e\.g\. GradientProxyCallback"):
        kind(ds, 10)
