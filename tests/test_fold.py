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

from coreset_sampler import GradientProxyCallback, _fold
from coreset_sampler._fold import FoldedForward, _close, find_pairs

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
    """A convolution whose output also bypasses its BatchNorm (that pair cannot fold), then a
    pair that can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        z = self.bn2(self.conv2(self.bn(y) + y))
        out: Tensor = self.fc(z.mean(dim=(2, 3)))
        return out


class _Reused(nn.Module):
    """One convolution called twice, once before its BatchNorm: it cannot fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc((self.bn(self.conv(x)) + self.conv(x)).mean(dim=(2, 3)))
        return out


class _Switch(nn.Module):
    """Python state the trace would bake in: a temperature, a BatchNorm that can be skipped,
    an attribute set by every forward, a convolution called by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.temperature, self.use_bn, self.scale_first = 1.0, True, False
        self.last: Any = "unset"

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(input=x)
        if self.scale_first:
            y = 2.0 * y
        h = (self.bn(y) if self.use_bn else y).mean(dim=(2, 3))
        self.last = h
        out: Tensor = self.fc(h) / self.temperature
        return out


class _Head(nn.Linear):
    """The user's own head class (tracing goes into it)."""


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


def _x(shape: tuple[int, ...]) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=DT)


def _class_calls(monkeypatch: pytest.MonkeyPatch, *classes: type[nn.Module]) -> list[str]:
    """Count the calls of these classes' own ``forward``."""
    calls: list[str] = []
    for cls in classes:
        own = cls.forward

        def counted(self: nn.Module, *a: Any, _own: Any = own, **k: Any) -> Any:
            calls.append(type(self).__name__)
            return _own(self, *a, **k)

        monkeypatch.setattr(cls, "forward", counted)
    return calls


CASES: list[tuple[Any, tuple[int, ...], int]] = [
    (_Plain, (5, 2, 6, 6), 2),
    (lambda: _Plain(bias=True, affine=False), (5, 2, 6, 6), 2),
    (_Residual, (5, 2, 6, 6), 3),
    (_OneD, (5, 2, 8), 1),
    (_ThreeD, (5, 2, 3, 3, 3), 1),
    (_Shared, (5, 2, 6, 6), 1),
]


