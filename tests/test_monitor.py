"""Tests for coreset_sampler.monitor: Hutchinson, HVPs, the quadratic model, rho, T1, state."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from coreset_sampler.monitor import QuadraticLossMonitor
from coreset_sampler.proxies import GradientProxyCallback

DT = torch.float64


class _Quadratic(nn.Module):
    """Per-sample loss ℓ_i(w) = c_i + s·(bᵀw + ½ wᵀAw): same gradient for every example."""

    def __init__(self, a: Tensor, b: Tensor, c: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(len(b), dtype=DT))
        self.a, self.b, self.c = a, b, c
        self.scale = 1.0
        self.calls: list[tuple[list[int], bool, bool]] = []  # indices, grad enabled, training

    def loss_fn(self, indices: Sequence[int]) -> Tensor:
        idx = list(indices)
        self.calls.append((idx, torch.is_grad_enabled(), self.training))
        q = self.b @ self.w + 0.5 * self.w @ (self.a @ self.w)
        return self.c[idx] + self.scale * q

    def exact(self, w: Tensor, idx: Sequence[int]) -> float:
        q = self.b @ w + 0.5 * w @ (self.a @ w)
        return float(self.c[list(idx)].mean() + self.scale * q)


def _quadratic(d: int, *, diagonal: bool, seed: int = 0) -> _Quadratic:
    g = torch.Generator().manual_seed(seed)
    if diagonal:
        a = torch.diag(torch.rand(d, generator=g, dtype=DT) * 2 + 0.5)
    else:
        m = torch.randn(d, d, generator=g, dtype=DT)
        a = m @ m.T / d + torch.diag(torch.rand(d, generator=g, dtype=DT) + 2.0)
    b = torch.randn(d, generator=g, dtype=DT)
    c = torch.rand(50, generator=g, dtype=DT) + 10.0
    return _Quadratic(a, b, c)


CORESETS = [list(range(0, 8)), list(range(8, 16))]
WEIGHTS = [torch.linspace(0.5, 1.5, 8, dtype=DT), torch.ones(8, dtype=DT)]
CHECK = list(range(20, 50))


def _set(model: _Quadratic, w: Tensor) -> None:
    with torch.no_grad():
        model.w.copy_(w)


def _exact_monitor(model: _Quadratic, **kw: Any) -> QuadraticLossMonitor:
    return QuadraticLossMonitor(model, model.loss_fn, beta1=0.0, beta2=0.0, eps=1e-12, **kw)


# --------------------------------------------------------------------------- quadratic model


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 1000),
    scale=st.floats(1e-3, 2.0),
    hvp=st.sampled_from(["jvp", "double_backward"]),
)
def test_diagonal_quadratic_has_zero_rho_for_any_delta(seed: int, scale: float, hvp: str) -> None:
    model = _quadratic(6, diagonal=True, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    w0 = torch.randn(6, generator=g, dtype=DT)
    _set(model, w0)
    monitor = _exact_monitor(model, hvp=hvp, seed=seed)  # type: ignore[arg-type]
    monitor.anchor(CORESETS, WEIGHTS, CHECK)
    delta = torch.randn(6, generator=g, dtype=DT) * scale
    _set(model, w0 + delta)
    report = monitor.check()
    assert report.rho < 1e-10
    assert not report.reselect
    assert report.loss == pytest.approx(model.exact(w0 + delta, CHECK), rel=1e-12)


def test_diagonal_quadratic_with_parameter_iterable_and_no_module() -> None:
    model = _quadratic(5, diagonal=True)
    _set(model, torch.ones(5, dtype=DT))
    monitor = QuadraticLossMonitor(
        model.parameters(), model.loss_fn, beta1=0.0, beta2=0.0, eps=1e-12
    )
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).hvp == "double_backward"
    _set(model, torch.full((5,), -0.5, dtype=DT))
    assert monitor.check().rho < 1e-10


@pytest.mark.parametrize("hvp", ["jvp", "double_backward"])
def test_non_diagonal_quadratic_error_is_the_off_diagonal_term(hvp: str) -> None:
    d = 6
    model = _quadratic(d, diagonal=False, seed=3)
    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(d, generator=g, dtype=DT)
    _set(model, w0)
    monitor = _exact_monitor(model, num_probes=64, hvp=hvp)  # type: ignore[arg-type]
    monitor.anchor(CORESETS, WEIGHTS, CHECK)
    delta = torch.randn(d, generator=g, dtype=DT) * 0.3
    _set(model, w0 + delta)
    report = monitor.check()
    # β2 = 0: the model's diagonal is |D̂| + ε with D̂² the stored EMA
    d_hat = monitor.state_dict()["exp_hessian_sq"][0].sqrt() + monitor.eps
    a = model.a
    off = a - torch.diag(torch.diag(a))
    off_term = 0.5 * float(delta @ off @ delta)
    diag_err = 0.5 * float(((torch.diag(a) - d_hat) * delta**2).sum())
    assert report.loss - report.predicted == pytest.approx(off_term + diag_err, rel=1e-9, abs=1e-12)
    assert report.rho == pytest.approx(abs(off_term + diag_err) / report.loss, rel=1e-9)
    # the off-diagonal term dominates: the estimate is close to the true diagonal
    assert abs(diag_err) < 0.5 * abs(off_term)


# --------------------------------------------------------------------------- δ from the parameters


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def _net_and_data() -> tuple[_Net, Tensor, Tensor]:
    torch.manual_seed(0)
    net = _Net().to(DT)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (64,), generator=g)
    return net, x, y


def test_delta_after_sgd_momentum_steps_is_the_parameter_difference() -> None:
    net, x, y = _net_and_data()
    cb = GradientProxyCallback(net, lambda i: (x[list(i)], y[list(i)]))
    monitor = QuadraticLossMonitor(
        net, cb.per_sample_loss, beta1=0.0, beta2=0.0, seed=0, curvature="hutchinson"
    )
    net.train()
    coresets = [list(range(0, 16)), list(range(16, 32))]
    weights = [torch.ones(16, dtype=DT), torch.linspace(0.2, 1.8, 16, dtype=DT)]
    check = list(range(32, 64))
    report0 = monitor.anchor(coresets, weights, check)
    w0 = {n: p.detach().clone() for n, p in net.named_parameters()}

    # reference gradient at w0 (eval mode, the anchor's buffers), by torch.func
    def coreset_loss(p: dict[str, Tensor]) -> Tensor:
        total = torch.zeros((), dtype=DT)
        for idx, w in zip(coresets, weights, strict=True):
            out = torch.func.functional_call(net, p, (x[idx],))
            total = total + (w * F.cross_entropy(out, y[idx], reduction="none")).mean()
        return total / len(coresets)

    net.eval()
    g = torch.func.grad(coreset_loss)(dict(w0))
    net.train()
    net.body[1].momentum = 0.0  # keep BN buffers fixed: δ covers parameters only
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(4):
        batch = list(range(step * 16, step * 16 + 16))
        opt.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        opt.step()
    report = monitor.check()
    delta = {n: p.detach() - w0[n] for n, p in net.named_parameters()}
    assert report.delta_norm == pytest.approx(
        math.sqrt(sum(float((d**2).sum()) for d in delta.values())), rel=1e-12
    )
    assert report.delta_norm > 0
    net.eval()
    with torch.no_grad():
        loss_now = float(F.cross_entropy(net(x[check]), y[check]))
    net.train()
    diag = [v.sqrt() + monitor.eps for v in monitor.state_dict()["exp_hessian_sq"]]
    predicted = report0.loss0
    for (name, d), h in zip(delta.items(), diag, strict=True):
        predicted += float((g[name] * d).sum() + 0.5 * (h * d**2).sum())
    assert report.predicted == pytest.approx(predicted, rel=1e-10)
    assert report.loss == pytest.approx(loss_now, rel=1e-12)
    assert report.rho == pytest.approx(abs(loss_now - predicted) / loss_now, rel=1e-8)


@pytest.mark.parametrize("hvp", ["jvp", "double_backward"])
def test_parameter_subset_tracks_only_the_head(hvp: str) -> None:
    net, x, y = _net_and_data()
    cb = GradientProxyCallback(net, lambda i: (x[list(i)], y[list(i)]))
    monitor = QuadraticLossMonitor(
        net.fc.parameters(),
        cb.per_sample_loss,
        module=net,
        beta1=0.0,
        hvp=hvp,  # type: ignore[arg-type]
        curvature="hutchinson",
    )
    idx = list(range(16))
    report = monitor.anchor([idx], [torch.ones(16, dtype=DT)], list(range(16, 48)))
    state = monitor.state_dict()
    assert [tuple(t.shape) for t in state["snapshot"]] == [(3, 8), (3,)]
    assert not any(t.requires_grad for t in state["exp_avg"] + state["exp_hessian_sq"])
    net.eval()
    feats = net.body(x[idx]).detach()
    net.train()
    head = {k: v.detach() for k, v in net.fc.named_parameters()}

    def head_loss(p: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(torch.func.functional_call(net.fc, p, (feats,)), y[idx])

    g = torch.func.grad(head_loss)(head)
    torch.testing.assert_close(state["exp_avg"][0], g["weight"])
    torch.testing.assert_close(state["exp_avg"][1], g["bias"])
    assert report.grad_norm == pytest.approx(
        math.sqrt(float(g["weight"].square().sum() + g["bias"].square().sum())), rel=1e-10
    )


def test_check_evaluates_exactly_the_check_sample_once_without_graph() -> None:
    model = _quadratic(4, diagonal=True)
    monitor = _exact_monitor(model)
    monitor.anchor(CORESETS, WEIGHTS, CHECK)
    assert model.calls[-1] == (CHECK, False, False)  # L_0: check sample, no graph, eval mode
    model.calls.clear()
    monitor.check()
    assert model.calls == [(CHECK, False, False)]
    assert sum(len(c[0]) for c in model.calls) == len(CHECK)


def test_anchor_evaluates_each_coreset_with_graph_and_nothing_else() -> None:
    model = _quadratic(4, diagonal=True)
    monitor = _exact_monitor(model, num_probes=3, hvp="double_backward")
    monitor.anchor(CORESETS, WEIGHTS, CHECK)
    # double backward: one forward per coreset (with graph), then L_0 on the check sample
    assert model.calls == [
        (CORESETS[0], True, False),
        (CORESETS[1], True, False),
        (CHECK, False, False),
    ]


def test_monitor_restores_training_mode_per_submodule_and_evaluates_in_eval() -> None:
    net, x, y = _net_and_data()
    net.train()
    net.body[1].eval()
    flags = [m.training for m in net.modules()]
    seen: list[bool] = []

    def loss_fn(indices: Sequence[int]) -> Tensor:
        seen.append(net.training or net.body[3].training)
        i = list(indices)
        return F.cross_entropy(net(x[i]), y[i], reduction="none")

    monitor = QuadraticLossMonitor(net, loss_fn, seed=0)
    monitor.anchor([list(range(16))], [torch.ones(16, dtype=DT)], list(range(16, 48)))
    assert [m.training for m in net.modules()] == flags
    r1 = monitor.check()
    r2 = monitor.check()
    assert [m.training for m in net.modules()] == flags
    assert seen and not any(seen)
    assert r1.rho == 0.0 and r1.loss == r2.loss  # same V_r, same mode, δ = 0: ρ = 0 exactly


def test_monitor_does_not_touch_the_global_rng() -> None:
    net, x, y = _net_and_data()
    cb = GradientProxyCallback(net, lambda i: (x[list(i)], y[list(i)]))
    monitor = QuadraticLossMonitor(net, cb.per_sample_loss, num_probes=2, curvature="hutchinson")
    state = torch.random.get_rng_state()
    monitor.anchor([list(range(16))], [torch.ones(16, dtype=DT)], list(range(16, 48)))
    monitor.check()
    assert torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------- EMA and T1


def test_ema_carries_over_with_bias_correction() -> None:
    model = _quadratic(3, diagonal=True)
    b1, b2, eps = 0.5, 0.8, 1e-4
    monitor = QuadraticLossMonitor(model, model.loss_fn, beta1=b1, beta2=b2, eps=eps)
    g1 = model.b.clone()
    d1 = torch.diag(model.a).clone()
    r1 = monitor.anchor(CORESETS, WEIGHTS, CHECK)
    assert r1.grad_norm == pytest.approx(float(g1.norm()), rel=1e-12)  # bias-corrected
    model.scale = 3.0
    w = torch.tensor([1.0, -1.0, 2.0], dtype=DT)
    _set(model, w)
    g2 = 3.0 * (model.b + model.a @ w)
    d2 = 3.0 * d1
    r2 = monitor.anchor(CORESETS, WEIGHTS, CHECK)
    g_hat = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2)
    v_hat = (b2 * (1 - b2) * d1**2 + (1 - b2) * d2**2) / (1 - b2**2)
    h_hat = v_hat.sqrt() + eps
    assert r2.grad_norm == pytest.approx(float(g_hat.norm()), rel=1e-12)
    assert r2.hessian_norm == pytest.approx(float(h_hat.norm()), rel=1e-12)
    assert r1.hessian_norm == pytest.approx(float((d1 + eps).norm()), rel=1e-12)


def test_paper_interval_follows_hessian_norm_ratio() -> None:
    model = _quadratic(3, diagonal=True)
    monitor = _exact_monitor(model, interval_multiplier=2.0, max_interval=7, interval_rule="paper")
    assert monitor.interval == 1
    r0 = monitor.anchor(CORESETS, WEIGHTS, CHECK)
    assert r0.interval == 2 == monitor.interval  # ceil(h · ‖H_0‖/‖H_0‖)
    model.scale = 0.3
    r1 = monitor.anchor(CORESETS, WEIGHTS, CHECK)
    assert r1.interval == math.ceil(2.0 * r0.hessian_norm / r1.hessian_norm) == 7
    model.scale = 0.1
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).interval == 7  # capped (would be 20)
    model.scale = 5.0
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).interval == 1
    assert monitor.check().interval == 1


def test_adaptive_interval_doubles_while_checks_hold_and_halves_after_one_fails() -> None:
    """A scripted run: ρ = 0 while the quadratic model is exact (a diagonal quadratic), ρ > 0
    once it is not; T1 doubles at every check that holds (up to max_interval) and halves at a
    check that fails (known before the anchor that follows, which keeps it), whatever the
    curvature does."""
    model = _quadratic(3, diagonal=True)
    monitor = _exact_monitor(model, max_interval=16)
    assert monitor.interval_rule == "adaptive"
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).interval == 1
    seen = []
    for k in range(6):
        model.scale = 1.0  # (the loss stays the model's quadratic: ρ = 0)
        _set(model, torch.full((3,), 0.1 * k, dtype=DT))
        report = monitor.check()
        seen.append((report.interval, report.reselect))
    assert seen == [(1, False), (2, False), (4, False), (8, False), (16, False), (16, False)]
    model.scale = 10.0  # the curvature grows tenfold: the old model fails
    failed = monitor.check()
    assert failed.reselect and failed.interval == 16  # (the interval it was checked at)
    assert monitor.interval == 8  # halved: the sampler draws the next pools for it
    state = monitor.state_dict()
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).interval == 8  # and the anchor keeps it
    again = _exact_monitor(model, max_interval=16)
    again.load_state_dict(state)
    assert again.anchor(CORESETS, WEIGHTS, CHECK).interval == 8  # the failed check was saved
    assert monitor.anchor(CORESETS, WEIGHTS, CHECK).interval == 8  # no failed check since
    three = _exact_monitor(model, interval_multiplier=2.5)
    assert three.anchor(CORESETS, WEIGHTS, CHECK).interval == 3  # starts at ceil(h)


def test_threshold_decides_reselect() -> None:
    model = _quadratic(4, diagonal=False, seed=1)
    monitor = _exact_monitor(model, threshold=0.0)
    monitor.anchor(CORESETS, WEIGHTS, CHECK)
    _set(model, torch.full((4,), 0.5, dtype=DT))
    report = monitor.check()
    assert report.rho > 0.0 and report.reselect
    monitor.threshold = report.rho
    assert not monitor.check().reselect


# --------------------------------------------------------------------------- state


def test_state_round_trip_gives_the_same_rho_and_continues_identically() -> None:
    net, x, y = _net_and_data()
    cb = GradientProxyCallback(net, lambda i: (x[list(i)], y[list(i)]))
    a = QuadraticLossMonitor(net, cb.per_sample_loss, seed=7, num_probes=2, curvature="hutchinson")
    coresets = [list(range(16)), list(range(16, 32))]
    weights = [torch.ones(16, dtype=DT)] * 2
    a.anchor(coresets, weights, list(range(32, 64)))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.05)
    state = a.state_dict()
    b = QuadraticLossMonitor(
        net, cb.per_sample_loss, seed=123, num_probes=2, curvature="hutchinson"
    )
    b.load_state_dict(state)
    ra, rb = a.check(), b.check()
    assert ra.rho == rb.rho and ra.predicted == rb.predicted and ra.rho > 0
    # fresh tensors: mutating the returned state changes nothing
    state["exp_avg"][0].add_(1.0)
    state["snapshot"][0].add_(1.0)
    assert a.check().rho == ra.rho
    # the probe stream continues identically after a reload
    b.load_state_dict(a.state_dict())
    a2, b2 = a.anchor(coresets, weights, [1, 2, 3]), b.anchor(coresets, weights, [1, 2, 3])
    assert a2.hessian_norm == b2.hessian_norm and a2.interval == b2.interval


def test_state_dict_before_anchor_round_trips() -> None:
    model = _quadratic(3, diagonal=True)
    a = _exact_monitor(model)
    b = _exact_monitor(model)
    b.load_state_dict(a.state_dict())
    assert b.interval == 1 and b.num_anchors == 0
    with pytest.raises(RuntimeError, match=r"check\(\) called before anchor\(\)"):
        b.check()


# --------------------------------------------------------------------------- fallback


class _SquareOldStyle(torch.autograd.Function):
    """Old-style autograd.Function: torch.func transforms refuse it (no setup_context)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _OldStyleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=DT))
        self.a = torch.tensor([1.0, 2.0, 3.0], dtype=DT)

    def loss_fn(self, indices: Sequence[int]) -> Tensor:
        q = 0.5 * (self.a * _SquareOldStyle.apply(self.w)).sum() + 5.0
        return q.expand(len(indices))


