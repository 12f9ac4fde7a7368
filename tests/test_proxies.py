"""Tests for coreset_sampler.proxies: the ready-made callback against the closed forms, its
modes, random state and errors, and the callback contract the samplers read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from coreset_sampler.gradients import cross_entropy_logit_grad, last_layer_grad
from coreset_sampler.proxies import GradientProxyCallback, ProxiesAndLosses, call_proxies

from ._net import Net

DT = torch.float64


def _ce(o: Tensor, t: Tensor) -> Tensor:
    return F.cross_entropy(o, t, reduction="none")


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
    model = Net(dropout=0.5).to(DT)
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


@pytest.mark.parametrize("proxy", ["logits", "last_layer"])
def test_hessian_preconditioned_proxies_are_g_over_the_damped_hessian_diagonal(
    proxy: str,
) -> None:
    # AdaCore's proxies: each example's head gradient divided, coordinate by coordinate, by
    # the diagonal of its own loss Hessian with respect to the same coordinates (torch.func,
    # float64) plus the damping
    torch.manual_seed(0)
    model = Net().to(DT).eval()
    x, y = _data()
    idx = [4, 1, 13, 8]
    weight = torch.tensor([1.0, 0.5, 2.0], dtype=DT)
    cb = GradientProxyCallback(
        model, TensorDataset(x, y), proxy=proxy, weight=weight, label_smoothing=0.1,
        precondition="hessian", damping=0.05,
    )  # fmt: skip
    got = cb(idx)
    with torch.no_grad():
        feats = model.body(x[idx])
    w0, b0 = model.fc.weight.detach(), model.fc.bias.detach()
    c, d = w0.shape

    def loss(v: Tensor, h: Tensor, t: Tensor) -> Tensor:
        # (for "logits" the proxy coordinates are the logits themselves)
        z = v if proxy == "logits" else h @ v[: c * d].reshape(c, d).T + v[c * d :]
        ce = F.cross_entropy(z[None], t[None], weight=weight, label_smoothing=0.1, reduction="none")
        return ce.sum()

    for row, i in enumerate(idx):
        h = feats[row]
        v0 = model.fc(h) if proxy == "logits" else torch.cat([w0.reshape(-1), b0])
        v0 = v0.detach()
        gi = torch.func.grad(loss)(v0, h, y[i])
        hi = torch.diagonal(torch.func.hessian(loss)(v0, h, y[i]))
        torch.testing.assert_close(got[row], gi / (hi + 0.05), rtol=1e-10, atol=1e-12)
    plain = GradientProxyCallback(model, TensorDataset(x, y), proxy=proxy, weight=weight,
                                  label_smoothing=0.1)(idx)  # fmt: skip
    assert not torch.allclose(plain, got)


def test_hessian_preconditioning_argument_errors() -> None:
    model = Net().to(DT)
    data = TensorDataset(*_data())
    with pytest.raises(ValueError, match="precondition should be one of"):
        GradientProxyCallback(model, data, precondition="newton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs loss='cross_entropy'"):
        GradientProxyCallback(model, data, loss=_ce, precondition="hessian")
    with pytest.raises(ValueError, match="damping should be in"):
        GradientProxyCallback(model, data, precondition="hessian", damping=0.0)


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
    model = Net().to(DT).eval()
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
    model = Net(dropout=0.5).to(DT)
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
    model = Net(dropout=0.9).to(DT).train()
    x, y = _data()
    cb = GradientProxyCallback(model, TensorDataset(x, y))
    a, b = cb(range(20)), cb(range(20))
    torch.testing.assert_close(a, b)  # no dropout noise, no batch statistics
    assert not a.requires_grad
    torch.testing.assert_close(cb(range(20))[:5], cb(range(5)))  # BN in eval: per-example


def test_builder_per_sample_loss_has_graph_and_matches() -> None:
    torch.manual_seed(0)
    model = Net().to(DT).eval()
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
        model = Net().to(DT)
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


def test_builder_argument_errors() -> None:
    model = Net()
    ds = TensorDataset(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TypeError, match=r"model should be an nn.Module, but got str"):
        GradientProxyCallback("net", ds)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"data should be a map-style dataset or a callable"):
        GradientProxyCallback(model, 3)
    with pytest.raises(ValueError, match=r"proxy should be one of \('logits', 'last_layer'\), but"):
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
    with pytest.raises(TypeError, match=r"batch_size=True"):
        GradientProxyCallback(model, ds, batch_size=True)
    with pytest.raises(TypeError, match=r"bias should be a boolean value, but got bias=1"):
        GradientProxyCallback(model, ds, bias=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"label_smoothing should be a number in \[0, 1\]"):
        GradientProxyCallback(model, ds, label_smoothing="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"label_smoothing should be in \[0, 1\]"):
        GradientProxyCallback(model, ds, label_smoothing=-0.1)
    with pytest.raises(TypeError, match=r"weight should be a floating-point tensor"):
        GradientProxyCallback(model, ds, weight=torch.tensor([1, 2, 3]))


def test_builder_call_errors_name_the_call() -> None:
    torch.manual_seed(0)
    model = Net().eval()
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
    nan_model = Net().eval()
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


def test_the_samplers_call_proxies_and_losses_where_the_callback_has_it() -> None:
    """The protocol, not a class: any callback with ``proxies_and_losses`` is asked for both."""

    class Both:
        def __call__(self, indices: list[int]) -> Tensor:
            raise AssertionError("the sampler should ask proxies_and_losses")

        def proxies_and_losses(self, indices: list[int]) -> tuple[Tensor, Tensor]:
            return torch.ones(len(indices), 2), torch.zeros(len(indices))

    assert isinstance(Both(), ProxiesAndLosses)
    proxies, losses = call_proxies(Both(), np.arange(3, dtype=np.int64), "call")
    assert proxies.shape == (3, 2) and losses is not None and losses.tolist() == [0.0] * 3
    plain, none = call_proxies(lambda idx: torch.ones(len(idx), 2), np.arange(2), "call")
    assert plain.shape == (2, 2) and none is None


def test_head_record_looks_up_rows_across_parts_added_after_a_lookup() -> None:
    """The record joins its parts into one at a lookup; a part added later is found too, and
    a change to the parameters invalidates the record."""
    from coreset_sampler.proxies import _HeadRecord

    model = nn.Linear(3, 2)
    record = _HeadRecord(model)
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(n, 2, generator=g), torch.randn(n, 3, generator=g)) for n in (4, 3)]
    record.add([10, 11, 12, 13], *parts[0], torch.tensor([0, 1, 0, 1]))
    assert record.lookup([10]) is None  # (no record begun at these parameters)
    record.begin()
    record.add([10, 11, 12, 13], *parts[0], torch.tensor([0, 1, 0, 1]))
    logits, feats, targets = record.lookup([12, 10])  # type: ignore[misc]
    assert torch.equal(logits, parts[0][0][[2, 0]]) and torch.equal(targets, torch.tensor([0, 0]))
    record.add([20, 21, 22], *parts[1], torch.tensor([1, 1, 0]))
    logits, feats, targets = record.lookup([22, 11, 20])  # type: ignore[misc]
    assert torch.equal(logits, torch.stack([parts[1][0][2], parts[0][0][1], parts[1][0][0]]))
    assert torch.equal(feats, torch.stack([parts[1][1][2], parts[0][1][1], parts[1][1][0]]))
    assert torch.equal(targets, torch.tensor([0, 1, 1]))
    assert record.lookup([10, 99]) is None  # (an example it has not seen)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert record.lookup([10]) is None
