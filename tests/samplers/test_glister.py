"""GlisterBatchSampler and its greedy: against a plain loop with autograd, in DataLoader
workers, on resume, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import GlisterBatchSampler, WithWeights
from coreset_sampler.samplers.glister import glister_greedy

from ._helpers import stream

C = 4


def logit_grads(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C, (n,), generator=g)
    return torch.softmax(logits, 1) - F.one_hot(labels, C).double()


def validation_set(v: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, C, generator=g, dtype=torch.float64), torch.randint(
        0, C, (v,), generator=g
    )


def reference(grads: Tensor, z: Tensor, y: Tensor, k: int, eta: float) -> list[int]:
    """The greedy, plainly: the validation loss gradient with respect to the bias by autograd
    at the current bias, the best-aligned unpicked candidate, a step of -eta along it."""
    b = torch.zeros(C, dtype=torch.float64)
    picks: list[int] = []
    for _ in range(k):
        val_grad = torch.func.grad(lambda bias: F.cross_entropy(z + bias, y))(b)
        score = grads @ val_grad
        score[picks] = -math.inf
        j = int(score.argmax())
        picks.append(j)
        b = b - eta * grads[j]
    return picks


@pytest.mark.parametrize("eta", [0.01, 0.5])
def test_greedy_equals_the_plain_loop_with_autograd(eta: float) -> None:
    grads = logit_grads(80, 0)
    z, y = validation_set(30, 1)
    out = glister_greedy(grads, z, y, 25, eta=eta)
    assert out.indices.tolist() == reference(grads, z, y, 25, eta)
    assert len(set(out.indices.tolist())) == 25


def test_first_order_gain_is_the_validation_loss_decrease_for_small_steps() -> None:
    grads = logit_grads(50, 2)
    z, y = validation_set(20, 3)
    eta = 1e-5
    out = glister_greedy(grads, z, y, 1, eta=eta)
    j = int(out.indices[0])
    before = F.cross_entropy(z, y)
    after = F.cross_entropy(z - eta * grads[j], y)
    assert float(out.gains[0]) == pytest.approx(float(before - after), rel=1e-4)


def make(n: int = 120, **kw: object) -> GlisterBatchSampler:
    grads = logit_grads(n, 4).float()
    val = validation_set(25, 5)
    calls: list[int] = []

    def validation() -> tuple[Tensor, Tensor]:
        calls.append(1)
        return val[0].float(), val[1]

    s = GlisterBatchSampler(
        n, 6, callback=lambda idx: grads[idx], validation=validation, budget=0.25, eta=0.2,
        reselect_every=1, seed=2, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    s.validation_calls = calls  # type: ignore[attr-defined]
    s.table = grads  # type: ignore[attr-defined]
    s.val = val  # type: ignore[attr-defined]
    return s


def test_subset_is_the_greedy_over_all_examples_with_unit_weights() -> None:
    s = make()
    list(s)
    expected = glister_greedy(s.table, s.val[0].float(), s.val[1], 30, eta=0.2)  # type: ignore[attr-defined]
    assert s.coreset == expected.indices.tolist()
    assert bool((s.coreset_weights == 1).all())
    assert len(s.validation_calls) == 1  # type: ignore[attr-defined]
    assert len(s) == math.ceil(0.25 * 120 / 6)


def test_dataloader_workers_and_mid_epoch_resume() -> None:
    n = 120
    ds = TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))
    s = make()
    got = []
    for epoch in range(2):
        s.set_epoch(epoch)
        loader = DataLoader(WithWeights(ds), batch_sampler=s, num_workers=2)
        got.extend(x[:, 0].long().tolist() for x, _, _ in loader)
    direct = make()
    expected = stream(direct) + stream(direct)
    assert got == [b for b, _ in expected]
    a = make()
    list(a)
    it = iter(a)
    head = [[int(i) for i in next(it)] for _ in range(2)]
    b = make()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    tail = [[int(i) for i in batch] for batch in b]
    assert head + tail == [x for x, _ in expected[len(a) :]]
    assert b.validation_calls == []  # type: ignore[attr-defined]


def test_errors() -> None:
    grads = logit_grads(60, 6).float()
    with pytest.raises(TypeError, match="validation is required"):
        GlisterBatchSampler(60, 5, callback=lambda idx: grads[idx])
    with pytest.raises(ValueError, match="eta should be in"):
        GlisterBatchSampler(60, 5, callback=lambda idx: grads[idx], validation=lambda: 0, eta=0)
    s = GlisterBatchSampler(
        60, 5, callback=lambda idx: grads[idx], validation=lambda: torch.zeros(3, C)
    )
    with pytest.raises(TypeError, match=r"validation\(\) should return \(logits, labels\)"):
        list(s)
    wrong = (torch.zeros(4, C + 1), torch.zeros(4, dtype=torch.long))
    s = GlisterBatchSampler(60, 5, callback=lambda idx: grads[idx], validation=lambda: wrong)
    with pytest.raises(ValueError, match="same number of classes"):
        list(s)
    with pytest.raises(ValueError, match="class indices"):
        glister_greedy(grads, torch.zeros(2, C), torch.tensor([0, C]), 2, eta=0.1)
    with pytest.raises(ValueError, match="k should be in"):
        glister_greedy(grads, torch.zeros(2, C), torch.tensor([0, 1]), 61, eta=0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        glister_greedy(grads, torch.full((2, C), math.nan), torch.tensor([0, 1]), 2, eta=0.1)
    assert np.isfinite(
        glister_greedy(grads, torch.zeros(2, C), torch.tensor([0, 1]), 2, eta=0.1).gains.numpy()
    ).all()