def test_auto_falls_back_to_double_backward(caplog: pytest.LogCaptureFixture) -> None:
    model = _OldStyleModel()
    monitor = QuadraticLossMonitor(model, model.loss_fn, beta1=0.0, beta2=0.0, eps=1e-12)
    with caplog.at_level(logging.WARNING, logger="coreset_sampler.monitor"):
        report = monitor.anchor([[0, 1]], [torch.ones(2, dtype=DT)], [3, 4])
    assert report.hvp == "double_backward"
    assert "forward-mode AD failed" in caplog.text
    assert report.hessian_norm == pytest.approx(float((model.a + 1e-12).norm()), rel=1e-12)
    strict = QuadraticLossMonitor(model, model.loss_fn, hvp="jvp")
    with pytest.raises(RuntimeError):
        strict.anchor([[0, 1]], [torch.ones(2, dtype=DT)], [3, 4])


# --------------------------------------------------------------------------- errors


def test_constructor_errors() -> None:
    model = _quadratic(3, diagonal=True)
    f = model.loss_fn
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (
            TypeError,
            r"threshold should be a real number, but got threshold=True",
            {"threshold": True},
        ),
        (
            ValueError,
            r"threshold should be a finite number >= 0.0, but got threshold=-1",
            {"threshold": -1},
        ),
        (
            ValueError,
            r"interval_multiplier should be a finite number > 0.0",
            {"interval_multiplier": 0},
        ),
        (ValueError, r"beta1 should be in \[0, 1\), but got beta1=1.0", {"beta1": 1.0}),
        (
            ValueError,
            r"beta2 should be in \[0, 1\), but got beta2=-0.1",
            {"beta2": -0.1},
        ),
        (ValueError, r"eps should be a finite number > 0.0, but got eps=0", {"eps": 0}),
        (
            TypeError,
            r"num_probes should be a positive integer value, but got num_probes=True",
            {"num_probes": True},
        ),
        (
            ValueError,
            r"num_probes should be a positive integer value, but got num_probes=0",
            {"num_probes": 0},
        ),
        (
            ValueError,
            r"max_interval should be a positive integer value, but got max_interval=0",
            {"max_interval": 0},
        ),
        (
            ValueError,
            r"hvp should be one of \('auto', 'jvp', 'double_backward'\), but got hvp='fd'",
            {"hvp": "fd"},
        ),
        (
            ValueError,
            r"pass seed or generator, not both",
            {"seed": 1, "generator": torch.Generator()},
        ),
        (TypeError, r"generator should be a torch.Generator, but got int", {"generator": 3}),
        (
            TypeError,
            r"seed should be a non-negative integer value, but got seed=False",
            {"seed": False},
        ),
        (TypeError, r"module should be an nn.Module, but got str", {"module": "m"}),
        (
            ValueError,
            r"params is a module; module=, if given, should be the same one",
            {"module": nn.Linear(1, 1)},
        ),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg):
            QuadraticLossMonitor(model, f, **kw)
    with pytest.raises(TypeError, match=r"loss_fn should be callable, but got int"):
        QuadraticLossMonitor(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"params is empty: nothing to track"):
        QuadraticLossMonitor([], f)
    with pytest.raises(TypeError, match=r"params should hold tensors, but got int"):
        QuadraticLossMonitor([1], f)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"params should be an nn.Module or an iterable"):
        QuadraticLossMonitor(3, f)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"floating tensors that require grad.*requires_grad=False"
    ):
        QuadraticLossMonitor([torch.zeros(2)], f)
    with pytest.raises(ValueError, match=r"not parameters of module \(shapes \[\(2,\)\]\)"):
        QuadraticLossMonitor([nn.Parameter(torch.zeros(2))], f, module=model)
    with pytest.raises(ValueError, match=r"hvp='jvp' needs the model"):
        QuadraticLossMonitor(model.parameters(), f, hvp="jvp")


