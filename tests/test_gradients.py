"""Tests for coreset_sampler.gradients: closed forms against torch.func in float64, the builder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset, TensorDataset

from coreset_sampler.gradients import (
    GradientProxyCallback,
    cross_entropy_logit_grad,
    last_layer_grad,
    logit_grad,
    per_sample_grads,
)

DT = torch.float64


def _reference_ce_grad(
    logits: Tensor, target: Tensor, weight: Tensor | None, smoothing: float
) -> Tensor:
    """vmap(grad) of F.cross_entropy(reduction='none') for one example at a time."""

    def one(z: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(
            z[None], t[None], weight=weight, label_smoothing=smoothing, reduction="none"
        ).sum()

    return vmap(grad(one))(logits, target)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_logit_grad_equals_vmap_grad(
    use_weight: bool, smoothing: float, soft: bool
) -> None:
    g = torch.Generator().manual_seed(0)
    n, c = 9, 5
    logits = torch.randn(n, c, generator=g, dtype=DT) * 3
    weight = torch.rand(c, generator=g, dtype=DT) + 0.2 if use_weight else None
    if soft:
        target = torch.softmax(torch.randn(n, c, generator=g, dtype=DT), dim=1)
    else:
        target = torch.randint(0, c, (n,), generator=g)
    got = cross_entropy_logit_grad(logits, target, weight=weight, label_smoothing=smoothing)
    want = _reference_ce_grad(logits, target, weight, smoothing)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_cross_entropy_logit_grad_plain_is_softmax_minus_onehot() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5]], dtype=DT)
    want = torch.softmax(logits, 1) - torch.tensor([[0.0, 1.0, 0.0]], dtype=DT)
    torch.testing.assert_close(cross_entropy_logit_grad(logits, torch.tensor([1])), want)


def test_cross_entropy_logit_grad_ignore_index_rows_are_zero() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g, dtype=DT)
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    got = cross_entropy_logit_grad(logits, torch.tensor([0, -100, 2, 1]), weight=weight)
    assert torch.equal(got[1], torch.zeros(3, dtype=DT))
    keep = [0, 2, 3]
    want = _reference_ce_grad(logits[keep], torch.tensor([0, 2, 1]), weight, 0.0)
    torch.testing.assert_close(got[keep], want)
    custom = cross_entropy_logit_grad(logits, torch.tensor([0, 7, 2, 1]), ignore_index=7)
    assert torch.equal(custom[1], torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match=r"target contains class -100, outside \[0, 3\)"):
        cross_entropy_logit_grad(logits, torch.tensor([0, -100, 2, 1]), ignore_index=7)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(2, 6),
    smoothing=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_logit_grad_property(n: int, c: int, smoothing: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=DT)
    target = torch.randint(0, c, (n,), generator=g)
    weight = torch.rand(c, generator=g, dtype=DT) + 0.1
    got = cross_entropy_logit_grad(logits, target, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(got, _reference_ce_grad(logits, target, weight, smoothing))


@pytest.mark.parametrize("bias", [True, False])
def test_last_layer_grad_equals_vmap_grad_of_head(bias: bool) -> None:
    torch.manual_seed(0)
    n, d, c = 7, 4, 3
    head = nn.Linear(d, c, bias=bias).to(DT)
    feats = torch.randn(n, d, dtype=DT)
    target = torch.randint(0, c, (n,))
    params = {k: v.detach() for k, v in head.named_parameters()}

    def one(p: dict[str, Tensor], h: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(head, p, (h[None],)), t[None])

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, feats, target)
    want = grads["weight"].reshape(n, -1)
    if bias:
        want = torch.cat([want, grads["bias"]], dim=1)
    logit_g = cross_entropy_logit_grad(head(feats).detach(), target)
    torch.testing.assert_close(last_layer_grad(logit_g, feats, bias=bias), want)


def test_logit_grad_generic_equals_closed_forms() -> None:
    g = torch.Generator().manual_seed(2)
    out = torch.randn(6, 3, generator=g, dtype=DT)
    tgt = torch.randn(6, 3, generator=g, dtype=DT)

    def mse(o: Tensor, t: Tensor) -> Tensor:
        return ((o - t) ** 2).sum(dim=1)

    torch.testing.assert_close(logit_grad(out, tgt, mse, chunk_size=4), 2 * (out - tgt))
    labels = torch.randint(0, 3, (6,), generator=g)

    def ce(o: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(o, t, reduction="none")

    torch.testing.assert_close(logit_grad(out, labels, ce), cross_entropy_logit_grad(out, labels))

    def nested(o: Tensor, t: dict[str, Tensor]) -> Tensor:  # targets as a mapping of tensors
        return ((o - t["mean"]) ** 2 * t["scale"][:, None]).sum(dim=1)

    scale = torch.rand(6, generator=g, dtype=DT)
    got = logit_grad(out, {"mean": tgt, "scale": scale}, nested)
    torch.testing.assert_close(got, 2 * (out - tgt) * scale[:, None])


class _Net(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.body(x)))


def _ce(o: Tensor, t: Tensor) -> Tensor:
    return F.cross_entropy(o, t, reduction="none")


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_per_sample_grads_equals_loop_of_autograd(chunk_size: int | None) -> None:
    torch.manual_seed(0)
    model = _Net().to(DT).eval()
    x = torch.randn(5, 4, dtype=DT)
    y = torch.randint(0, 3, (5,))
    got = per_sample_grads(model, _ce, x, y, chunk_size=chunk_size)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(5):
        loss = _ce(model(x[i : i + 1]), y[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    torch.testing.assert_close(got, torch.stack(rows))
    sub = per_sample_grads(model, _ce, x, y, params=model.fc.parameters())
    by_name = per_sample_grads(model, _ce, x, y, params=["fc.weight", "fc.bias"])
    torch.testing.assert_close(sub, torch.stack(rows)[:, -sub.shape[1] :])
    torch.testing.assert_close(by_name, sub)


# --------------------------------------------------------------------------- builder


class _AugmentedDataset(Dataset[tuple[Tensor, Tensor]]):
    """Draws from the global RNG on every item, like a random augmentation."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i] + 0.0 * torch.rand(()), self.y[i]


