"""The README's Python examples run as written (with a tiny model and data set)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_two_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "CrestBatchSampler" in blocks[0] and "greedy_facility_location" in blocks[1]


def test_training_loop_example_runs() -> None:
    g = torch.Generator().manual_seed(0)
    n, classes = 600, 3
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, classes))
    namespace = {
        "model": model,
        "train_set": TensorDataset(x, y),
        "train_labels": y,
        "epochs": 2,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    before = [p.detach().clone() for p in model.parameters()]
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)
    sampler = namespace["sampler"]
    assert len(sampler) == 1  # ceil(0.1 · 600 / 128)
    assert sampler.telemetry.num_selections >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_kernel_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(python_blocks()[1], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.indices.shape == (50, 13)  # type: ignore[attr-defined]