def test_anchor_and_check_errors_name_the_call() -> None:
    model = _quadratic(3, diagonal=True)
    m = _exact_monitor(model)
    ones = torch.ones(8, dtype=DT)
    with pytest.raises(ValueError, match=r"coresets is empty"):
        m.anchor([], [], CHECK)
    with pytest.raises(TypeError, match=r"coresets should be a sequence of index lists"):
        m.anchor("abc", [ones], CHECK)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"weights should be a sequence of 1-D tensors"):
        m.anchor(CORESETS, torch.ones(2, 8), CHECK)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"weights should have one tensor per coreset \(2\), but got 1"
    ):
        m.anchor(CORESETS, [ones], CHECK)
    with pytest.raises(
        ValueError, match=r"weights\[1\] should have shape \(8,\) to match coresets\[1\]"
    ):
        m.anchor(CORESETS, [ones, torch.ones(7, dtype=DT)], CHECK)
    with pytest.raises(TypeError, match=r"weights\[0\] should be a floating tensor, but got dtype"):
        m.anchor(CORESETS, [torch.ones(8, dtype=torch.long), ones], CHECK)
    with pytest.raises(ValueError, match=r"weights\[0\] should be finite and non-negative"):
        m.anchor(CORESETS, [-ones, ones], CHECK)
    with pytest.raises(ValueError, match=r"coresets\[1\] is empty"):
        m.anchor([[0], []], [torch.ones(1, dtype=DT), torch.ones(0, dtype=DT)], CHECK)
    with pytest.raises(ValueError, match=r"check_indices is empty"):
        m.anchor(CORESETS, WEIGHTS, [])
    with pytest.raises(RuntimeError, match=r"check\(\) called before anchor\(\)"):
        m.check()

    def short(indices: Sequence[int]) -> Tensor:
        return model.loss_fn(indices)[:-1]

    bad = QuadraticLossMonitor(model, short, hvp="double_backward")
    with pytest.raises(
        ValueError,
        match=r"loss_fn\(indices\) in anchor, coresets\[0\] returned shape \(7,\) for 8 indices",
    ):
        bad.anchor(CORESETS, WEIGHTS, CHECK)
    bad_jvp = QuadraticLossMonitor(model, short)
    with pytest.raises(ValueError, match=r"in anchor, coresets\[0\] returned shape \(7,\)"):
        bad_jvp.anchor(CORESETS, WEIGHTS, CHECK)
    not_tensor = QuadraticLossMonitor(model, lambda i: [0.0] * len(i))  # type: ignore[arg-type,return-value]
    with pytest.raises(
        TypeError, match=r"in anchor, coresets\[0\] should return a floating tensor, but got list"
    ):
        not_tensor.anchor(CORESETS, WEIGHTS, CHECK)

    state = {"short": False}

    def flaky(indices: Sequence[int]) -> Tensor:
        out = model.loss_fn(indices)
        return out[:-1] if state["short"] else out

    mon = QuadraticLossMonitor(model, flaky)
    mon.anchor(CORESETS, WEIGHTS, CHECK)
    state["short"] = True
    with pytest.raises(
        ValueError, match=r"loss_fn\(indices\) in check returned shape \(29,\) for 30 indices"
    ):
        mon.check()
    state["short"] = False
    model.c[CHECK[0]] = math.nan
    try:
        with pytest.raises(ValueError, match=r"in check returned non-finite losses \(mean nan\)"):
            mon.check()
        with pytest.raises(ValueError, match=r"in anchor returned non-finite losses"):
            mon.anchor(CORESETS, WEIGHTS, CHECK)
    finally:
        model.c[CHECK[0]] = 10.0

    def detached(indices: Sequence[int]) -> Tensor:
        return model.loss_fn(indices).detach()

    with pytest.raises(ValueError, match=r"the loss does not require grad"):
        QuadraticLossMonitor(model.parameters(), detached).anchor(CORESETS, WEIGHTS, CHECK)

    kink = _quadratic(3, diagonal=True)  # w = 0: finite loss, non-finite gradient

    def sqrt_abs(indices: Sequence[int]) -> Tensor:
        return (kink.w.abs().sqrt().sum() + 1.0).expand(len(indices))

    with pytest.raises(ValueError, match=r"anchor: the gradient or Hessian diagonal .* not finite"):
        QuadraticLossMonitor(kink, sqrt_abs).anchor(CORESETS, WEIGHTS, [0])


