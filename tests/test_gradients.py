"""Tests for coreset_sampler.gradients: closed forms against torch.func in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from coreset_sampler.gradients import (
    _cross_entropy_losses_and_grad,
    cross_entropy_head_terms,
    cross_entropy_logit_grad,
    cross_entropy_logit_hessian_diag,
    last_layer_grad,
    logit_grad,
    per_sample_grads,
)

from ._net import Net

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


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_logit_hessian_diag_equals_the_diagonal_of_torch_func_hessian(
    use_weight: bool, smoothing: float, soft: bool
) -> None:
    g = torch.Generator().manual_seed(1)
    n, c = 7, 4
    logits = torch.randn(n, c, generator=g, dtype=DT) * 2
    weight = torch.rand(c, generator=g, dtype=DT) + 0.2 if use_weight else None
    if soft:
        target = torch.softmax(torch.randn(n, c, generator=g, dtype=DT), dim=1)
    else:
        target = torch.randint(0, c, (n,), generator=g)

    def one(z: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(
            z[None], t[None], weight=weight, label_smoothing=smoothing, reduction="none"
        ).sum()

    dense = vmap(torch.func.hessian(one))(logits, target)  # [n, C, C]
    got = cross_entropy_logit_hessian_diag(logits, target, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(got, torch.diagonal(dense, dim1=1, dim2=2), rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "case",
    ["plain", "uint8", "one_row", "weight", "smoothing", "ignored_row", "ignore_in_range",
     "probabilities", "empty"],
)  # fmt: skip
def test_losses_and_grad_in_one_call_equal_the_two_apart_bit_for_bit(
    case: str, dtype: torch.dtype
) -> None:
    """The proxy pass's one call gives what ``F.cross_entropy(reduction='none')`` and
    :func:`cross_entropy_logit_grad` give, to the last bit, in its fast case and every other."""
    g = torch.Generator().manual_seed(3)
    n, c = (1 if case == "one_row" else 0 if case == "empty" else 64), 10
    logits = 4 * torch.randn(n, c, generator=g, dtype=dtype)
    target: Tensor = torch.randint(0, c, (n,), generator=g)
    kw: dict[str, object] = {}
    if case == "uint8":
        target = target.to(torch.uint8)
    elif case == "weight":
        kw["weight"] = torch.rand(c, generator=g, dtype=dtype) + 0.1
    elif case == "smoothing":
        kw["label_smoothing"] = 0.1
    elif case == "ignored_row":
        target[5] = -100
    elif case == "ignore_in_range":
        kw["ignore_index"] = 3
    elif case == "probabilities":
        target = torch.softmax(torch.randn(n, c, generator=g, dtype=dtype), 1)
    losses, grads = _cross_entropy_losses_and_grad(logits, target, **kw)  # type: ignore[arg-type]
    ce_kw = {**kw, "weight": kw.get("weight")}
    want_losses = F.cross_entropy(logits, target, reduction="none", **ce_kw)  # type: ignore[arg-type]
    want_grads = cross_entropy_logit_grad(logits, target, **kw)  # type: ignore[arg-type]
    assert losses.dtype == grads.dtype == dtype
    assert torch.equal(losses, want_losses) and torch.equal(grads, want_grads)


def test_losses_and_grad_in_one_call_reject_a_class_out_of_range() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match="expected target dtype to be Long or Byte"):
        _cross_entropy_losses_and_grad(logits, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"target contains class 4, outside \[0, 4\)"):
        _cross_entropy_losses_and_grad(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"target contains class -1, outside \[0, 4\)"):
        _cross_entropy_losses_and_grad(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"class-index target should have shape \(3,\)"):
        _cross_entropy_losses_and_grad(logits, torch.tensor([[0], [2], [1]]))


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


def _ce(o: Tensor, t: Tensor) -> Tensor:
    return F.cross_entropy(o, t, reduction="none")


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_per_sample_grads_equals_loop_of_autograd(chunk_size: int | None) -> None:
    torch.manual_seed(0)
    model = Net().to(DT).eval()
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
    with pytest.raises(ValueError, match=r"chunk_size should be a positive integer value"):
        logit_grad(z, torch.tensor([0, 1]), _ce, chunk_size=0)
    with pytest.raises(TypeError, match=r"chunk_size should be a positive integer value"):
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


@pytest.mark.parametrize(
    ("smoothing", "class_weight", "bias", "probabilities"),
    [(0.0, False, True, False), (0.1, True, True, False), (0.2, False, False, False),
     (0.05, True, True, True)],
)  # fmt: skip
def test_cross_entropy_head_terms_equal_autograd_and_the_dense_hessian(
    smoothing: float, class_weight: bool, bias: bool, probabilities: bool
) -> None:
    """The closed-form gradient and Hessian diagonal of mean_i γ_i ℓ_i with respect to a linear
    head equal autograd's gradient and the diagonal of torch.func.hessian, in float64 (with
    class weights, label smoothing, an ignored row, probability targets)."""
    g = torch.Generator().manual_seed(3)
    n, d, c = 9, 4, 3
    h = torch.randn(n, d, generator=g, dtype=DT)
    w0 = torch.randn(c, d, generator=g, dtype=DT)
    b0 = torch.randn(c, generator=g, dtype=DT) if bias else None
    gamma = torch.rand(n, generator=g, dtype=DT) + 0.5
    cw = torch.rand(c, generator=g, dtype=DT) + 0.5 if class_weight else None
    if probabilities:
        y: Tensor = torch.softmax(torch.randn(n, c, generator=g, dtype=DT), 1)
    else:
        y = torch.randint(0, c, (n,), generator=g)
        y[4] = -100  # ignored

    def loss(w: Tensor, b: Tensor | None) -> Tensor:
        z = h @ w.T + (b if b is not None else 0.0)
        per = F.cross_entropy(z, y, weight=cw, label_smoothing=smoothing, reduction="none")
        return (gamma * per).mean()

    logits = h @ w0.T + (b0 if b0 is not None else 0.0)
    grads, diags = cross_entropy_head_terms(
        logits, y, h, gamma, weight=cw, label_smoothing=smoothing, bias=bias
    )
    if bias:
        assert b0 is not None
        ref_g = torch.func.grad(loss, argnums=(0, 1))(w0, b0)
        flat = torch.cat([w0.reshape(-1), b0])
        dense = torch.func.hessian(lambda v: loss(v[: c * d].reshape(c, d), v[c * d :]))(flat)
        ref_d = dense.diagonal()
        torch.testing.assert_close(grads[1], ref_g[1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(diags[1], ref_d[c * d :], rtol=1e-12, atol=1e-14)
    else:
        ref_g = (torch.func.grad(lambda w: loss(w, None))(w0),)
        ref_d = torch.func.hessian(lambda v: loss(v.reshape(c, d), None))(w0.reshape(-1))
        ref_d = ref_d.reshape(c * d, c * d).diagonal()
        assert len(grads) == len(diags) == 1
    torch.testing.assert_close(grads[0], ref_g[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(diags[0].reshape(-1), ref_d[: c * d], rtol=1e-12, atol=1e-14)
