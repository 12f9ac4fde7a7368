"""A short run from the installed wheel (run it outside the checkout): import, the kernel, and
a few CREST steps in a DataLoader.

    python .ci/smoke.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import coreset_sampler
from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    WithWeights,
    greedy_facility_location,
)

here = Path(coreset_sampler.__file__).resolve()
if "site-packages" not in here.parts:
    sys.exit(f"smoke: coreset_sampler was imported from {here}, not from an installed wheel")
if not (here.parent / "py.typed").is_file():
    sys.exit("smoke: the installed package lacks py.typed")

out = greedy_facility_location(torch.randn(50, 50, 10), 13)
assert out.indices.shape == (50, 13) and bool((out.indices >= 0).all())

g = torch.Generator().manual_seed(0)
x, y = torch.randn(600, 5, generator=g), torch.randint(0, 3, (600,), generator=g)
train_set = TensorDataset(x, y)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
proxies = GradientProxyCallback(model, train_set)
monitor = QuadraticLossMonitor(model, proxies.per_sample_loss)
sampler = CrestBatchSampler(train_set, 32, callback=proxies, monitor=monitor, labels=y, seed=0)
loader = DataLoader(WithWeights(train_set), batch_sampler=sampler)
for epoch in range(2):
    sampler.set_epoch(epoch)
    for xb, yb, w in loader:
        loss = (w * F.cross_entropy(model(xb), yb, reduction="none")).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
assert sampler.telemetry.num_steps == 2 * len(sampler) and sampler.telemetry.num_selections >= 1
print(f"smoke: coreset_sampler {coreset_sampler.__version__} from {here.parent}: {sampler.telemetry}")