@pytest.mark.parametrize(("make", "shape", "pairs"), CASES)
def test_the_folded_forward_gives_the_models_outputs(
    make: Any, shape: Any, pairs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _trained(make(), shape)
    x = _x(shape)
    run = FoldedForward()
    with torch.no_grad():
        want = model(x)
        first = run(model, x)  # (checked against the model)
        calls = _class_calls(monkeypatch, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
        second = run(model, x)
    assert len(run.pairs(model)) == pairs
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(calls) == batchnorms - pairs  # (a folded BatchNorm does not normalise)
    torch.testing.assert_close(first, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, want, rtol=1e-12, atol=1e-12)


def test_the_fold_follows_the_current_weights_statistics_and_modules() -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    states = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        run(model, x)
        run(model, x)
        for k, v in model.state_dict().items():  # (the fold changed nothing of the model's)
            assert torch.equal(v, states[k]), k
        assert not any(m.training for m in model.modules())
        assert not any("forward" in m.__dict__ for m in model.modules())
        model.features[0].weight.mul_(1.5)
        model.features[1].running_var.add_(0.3)
        model.features[4].bias.sub_(0.2)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        model.features[3].weight.data = 0.5 * model.features[3].weight  # (no version bump)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        model.features[4] = nn.BatchNorm2d(6).to(DT).eval()  # (a module replaced: found anew)
        model.features[4].running_mean.fill_(0.5)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        run(model, x)
        assert len(run.pairs(model)) == 2
        model.to(torch.float32)  # (a dtype change: the fold computes in the weights' dtype)
        torch.testing.assert_close(run(model, x.float()), model(x.float()))
    assert len(run.pairs(model)) == 2


def test_python_state_and_keywords_stay_live() -> None:
    """The model's own code runs: an attribute changed later counts, an attribute its forward
    sets is set, a BatchNorm skipped later is not applied by the folded convolution, and the
    trace's symbolic values never stay in the model."""
    model = _trained(_Switch(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    assert len(find_pairs(model)) == 1 and model.last == "unset"  # (restored after the trace)
    with torch.no_grad():
        run(model, x)
        run(model, x)
        assert len(run.pairs(model)) == 1 and isinstance(model.last, Tensor)
        model.temperature = 3.0
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        model.scale_first = True  # (the BatchNorm gets another tensor: it normalises it, and
        assert torch.equal(run(model, x), model(x))  # the pass runs again, unfolded)
        assert run.pairs(model) == []  # (and the pair is not folded again)
        model.scale_first = False
        run = FoldedForward()
        run(model, x)
        assert len(run.pairs(model)) == 1
        model.use_bn = False  # (the folded output would reach the head: run again, unfolded)
        assert torch.equal(run(model, x), model(x))
        assert run.pairs(model) == []


def test_hooks_on_a_pair_keep_it_unfolded_and_pre_hooks_are_honoured() -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    seen: list[Tensor] = []
    with torch.no_grad():
        run(model, x)
        handle = model.features[1].register_forward_hook(lambda m, a, o: seen.append(o))
        assert len(run.pairs(model)) == 1  # (the hooked BatchNorm's pair is left as it is)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        want = model.features[1](model.features[0](x))
        torch.testing.assert_close(seen[0], want, rtol=1e-12, atol=1e-12)
        handle.remove()
        assert len(run.pairs(model)) == 2
        handle = model.features[3].register_forward_hook(lambda m, a, o: seen.append(o))
        assert len(run.pairs(model)) == 1  # (a hooked convolution too)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(seen[-1], seen[-2], rtol=1e-12, atol=1e-12)  # (its own)
        handle.remove()
        conv = model.features[3]  # (a forward of the instance's own: left alone, kept)
        conv.forward = lambda input: 2.0 * nn.Conv2d.forward(conv, input)
        assert len(run.pairs(model)) == 1
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        assert "forward" in conv.__dict__
        del conv.forward
        # a pre-hook that sets the weight (as weight_norm's does) runs before the fold reads it
        conv = model.features[0]
        base = conv.weight.detach().clone()
        del conv.weight
        conv.register_forward_pre_hook(lambda m, a: setattr(m, "weight", 2.0 * base))
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        assert len(run.pairs(model)) == 2


@pytest.mark.parametrize("make", [_Branchy, _Reused, lambda: nn.Sequential(nn.Linear(4, 3))])
def test_a_model_it_cannot_fold_runs_as_it_is(make: Any) -> None:
    model = _trained(make(), (5, 2, 6, 6))
    shape = (5, 4) if isinstance(model, nn.Sequential) else (5, 2, 6, 6)
    x = _x(shape)
    run = FoldedForward()
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(run(model, x), model(x))
    assert run.pairs(model) == [] and find_pairs(model) == []


def test_a_model_without_a_pair_to_fold_is_not_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Tracing runs the model's forward on symbolic values: only where a fold may apply.)"""
    traced: list[nn.Module] = []
    trace = fx.Tracer.trace

    def recording(self: fx.Tracer, model: nn.Module, *a: Any, **k: Any) -> fx.Graph:
        traced.append(model)
        return trace(self, model, *a, **k)

    monkeypatch.setattr(fx.Tracer, "trace", recording)
    one_kind = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.BatchNorm1d(4))  # (no pair)
    for model in (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), one_kind):
        assert find_pairs(model) == []
    assert traced == []
    plain = _Plain()
    assert len(find_pairs(plain)) == 2 and traced == [plain]


def test_a_subclassed_batchnorm_is_not_folded() -> None:
    model = _Plain()
    model.features[1] = _DoubledBatchNorm(4)
    model = _trained(model, (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    with torch.no_grad():
        run(model, x)
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert len(run.pairs(model)) == 1  # (only the second pair)


def test_a_fold_that_disagrees_or_fails_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    real = _fold.fold_conv_bn

    def scaled(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
        weight, bias = real(conv, bn)
        return 1.01 * weight, bias

    for wrong in (scaled, lambda c, b: 1 / 0):
        monkeypatch.setattr(_fold, "fold_conv_bn", wrong)
        run = FoldedForward()
        with torch.no_grad():
            for _ in range(2):
                assert torch.equal(run(model, x), model(x))
        assert run.pairs(model) == []
        assert not any("forward" in m.__dict__ for m in model.modules())


def test_the_check_compares_every_entry() -> None:
    w = torch.tensor([[1.0, float("nan"), float("inf")], [2.0, 3.0, -float("inf")]])
    assert _close(w.clone(), w)
    assert _close(w + 1e-6, w)
    assert not _close(w * 1.01, w)  # (a wrong fold, though some outputs are not finite)
    assert not _close(w.nan_to_num(), w)
    flipped = w.clone()
    flipped[0, 2] = -float("inf")
    assert not _close(flipped, w)
    assert not _close(w.double(), w) and not _close(w[:1], w) and not _close((w,), w)
    assert _close(torch.full((2,), float("nan")), torch.full((2,), float("nan")))
    half = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert _close(half * (1 + 2**-8), half) and not _close(half * 1.2, half)


def test_the_callback_folds_its_proxy_pass_only() -> None:
    """Proxies and losses with the fold equal those without; the head's record still serves
    the closed-form terms without another forward pass; ``per_sample_loss`` runs the model;
    a head of the user's own class still reports its features."""
    model = _trained(_Residual(), (5, 2, 6, 6))
    head = _Head(4, 3).to(DT)
    head.load_state_dict(model.fc.state_dict())
    model.fc = head
    g = torch.Generator().manual_seed(2)
    ds = TensorDataset(torch.randn(40, 2, 6, 6, generator=g, dtype=DT), torch.randint(0, 3, (40,)))
    folded = GradientProxyCallback(model, ds, batch_size=16, proxy="last_layer")
    plain = GradientProxyCallback(
        model, ds, batch_size=16, proxy="last_layer", fold_batchnorm=False
    )
    idx = list(range(0, 40, 2))
    p1, l1 = folded.proxies_and_losses(idx)
    p2, l2 = plain.proxies_and_losses(idx)
    p3, _ = folded.proxies_and_losses(idx)  # (after the check)
    assert len(folded._folded.pairs(model)) == 3 and plain._folded.pairs(model) == []
    for p in (p1, p3):
        torch.testing.assert_close(p, p2, rtol=1e-10, atol=1e-12)
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


def test_global_hooks_and_mixed_dtypes() -> None:
    """A global forward hook sees every module's own output (no fold then); a bfloat16
    convolution before a float32 BatchNorm folds in the convolution's dtype."""
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    seen: list[Tensor] = []

    def hook(m: nn.Module, a: Any, out: Any) -> None:
        if m is model.features[0]:
            seen.append(out)

    with torch.no_grad():
        run(model, x)
        handle = nn.modules.module.register_module_forward_hook(hook)
        try:
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        finally:
            handle.remove()
        assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # (the raw convolution twice)
        mixed = _trained(_Plain(), (5, 2, 6, 6)).to(torch.bfloat16)
        for i in (1, 4):  # (BatchNorms kept in float32, as mixed-precision recipes do)
            mixed.features[i].float()
        xb = x.to(torch.bfloat16)
        want = mixed(xb)
        run = FoldedForward()
        run(mixed, xb)
        got = run(mixed, xb)
        assert len(run.pairs(mixed)) == 2 and got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


class _Modes(nn.Module):
    """Uses of a convolution's output that only show at run time (the trace saw none)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.mode = "plain"

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.mode == "in_place":
            y.add_(1.0)
        if self.mode == "relu_":
            y = torch.relu_(y)
        if self.mode == "stored":
            h = y
        else:
            h = self.bn(self.conv(2.0 * x)) + self.bn(y) if self.mode == "twice" else self.bn(y)
        if self.mode == "reuse":
            h = h + y
        if self.mode == "metadata" and (y.shape[1], y.size(1), y.dim()) != (4, 4, 4):
            raise AssertionError  # (reading the shape is no use of the values)
        if self.mode == "metadata" and not (y.numel() and y.is_contiguous() and y.ndim == 4):
            raise AssertionError
        if self.mode == "kept":  # (the raw output kept past its BatchNorm)
            self.prev = y
        if self.mode == "returned":
            return y
        if self.mode == "stored":  # (the output kept aside, its BatchNorm skipped)
            self.stored = y
            return self.fc(torch.zeros(x.shape[0], 4, dtype=x.dtype))
        out: Tensor = self.fc(h.mean(dim=(2, 3)))
        return out


@pytest.mark.parametrize(
    "mode", ["in_place", "relu_", "twice", "reuse", "returned", "stored", "kept", "metadata"]
)
def test_a_folded_output_used_elsewhere_at_run_time_is_caught(mode: str) -> None:
    model = _trained(_Modes(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    with torch.no_grad():
        run(model, x)
        run(model, x)
        assert len(run.pairs(model)) == 1
        model.mode = mode
        got = run(model, x)
        if mode in ("stored", "kept"):  # (the pass ran again as the model: its raw output)
            kept = model.stored if mode == "stored" else model.prev
            torch.testing.assert_close(kept, model.conv(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, model(x), rtol=1e-12, atol=1e-12)
        assert len(run.pairs(model)) == (1 if mode == "metadata" else 0)


def test_hooks_that_would_see_a_folded_value_keep_the_pair_unfolded() -> None:
    """On the BatchNorm (a pre-hook), or on a module holding the BatchNorm but not its
    convolution: they see the convolution's own output."""
    model = _trained(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        ),
        (5, 2, 6, 6),
    )  # fmt: skip
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    seen: list[Tensor] = []
    with torch.no_grad():
        run(model, x)
        assert len(run.pairs(model)) == 2
        raw = model[0](x)
        for module in (model[1], model[1][0]):
            handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            assert len(run.pairs(model)) == 1
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(seen[-2], raw, rtol=1e-12, atol=1e-12)
            handle.remove()
        assert len(run.pairs(model)) == 2


def test_a_pair_folded_later_is_checked_first(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    real = _fold.fold_conv_bn

    def wrong_second(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
        weight, bias = real(conv, bn)
        return (1.5 * weight if conv is model.features[3] else weight), bias

    monkeypatch.setattr(_fold, "fold_conv_bn", wrong_second)
    run = FoldedForward()
    with torch.no_grad():
        handle = model.features[4].register_forward_hook(lambda *_: None)
        run(model, x)
        assert len(run.pairs(model)) == 1  # (the first pair, checked)
        handle.remove()
        assert torch.equal(run(model, x), model(x))  # (checked now, and wrong: no fold)
        assert run.pairs(model) == []


def test_the_trace_leaves_the_models_containers_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = _fold.fold_conv_bn

    def counted(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
        calls.append(1)
        return real(conv, bn)

    monkeypatch.setattr(_fold, "fold_conv_bn", counted)

    class Recording(_Plain):
        def __init__(self) -> None:
            super().__init__()
            self.acts: list[Any] = ["before"]
            self.seen: dict[str, Any] = {"before": 0}

        def forward(self, x: Tensor) -> Tensor:
            h = self.features(x)
            self.acts.append(h)
            self.seen["h"] = h
            out: Tensor = self.fc(h)
            return out

    model = _trained(Recording(), (5, 2, 6, 6))
    assert len(find_pairs(model)) == 2
    assert model.acts == ["before"] and model.seen == {"before": 0}  # (no symbolic value left)
    run = FoldedForward()
    x = _x((5, 2, 6, 6))
    with torch.no_grad():
        for _ in range(3):
            run(model, x)
    assert len(model.acts) == 1 + 3 + 1 and len(calls) == 2  # (the folded weights made once)


def test_the_folded_weights_follow_a_parameter_replaced_by_another() -> None:
    """(A new tensor can get a freed one's id, version and memory: the cache holds its sources
    weakly.)"""
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    conv = model.features[0]
    with torch.no_grad():
        for k in range(100):
            weight = conv.weight.detach().clone()
            del conv.weight
            conv.weight = nn.Parameter((1.0 + 0.1 * (k % 3)) * weight)
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert len(run.pairs(model)) == 2


def test_scripted_modules_stop_the_fold_and_other_gaps() -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    model.fc = torch.jit.script(model.fc)  # type: ignore[assignment]
    assert find_pairs(model) == []  # (TorchScript would use folded outputs unseen)
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    bn = model.features[1]
    with torch.no_grad():
        run(model, x)
        bn.forward = lambda input: 2.0 * nn.BatchNorm2d.forward(bn, input)  # (its own forward)
        assert len(run.pairs(model)) == 1
        torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        assert "forward" in bn.__dict__
        del bn.forward
        seen: list[Tensor] = []
        handle = nn.modules.module.register_module_forward_pre_hook(
            lambda m, a: seen.append(a[0]) if m is bn else None
        )
        try:
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
        finally:
            handle.remove()
        torch.testing.assert_close(seen[0], model.features[0](x), rtol=1e-12, atol=1e-12)


def test_one_failed_pass_does_not_end_the_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained(_Plain(), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    real = _fold.fold_conv_bn
    failures = [1]

    def flaky(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
        if failures:
            failures.pop()
            raise RuntimeError("out of memory, once")
        return real(conv, bn)

    monkeypatch.setattr(_fold, "fold_conv_bn", flaky)
    run = FoldedForward()
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert len(run.pairs(model)) == 2


def test_a_model_that_returns_its_last_batchnorm_keeps_the_fold() -> None:
    """(Its output is a view of the folded output: held, and rightly.)"""
    model = _trained(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)), (5, 2, 6, 6))
    x = _x((5, 2, 6, 6))
    run = FoldedForward()
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(run(model, x), model(x), rtol=1e-12, atol=1e-12)
    assert len(run.pairs(model)) == 1