def _data(n: int = 20) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def test_builder_logits_and_last_layer_match_closed_forms() -> None:
    torch.manual_seed(0)
    model = _Net(dropout=0.5).to(DT)
    x, y = _data()
    idx = [3, 0, 17, 5, 5, 9, 11]
    weight = torch.tensor([1.0, 0.5, 2.0], dtype=DT)
    cb = GradientProxyCallback(
        model, TensorDataset(x, y), batch_size=3, weight=weight, label_smoothing=0.1
    )
    model.eval()
    with torch.no_grad():
        feats = model.drop(model.body(x[idx]))
        logits = model.fc(feats)
    model.train()
    want = cross_entropy_logit_grad(logits, y[idx], weight=weight, label_smoothing=0.1)
    proxies, losses = cb.proxies_and_losses(idx)
    torch.testing.assert_close(proxies, want)
    torch.testing.assert_close(
        losses,
        F.cross_entropy(logits, y[idx], weight=weight, label_smoothing=0.1, reduction="none"),
    )
    ll = GradientProxyCallback(model, TensorDataset(x, y), proxy="last_layer", bias=False)
    torch.testing.assert_close(
        ll(idx), last_layer_grad(logits.softmax(1) - F.one_hot(y[idx], 3), feats, bias=False)
    )
    assert not model.fc._forward_hooks  # the hook was removed


