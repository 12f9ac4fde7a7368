"""Tests for the proxy pass's folded forward (coreset_sampler._fold): each eval-mode BatchNorm
after a convolution folded into it gives the model's own outputs, the fold follows the current
weights and statistics, and every model it cannot fold faithfully runs as it is."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils.data import TensorDataset

from coreset_sampler import GradientProxyCallback
from coreset_sampler._fold import FoldedForward, _ConvBatchNorm

DT = torch.float64


class _Plain(nn.Module):
    """Conv-BN-ReLU blocks in a Sequential (the example SmallCNN's shape)."""

    def __init__(self, bias: bool = False, affine: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4, affine=affine), nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6, affine=affine), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.features(x))
        return out


class _Residual(nn.Module):
    """A ResNet block: convolutions and BatchNorms as attributes, a projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.short = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + self.short(x))
        logits: Tensor = self.fc(out.mean(dim=(2, 3)))
        return logits


class _Shared(nn.Module):
    """A convolution whose output also bypasses its BatchNorm: that pair cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        out: Tensor = self.fc((self.bn(y) + y).mean(dim=(2, 3)))
        return out


class _OneD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class _ThreeD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.Flatten(), nn.Linear(4, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class _Branchy(nn.Module):
    """Data-dependent control flow: symbolic tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Plain()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.inner(x) if x.sum() > 0 else -self.inner(x)
        return out


class _DoubledBatchNorm(nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward: not the affine map the fold assumes. (Named
    as if from ``torch.nn``, so that tracing keeps it whole, as it does torch.nn's own
    subclasses, e.g. ``SyncBatchNorm``.)"""

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * super().forward(x)


_DoubledBatchNorm.__module__ = "torch.nn.modules.batchnorm"


def _trained(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``model`` in float64 with non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    model = model.to(DT)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=DT))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.2)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g, dtype=DT))
                    m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=DT))
    return model.eval()


def _folds(run: FoldedForward) -> int:
    assert run._traced is not None
    return sum(isinstance(m, _ConvBatchNorm) for m in run._traced.modules())


CASES: list[tuple[Any, tuple[int, ...], int]] = [
    (_Plain, (5, 2, 6, 6), 2),
    (lambda: _Plain(bias=True, affine=False), (5, 2, 6, 6), 2),
    (_Residual, (5, 2, 6, 6), 3),
    (_OneD, (5, 2, 8), 1),
    (_ThreeD, (5, 2, 3, 3, 3), 1),
]


@pytest.mark.parametrize(("make", "shape", "pairs"), CASES)
def test_the_folded_forward_gives_the_models_outputs(make: Any, shape: Any, pairs: int) -> None:
    model = _trained(make(), shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    run = FoldedForward()
    with torch.no_grad():
        want = model(x)
        first, second = run(model, x), run(model, x)  # (checked, then folded alone)
    assert run.folded(model) and _folds(run) == pairs
    torch.testing.assert_close(first, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, want, rtol=1e-12, atol=1e-12)


def test_the_fold_follows_the_current_weights_statistics_and_modules() -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    run = FoldedForward()
    states = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        run(model, x)
        for k, v in model.state_dict().items():  # (the fold changed nothing of the model's)
            assert torch.equal(v, states[k]), k
        assert not any(m.training for m in model.modules())
        model.features[0].weight.mul_(1.5)
        model.features[1].running_var.add_(0.3)
        model.features[4].bias.sub_(0.2)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        model.features[4] = nn.BatchNorm2d(6).to(DT).eval()  # (a module replaced: traced anew)
        model.features[4].running_mean.fill_(0.5)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert run.folded(model) and _folds(run) == 2
    assert not set(map(id, run._traced.parameters())) - set(map(id, model.parameters()))  # type: ignore[union-attr]


@pytest.mark.parametrize("make", [_Branchy, _Shared, lambda: nn.Sequential(nn.Linear(4, 3))])
def test_a_model_it_cannot_fold_runs_as_it_is(make: Any) -> None:
    model = _trained(make(), (5, 2, 6, 6))
    shape = (5, 4) if isinstance(model, nn.Sequential) else (5, 2, 6, 6)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    run = FoldedForward()
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(run(model, x), model(x))
    assert not run.folded(model) and run._traced is None


def test_a_model_without_a_pair_to_fold_is_not_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Tracing runs the model's forward on symbolic values: only where a fold may apply.)"""
    traced: list[nn.Module] = []
    trace = fx.symbolic_trace

    def recording(model: nn.Module) -> fx.GraphModule:
        traced.append(model)
        return trace(model)

    monkeypatch.setattr(fx, "symbolic_trace", recording)
    one_kind = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.BatchNorm1d(4))  # (no pair)
    for model in (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), one_kind):
        run = FoldedForward()
        x = torch.randn(5, 4) if isinstance(model[0], nn.Linear) else torch.randn(5, 2, 3, 3)
        with torch.no_grad():
            assert torch.equal(run(model.eval(), x), model(x))
        assert not run.folded(model)
    assert traced == []
    plain = _Plain().eval()
    with torch.no_grad():
        FoldedForward()(plain, torch.randn(5, 2, 6, 6))
    assert traced == [plain]