def test_state_errors() -> None:
    model = _quadratic(3, diagonal=True)
    m = _exact_monitor(model)
    with pytest.raises(TypeError, match=r"state should be a mapping, but got list"):
        m.load_state_dict([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"state is missing keys \['check_indices'"):
        m.load_state_dict({k: v for k, v in m.state_dict().items() if k != "check_indices"})
    m.anchor(CORESETS, WEIGHTS, CHECK)
    state = m.state_dict()
    state["snapshot"] = [torch.zeros(4, dtype=DT)]
    with pytest.raises(
        ValueError, match=r"state\['snapshot'\]\[0\] should have shape \(3,\), but got \(4,\)"
    ):
        m.load_state_dict(state)
    state["snapshot"] = []
    with pytest.raises(ValueError, match=r"state\['snapshot'\] should be a list of 1 tensors"):
        m.load_state_dict(state)


# --------------------------------------------------------------------------- the head's closed form


def test_auto_curvature_is_the_heads_closed_form_with_a_proxy_callback() -> None:
    """With GradientProxyCallback.per_sample_loss the monitor models the head (fc) only, with
    the exact gradient and Hessian diagonal (torch.func in float64), and the anchor forwards
    only the check sample when the proxy pass just covered the coresets."""
    net, x, y = _net_and_data()
    cb = GradientProxyCallback(net, lambda i: (x[list(i)], y[list(i)]), batch_size=16)
    monitor = QuadraticLossMonitor(net, cb.per_sample_loss, beta1=0.0, beta2=0.0, eps=1e-12)
    coresets = [list(range(0, 16)), list(range(16, 32))]
    weights = [torch.ones(16, dtype=DT), torch.linspace(0.2, 1.8, 16, dtype=DT)]
    check = list(range(32, 64))
    forwards = [0]
    net.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    cb.proxies_and_losses(list(range(40)))  # the selection's proxy pass
    forwards[0] = 0
    report = monitor.anchor(coresets, weights, check)
    assert forwards[0] == 2  # the check sample's L_0 (32 examples, chunks of 16): nothing else
    assert report.hvp == "closed_form"
    assert [tuple(t.shape) for t in monitor.state_dict()["snapshot"]] == [(3, 8), (3,)]

    params = {n: p.detach() for n, p in net.named_parameters()}

    def head_loss(w: Tensor, b: Tensor) -> Tensor:
        total = torch.zeros((), dtype=DT)
        for idx, wt in zip(coresets, weights, strict=True):
            out = torch.func.functional_call(
                net, {**params, "fc.weight": w, "fc.bias": b}, (x[idx],)
            )
            total = total + (wt * F.cross_entropy(out, y[idx], reduction="none")).mean()
        return total / len(coresets)

    net.eval()
    w0, b0 = params["fc.weight"], params["fc.bias"]
    grad = torch.func.grad(head_loss, argnums=(0, 1))(w0, b0)
    flat = torch.cat([w0.reshape(-1), b0])
    dense = torch.func.hessian(lambda v: head_loss(v[:24].reshape(3, 8), v[24:]))(flat)
    net.train()
    assert report.grad_norm == pytest.approx(
        float(torch.cat([g.reshape(-1) for g in grad]).norm()), rel=1e-10
    )
    assert report.hessian_norm == pytest.approx(
        float((dense.diagonal().abs() + 1e-12).norm()), rel=1e-10
    )
    # once the model has changed, the terms come from a fresh forward pass at the new weights
    with torch.no_grad():
        net.fc.weight.add_(0.1)
    forwards[0] = 0
    monitor.anchor(coresets, weights, check)
    assert forwards[0] == 1 + 1 + 2  # each coreset (one chunk of 16) and the check sample


def test_curvature_choices_and_a_head_that_is_not_the_output() -> None:
    net, x, y = _net_and_data()
    load = lambda i: (x[list(i)], y[list(i)])  # noqa: E731
    cb = GradientProxyCallback(net, load)
    whole = QuadraticLossMonitor(net, cb.per_sample_loss, curvature="hutchinson")
    assert sum(t.numel() for t in whole.state_dict()["exp_avg"] or []) == 0  # (before anchor)
    whole.anchor([[0, 1]], [torch.ones(2, dtype=DT)], [2, 3])
    assert len(whole.state_dict()["snapshot"]) == len(list(net.parameters()))
    own = QuadraticLossMonitor(net, lambda i: cb.per_sample_loss(i))  # not the callback's own
    own.anchor([[0, 1]], [torch.ones(2, dtype=DT)], [2, 3])
    assert len(own.state_dict()["snapshot"]) == len(list(net.parameters()))
    mse = GradientProxyCallback(net, load, loss=lambda o, t: ((o - 1.0) ** 2).mean(1))
    with pytest.raises(ValueError, match="curvature='head' needs loss_fn to be the per_sample"):
        QuadraticLossMonitor(net, mse.per_sample_loss, curvature="head")
    with pytest.raises(ValueError, match="curvature='head' needs"):
        QuadraticLossMonitor(
            net.body.parameters(), cb.per_sample_loss, module=net, curvature="head"
        )

    class Scaled(torch.nn.Module):  # the output is not the last nn.Linear's
        def __init__(self) -> None:
            super().__init__()
            self.inner = net

        def forward(self, v: Tensor) -> Tensor:
            return 2.0 * self.inner(v)

    scaled = Scaled()
    cb2 = GradientProxyCallback(scaled, load)
    monitor = QuadraticLossMonitor(scaled, cb2.per_sample_loss)
    with pytest.raises(ValueError, match="the model's output is not the output of its head"):
        monitor.anchor([[0, 1]], [torch.ones(2, dtype=DT)], [2, 3])