class _BatchedDataset(TensorDataset):
    """A dataset with ``__getitems__``; counts how it is read."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__(x, y)
        self.batches: list[list[int]] = []
        self.items = 0

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        self.items += 1
        return super().__getitem__(i)

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, ...]]:
        self.batches.append(list(indices))
        return [(self.tensors[0][i], self.tensors[1][i]) for i in indices]


def test_builder_reads_a_batch_at_once_through_getitems() -> None:
    torch.manual_seed(0)
    model = _Net().to(DT).eval()
    x, y = _data()
    ds = _BatchedDataset(x, y)
    cb = GradientProxyCallback(model, ds, batch_size=4)
    got = cb([5, 1, 9, 2, 7, 0])
    assert ds.batches == [[5, 1, 9, 2], [7, 0]] and ds.items == 0
    torch.testing.assert_close(
        got, GradientProxyCallback(model, TensorDataset(x, y))([5, 1, 9, 2, 7, 0])
    )


def test_builder_restores_train_mode_per_submodule_and_rng_state() -> None:
    torch.manual_seed(0)
    model = _Net(dropout=0.5).to(DT)
    model.train()
    model.body[1].eval()  # a mixed state must survive
    flags = [m.training for m in model.modules()]
    x, y = _data()
    cb = GradientProxyCallback(model, _AugmentedDataset(x, y), proxy="last_layer", batch_size=4)
    state = torch.random.get_rng_state()
    cb(list(range(10)))
    cb.per_sample_loss([1, 2, 3])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [m.training for m in model.modules()] == flags
    # the test can fail: loading the same data without the builder moves the RNG
    _AugmentedDataset(x, y)[0]
    assert not torch.equal(torch.random.get_rng_state(), state)


def test_builder_runs_in_eval_mode_under_no_grad() -> None:
    torch.manual_seed(0)
    model = _Net(dropout=0.9).to(DT).train()
    x, y = _data()
    cb = GradientProxyCallback(model, TensorDataset(x, y))
    a, b = cb(range(20)), cb(range(20))
    torch.testing.assert_close(a, b)  # no dropout noise, no batch statistics
    assert not a.requires_grad
    torch.testing.assert_close(cb(range(20))[:5], cb(range(5)))  # BN in eval: per-example


def test_builder_per_sample_loss_has_graph_and_matches() -> None:
    torch.manual_seed(0)
    model = _Net().to(DT).eval()
    x, y = _data()
    cb = GradientProxyCallback(model, TensorDataset(x, y), batch_size=2)
    losses = cb.per_sample_loss([4, 1, 8])
    assert losses.requires_grad
    torch.testing.assert_close(losses, _ce(model(x[[4, 1, 8]]), y[[4, 1, 8]]))
    losses.sum().backward()
    assert model.fc.weight.grad is not None


def test_builder_with_loader_function_and_generic_loss() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(DT)
    x = torch.randn(10, 4, dtype=DT)
    t = torch.randn(10, 2, dtype=DT)
    calls: list[list[int]] = []

    def load(indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        calls.append(list(indices))
        return x[list(indices)], t[list(indices)]

    def mse(o: Tensor, tt: Tensor) -> Tensor:
        return ((o - tt) ** 2).sum(1)

    cb = GradientProxyCallback(model, load, loss=mse, batch_size=4, proxy="last_layer")
    got = cb(range(10))
    with torch.no_grad():
        want = last_layer_grad(2 * (model(x) - t), x)
    torch.testing.assert_close(got, want)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_builder_unwraps_distributed_data_parallel(tmp_path: Any) -> None:
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = _Net().to(DT)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = _data()
        cb = GradientProxyCallback(ddp, TensorDataset(x, y), proxy="last_layer")
        assert cb.model is model
        assert cb.head is model.fc
        direct = GradientProxyCallback(model, TensorDataset(x, y), proxy="last_layer")
        torch.testing.assert_close(cb(range(8)), direct(range(8)))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- errors


def test_closed_form_errors() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"logits should be a floating-point tensor, but got dtype"):
        cross_entropy_logit_grad(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"logits should be 2-D, but got shape \(3,\)"):
        cross_entropy_logit_grad(torch.zeros(3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"logits should be a Tensor, but got list"):
        cross_entropy_logit_grad([[0.0]], torch.tensor([0]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"label_smoothing should be in \[0, 1\], but got 1.5"):
        cross_entropy_logit_grad(z, torch.tensor([0, 1]), label_smoothing=1.5)
    with pytest.raises(TypeError, match=r"label_smoothing should be a float, but got True"):
        cross_entropy_logit_grad(z, torch.tensor([0, 1]), label_smoothing=True)
    with pytest.raises(TypeError, match=r"target should be a Tensor, but got list"):
        cross_entropy_logit_grad(z, [0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"class-index target should have shape \(2,\).*\(3,\)"):
        cross_entropy_logit_grad(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"probability target should have the shape of logits"):
        cross_entropy_logit_grad(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"target contains class 3, outside \[0, 3\)"):
        cross_entropy_logit_grad(z, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match=r"target should hold class indices .* dtype torch.bool"):
        cross_entropy_logit_grad(z, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"weight should have shape \(3,\) .* but got \(2,\)"):
        cross_entropy_logit_grad(z, torch.tensor([0, 1]), weight=torch.ones(2))
    with pytest.raises(ValueError, match=r"logit_grad and features should have the same number"):
        last_layer_grad(torch.zeros(2, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"features should be 2-D, but got shape \(2, 3, 4\)"):
        last_layer_grad(torch.zeros(2, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"chunk_size should be a positive integer or None"):
        logit_grad(z, torch.tensor([0, 1]), _ce, chunk_size=0)
    with pytest.raises(ValueError, match=r"chunk_size should be a positive integer or None"):
        logit_grad(z, torch.tensor([0, 1]), _ce, chunk_size=True)
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"params names 'head.weight', which is not a parameter"):
        per_sample_grads(model, _ce, z, torch.tensor([0, 1]), params=["head.weight"])
    with pytest.raises(ValueError, match=r"params holds a tensor of shape \(4,\) that is not"):
        per_sample_grads(model, _ce, z, torch.tensor([0, 1]), params=[nn.Parameter(torch.ones(4))])
    with pytest.raises(TypeError, match=r"params should hold parameter names or Parameters"):
        per_sample_grads(model, _ce, z, torch.tensor([0, 1]), params=[3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"params selects no parameter of model"):
        per_sample_grads(model, _ce, z, torch.tensor([0, 1]), params=[])
    with pytest.raises(TypeError, match=r"model should be an nn.Module, but got function"):
        per_sample_grads(_ce, _ce, z, torch.tensor([0, 1]))  # type: ignore[arg-type]


def test_builder_argument_errors() -> None:
    model = _Net()
    ds = TensorDataset(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TypeError, match=r"model should be an nn.Module, but got str"):
        GradientProxyCallback("net", ds)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"data should be a map-style dataset or a callable"):
        GradientProxyCallback(model, 3)
    with pytest.raises(ValueError, match=r"proxy should be 'logits' or 'last_layer', but got"):
        GradientProxyCallback(model, ds, proxy="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"loss should be 'cross_entropy' or a callable"):
        GradientProxyCallback(model, ds, loss="mse")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"proxy='last_layer' needs a head: model has no nn.Linear"
    ):
        GradientProxyCallback(nn.Conv1d(1, 1, 1), ds, proxy="last_layer")
    with pytest.raises(TypeError, match=r"head should be an nn.Module, but got int"):
        GradientProxyCallback(model, ds, head=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size should be a positive integer value, but got"):
        GradientProxyCallback(model, ds, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=True"):
        GradientProxyCallback(model, ds, batch_size=True)
    with pytest.raises(TypeError, match=r"bias should be a bool, but got 1"):
        GradientProxyCallback(model, ds, bias=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"label_smoothing should be a float"):
        GradientProxyCallback(model, ds, label_smoothing="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"label_smoothing should be in \[0, 1\]"):
        GradientProxyCallback(model, ds, label_smoothing=-0.1)
    with pytest.raises(TypeError, match=r"weight should be a floating-point tensor"):
        GradientProxyCallback(model, ds, weight=torch.tensor([1, 2, 3]))


def test_builder_call_errors_name_the_call() -> None:
    torch.manual_seed(0)
    model = _Net().eval()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def short(indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        return x[: len(indices) - 1], y[: len(indices) - 1]

    with pytest.raises(ValueError, match=r"model\(inputs\) returned shape \(2, 3\) for 3 indices"):
        GradientProxyCallback(model, short)([0, 1, 2])
    with pytest.raises(
        ValueError, match=r"loading 2 indices should give \(inputs, targets, \.\.\.\)"
    ):
        GradientProxyCallback(model, lambda i: x[list(i)])([0, 1])
    with pytest.raises(TypeError, match=r"model\(inputs\) should return a Tensor, but got dict"):
        GradientProxyCallback(_lambda_module(lambda v: {"x": v}), TensorDataset(x, y))([0])

    def bad_loss(o: Tensor, t: Tensor) -> Tensor:
        return o.sum()

    cb = GradientProxyCallback(model, TensorDataset(x, y), loss=bad_loss)
    with pytest.raises(ValueError, match=r"the loss returned shape \(\) for 2 indices; expected"):
        cb([0, 1])
    with pytest.raises(ValueError, match=r"the loss returned shape \(\) for 2 indices; expected"):
        cb.per_sample_loss([0, 1])
    nan_model = _Net().eval()
    with torch.no_grad():
        nan_model.fc.bias[0] = math.nan
    with pytest.raises(ValueError, match=r"gradient proxies contain NaN or inf in 3 of 3 rows"):
        GradientProxyCallback(nan_model, TensorDataset(x, y))([0, 1, 2])
    with pytest.raises(TypeError, match=r"indices should hold ints, but got True"):
        GradientProxyCallback(model, TensorDataset(x, y))([True, 1])
    with pytest.raises(
        TypeError, match=r"indices should be a 1-D sequence of ints, but got a tensor"
    ):
        GradientProxyCallback(model, TensorDataset(x, y))(torch.zeros(2))
    with pytest.raises(TypeError, match=r"indices should be a sequence of ints, but got int"):
        GradientProxyCallback(model, TensorDataset(x, y))(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"forward hook did not fire: is head used by model"):
        GradientProxyCallback(model, TensorDataset(x, y), proxy="last_layer", head=nn.Linear(4, 3))(
            [0, 1]
        )


def _lambda_module(fn: Any) -> nn.Module:
    class _M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, v: Tensor) -> Any:
            return fn(v)

    return _M()


def test_builder_last_layer_needs_2d_features() -> None:
    class SeqNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, v: Tensor) -> Tensor:
            return self.fc(v[:, None, :].expand(-1, 2, -1)).mean(1)

    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"the head's input has shape \(2, 2, 4\) for 2 indices"):
        GradientProxyCallback(SeqNet(), TensorDataset(x, y), proxy="last_layer")([0, 1])