def test_a_subclassed_batchnorm_is_not_folded() -> None:
    model = _Plain()
    model.features[1] = _DoubledBatchNorm(4)
    model = _trained(model, (5, 2, 6, 6))
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    run = FoldedForward()
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert run.folded(model) and _folds(run) == 1  # (only the second pair)


def test_a_fold_that_disagrees_with_the_model_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    monkeypatch.setattr(_ConvBatchNorm, "forward", lambda self, x: 1.01 * self.conv(x))
    run = FoldedForward()
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(run(model, x), model(x))
    assert not run.folded(model)


def test_the_callback_folds_its_proxy_pass_only() -> None:
    """Proxies and losses with the fold equal those without; the head's record still serves
    the closed-form terms without another forward pass; ``per_sample_loss`` runs the model."""
    model = _trained(_Residual(), (5, 2, 6, 6))
    g = torch.Generator().manual_seed(2)
    ds = TensorDataset(torch.randn(40, 2, 6, 6, generator=g, dtype=DT), torch.randint(0, 3, (40,)))
    folded = GradientProxyCallback(model, ds, batch_size=16)
    plain = GradientProxyCallback(model, ds, batch_size=16, fold_batchnorm=False)
    idx = list(range(0, 40, 2))
    p1, l1 = folded.proxies_and_losses(idx)
    p2, l2 = plain.proxies_and_losses(idx)
    assert folded._folded.folded(model) and not plain._folded.folded(model)
    torch.testing.assert_close(p1, p2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-12)
    calls: list[int] = []
    handle = model.fc.register_forward_hook(lambda *_: calls.append(1))
    terms = folded.head_terms(idx[:6], torch.ones(6, dtype=DT))
    want = plain.head_terms(idx[:6], torch.ones(6, dtype=DT))
    assert calls == []  # (both from their records)
    for a, b in zip(terms[0] + terms[1], want[0] + want[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        model.eval()
        loss = folded.per_sample_loss([3, 7])
    handle.remove()
    assert calls == [1]  # (the model itself, once)
    x, y = ds.tensors[0][[3, 7]], ds.tensors[1][[3, 7]]
    assert torch.equal(loss, F.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(TypeError, match="fold_batchnorm"):
        GradientProxyCallback(model, ds, fold_batchnorm=1)  # type: ignore[arg-type]


def test_the_traced_graph_calls_the_folded_modules() -> None:
    """(The fold is in the graph: no BatchNorm is called any more.)"""
    model = _trained(_Plain(), (5, 2, 6, 6))
    run = FoldedForward()
    with torch.no_grad():
        run(model, torch.randn(5, 2, 6, 6, dtype=DT))
    assert isinstance(run._traced, fx.GraphModule)
    called = {n.target for n in run._traced.graph.nodes if n.op == "call_module"}
    assert not any(isinstance(run._traced.get_submodule(t), nn.BatchNorm2d) for t in called)
