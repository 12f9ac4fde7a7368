"""Per-sample gradient proxies for coreset selection: pure functions.

CREST (Yang, Kang, Mirzasoleiman, "Towards Sustainable Learning: Coresets for Data-efficient Deep
Learning", ICML 2023) selects mini-batch coresets by facility location on a cheap *proxy* of each
example's gradient. This module computes those proxies:

* closed forms, batched and device-agnostic:

  - :func:`cross_entropy_logit_grad`: ∂ℓ_i/∂z_i for cross-entropy, i.e. ``softmax(z) - onehot(y)``
    (with class weights and label smoothing exactly as :func:`torch.nn.functional.cross_entropy`
    defines them);
  - :func:`last_layer_grad`: the gradient of ℓ_i with respect to the weight (and bias) of the
    last linear layer, ``∂ℓ_i/∂z_i ⊗ [h_i, 1]``, from the logit gradient and the penultimate
    features h_i, without per-sample gradients of the rest of the network;

* generic paths through :mod:`torch.func` for any loss (:func:`logit_grad`) and any subset of
  parameters (:func:`per_sample_grads`).

:class:`~coreset_sampler.proxies.GradientProxyCallback` (in :mod:`coreset_sampler.proxies`) runs
them on a model for the sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from coreset_sampler._checks import check_optional_positive_int, check_tensor

__all__ = [
    "cross_entropy_logit_grad",
    "cross_entropy_logit_hessian_diag",
    "last_layer_grad",
    "logit_grad",
    "per_sample_grads",
]

PerSampleLossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(outputs, targets) -> Tensor[n]``: per-sample losses (``reduction='none'``)."""


# --------------------------------------------------------------------------- closed forms


def cross_entropy_logit_grad(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    r"""Per-sample gradient of cross-entropy with respect to the logits, in closed form.

    For one example with logits z ∈ R^C, p = softmax(z) and per-sample loss
    ℓ = -Σ_c a_c log p_c (the ``reduction='none'`` loss of
    :func:`torch.nn.functional.cross_entropy`), the gradient is

    .. math:: ∂ℓ/∂z = (Σ_c a_c)\, p - a,

    where, for a class index y, a_c = (1-ε)·w_y·[c = y] + (ε/C)·w_c, and for class probabilities
    t, a_c = w_c·((1-ε)·t_c + ε/C) (w: class weights, 1 if not given; ε: label smoothing).
    Without weights or smoothing this is the familiar ``softmax(z) - onehot(y)``, the default
    gradient proxy of CREST (Yang et al., ICML 2023, §4.1). Rows whose target equals
    ``ignore_index`` are zero.

    Args:
        logits: ``[n, C]`` floating tensor.
        target: ``[n]`` integer class indices, or ``[n, C]`` class probabilities.
        weight: optional ``[C]`` class weights, as for ``cross_entropy``.
        label_smoothing: ε in [0, 1].
        ignore_index: class index whose rows get a zero gradient (class-index targets only).

    Returns:
        ``[n, C]`` tensor, dtype and device of ``logits``.

    Raises:
        TypeError: if ``logits`` is not floating point or ``target`` has an unsupported dtype.
        ValueError: if shapes disagree or ``label_smoothing`` is outside [0, 1].

    Examples:
        >>> import torch
        >>> g = cross_entropy_logit_grad(torch.zeros(2, 4), torch.tensor([0, 3]))
        >>> g
        tensor([[-0.7500,  0.2500,  0.2500,  0.2500],
                [ 0.2500,  0.2500,  0.2500, -0.7500]])
    """
    a = _ce_targets(logits, target, weight, label_smoothing, ignore_index)
    p = torch.softmax(logits, dim=1)
    return a.sum(dim=1, keepdim=True) * p - a


def _cross_entropy_losses_and_grad(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """The ``reduction='none'`` cross-entropy and :func:`cross_entropy_logit_grad` of the same
    logits, equal bit for bit to the two computed apart. The common case (class indices in
    range, no class weights, no smoothing) takes five tensor operations instead of about twenty
    (the proxy pass runs this once per chunk of a pool)."""
    n_cls = logits.shape[-1] if logits.ndim == 2 else 0
    plain = (
        weight is None
        and label_smoothing == 0.0
        and logits.ndim == 2
        and logits.is_floating_point()
        and isinstance(target, Tensor)
        and target.dtype in (torch.int64, torch.uint8)  # (what F.cross_entropy accepts)
        and target.shape == (logits.shape[0],)
        and logits.shape[0] > 0
        and not 0 <= ignore_index < n_cls
    )
    if plain:
        t = target.to(device=logits.device, dtype=torch.long)
        lo, hi = torch.stack(torch.aminmax(t)).tolist()
        plain = lo >= 0 and hi < n_cls
    if not plain:  # (the gradient first: it checks the targets, with a clear message)
        grad = cross_entropy_logit_grad(
            logits, target, weight=weight, label_smoothing=label_smoothing,
            ignore_index=ignore_index,
        )  # fmt: skip
        losses = F.cross_entropy(
            logits, target, weight=None if weight is None else weight.to(logits),
            label_smoothing=label_smoothing, ignore_index=ignore_index, reduction="none",
        )  # fmt: skip
        return losses, grad
    losses = F.nll_loss(torch.log_softmax(logits, dim=1), t, reduction="none")
    # p − onehot(y): the general formula's s·p − a with s = 1 and a = onehot, exactly
    probs = torch.softmax(logits, dim=1)
    grad = probs.scatter_add(1, t.unsqueeze(1), probs.new_full((t.shape[0], 1), -1.0))
    return losses, grad


def cross_entropy_logit_hessian_diag(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    r"""Per-sample diagonal of the Hessian of cross-entropy with respect to the logits.

    With the targets a of :func:`cross_entropy_logit_grad` and s = Σ_c a_c, the per-sample
    Hessian is s·(diag(p) − p pᵀ), so its diagonal is

    .. math:: ∂^2ℓ/∂z_c^2 = s\, p_c (1 - p_c).

    For the last layer, the diagonal for ``W[c, j]`` is that times h_j² (and, for the bias, that
    itself): ``last_layer_grad(hessian_diag, features ** 2)``. Rows whose target equals
    ``ignore_index`` are zero.

    Args:
        logits: ``[n, C]`` floating tensor.
        target: ``[n]`` class indices, or ``[n, C]`` class probabilities.
        weight: optional ``[C]`` class weights, as for ``cross_entropy``.
        label_smoothing: ε in [0, 1].
        ignore_index: class index whose rows are zero (class-index targets only).

    Returns:
        ``[n, C]`` tensor, dtype and device of ``logits``.

    Examples:
        >>> import torch
        >>> cross_entropy_logit_hessian_diag(torch.zeros(1, 2), torch.tensor([0]))
        tensor([[0.2500, 0.2500]])
    """
    a = _ce_targets(logits, target, weight, label_smoothing, ignore_index)
    p = torch.softmax(logits, dim=1)
    return a.sum(dim=1, keepdim=True) * p * (1 - p)


def cross_entropy_head_terms(
    logits: Tensor,
    target: Tensor,
    features: Tensor,
    sample_weight: Tensor | None = None,
    *,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    bias: bool = True,
) -> tuple[list[Tensor], list[Tensor]]:
    r"""Gradient and exact Hessian diagonal of a weighted cross-entropy with respect to the
    last linear layer, in closed form.

    For logits z_i = W h_i + b, p_i = softmax(z_i) and the loss L = mean_i γ_i ℓ_i (ℓ_i the
    ``reduction='none'`` cross-entropy, with the targets a_i of
    :func:`cross_entropy_logit_grad` and s_i = Σ_c a_ic):

    .. math::

        ∂L/∂W_{cj} = \operatorname{mean}_i γ_i (s_i p_{ic} - a_{ic}) h_{ij}, \qquad
        ∂^2L/∂W_{cj}^2 = \operatorname{mean}_i γ_i s_i\, p_{ic}(1 - p_{ic})\, h_{ij}^2,

    and the same without h for the bias. No probe, no second backward pass: the features and
    probabilities of one forward pass give both (the quadratic model of CREST's monitor on the
    head, as the paper does for RoBERTa).

    Args:
        logits: ``[n, C]`` floating tensor, the head's output.
        target: ``[n]`` class indices or ``[n, C]`` probabilities.
        features: ``[n, D]``, the head's input.
        sample_weight: optional ``[n]`` weights γ (ones if not given).
        weight: optional ``[C]`` class weights; label_smoothing, ignore_index: as for
            :func:`torch.nn.functional.cross_entropy`.
        bias: whether the head has a bias (its terms are then returned too).

    Returns:
        ``([dL/dW, dL/db], [diag W, diag b])`` (without the bias terms when ``bias`` is
        false), in the dtype of ``logits``.

    Examples:
        >>> import torch
        >>> g, d = cross_entropy_head_terms(torch.zeros(2, 2), torch.tensor([0, 1]),
        ...                                 torch.ones(2, 3))
        >>> g[0].shape, d[0][0].tolist()
        (torch.Size([2, 3]), [0.25, 0.25, 0.25])
    """
    a = _ce_targets(logits, target, weight, label_smoothing, ignore_index)
    check_tensor("features", features, ndim=2, floating=True)
    if features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"features should have one row per logit row ({logits.shape[0]}), but got shape "
            f"{tuple(features.shape)}"
        )
    n = logits.shape[0]
    gamma = torch.ones(n, dtype=logits.dtype, device=logits.device)
    if sample_weight is not None:
        gamma = check_tensor("sample_weight", sample_weight, ndim=1, floating=True).to(gamma)
    p = torch.softmax(logits, dim=1)
    s = a.sum(dim=1, keepdim=True)
    h = features.to(logits.dtype)
    g_z = (s * p - a) * (gamma / n).unsqueeze(1)  # [n, C]
    c_z = s * p * (1.0 - p) * (gamma / n).unsqueeze(1)  # the logits' Hessian diagonal, weighted
    grads, diags = [g_z.T @ h], [c_z.T @ (h * h)]
    if bias:
        grads.append(g_z.sum(0))
        diags.append(c_z.sum(0))
    return grads, diags


def _ce_targets(
    logits: Tensor, target: Tensor, weight: Tensor | None, label_smoothing: float,
    ignore_index: int,
) -> Tensor:  # fmt: skip
    """The targets a ``[n, C]`` of the cross-entropy ℓ = −Σ_c a_c log p_c (weights and
    smoothing included; zero rows where the target is ``ignore_index``)."""
    check_tensor("logits", logits, ndim=2, floating=True)
    n, num_classes = logits.shape
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing should be a float, but got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing should be in [0, 1], but got {label_smoothing}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target should be a Tensor, but got {type(target).__name__}")
    if weight is not None:
        check_tensor("weight", weight, ndim=1, floating=True)
        if weight.shape[0] != num_classes:
            raise ValueError(
                f"weight should have shape ({num_classes},) to match logits of shape "
                f"{tuple(logits.shape)}, but got {tuple(weight.shape)}"
            )
        w = weight.to(device=logits.device, dtype=logits.dtype)
    else:
        w = None
    eps = float(label_smoothing)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"probability target should have the shape of logits {tuple(logits.shape)}, "
                f"but got {tuple(target.shape)}"
            )
        a = target.to(logits.dtype) * (1.0 - eps) + eps / num_classes
        if w is not None:
            a = a * w
        keep = None
    elif target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if target.shape != (n,):
            raise ValueError(
                f"class-index target should have shape ({n},) to match logits of shape "
                f"{tuple(logits.shape)}, but got {tuple(target.shape)}"
            )
        target = target.to(device=logits.device, dtype=torch.long)
        keep = target != ignore_index
        safe = torch.where(keep, target, torch.zeros_like(target))
        if bool(((safe < 0) | (safe >= num_classes)).any()):
            bad = target[keep & ((safe < 0) | (safe >= num_classes))][0].item()
            raise ValueError(f"target contains class {bad}, outside [0, {num_classes})")
        onehot = F.one_hot(safe, num_classes).to(logits.dtype)
        if w is None:
            a = onehot * (1.0 - eps) + eps / num_classes
        else:
            a = onehot * (w[safe] * (1.0 - eps)).unsqueeze(1) + (eps / num_classes) * w
    else:
        raise TypeError(
            f"target should hold class indices (integer) or probabilities (floating), "
            f"but got dtype {target.dtype}"
        )
    if keep is not None:
        a = a * keep.unsqueeze(1).to(a.dtype)
    return a


def last_layer_grad(logit_grad: Tensor, features: Tensor, *, bias: bool = True) -> Tensor:
    r"""Per-sample gradient of the last linear layer from logit gradients and features.

    For a head z = W h + b with W ∈ R^{C×D}, the per-sample gradients are ∂ℓ/∂W = (∂ℓ/∂z) hᵀ and
    ∂ℓ/∂b = ∂ℓ/∂z. Row i of the result is ``[vec(∂ℓ_i/∂W), ∂ℓ_i/∂b]``, flattened in the order of
    ``head.weight`` then ``head.bias`` (``d = C·D + C`` with bias, ``C·D`` without). This is the
    "last-layer gradient" proxy of CRAIG/CREST (Yang et al., ICML 2023).

    Args:
        logit_grad: ``[n, C]`` gradients with respect to the logits.
        features: ``[n, D]`` inputs of the last linear layer (penultimate features).
        bias: append the bias gradient (the logit gradient itself).

    Returns:
        ``[n, C·D (+ C)]`` tensor.

    Raises:
        TypeError: if an argument is not a floating tensor.
        ValueError: if the row counts differ or a tensor is not 2-D.

    Examples:
        >>> import torch
        >>> last_layer_grad(torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 3.0]]))
        tensor([[ 2.,  3., -2., -3.,  1., -1.]])
    """
    check_tensor("logit_grad", logit_grad, ndim=2, floating=True)
    check_tensor("features", features, ndim=2, floating=True)
    if logit_grad.shape[0] != features.shape[0]:
        raise ValueError(
            f"logit_grad and features should have the same number of rows, but got "
            f"logit_grad of shape {tuple(logit_grad.shape)} and features of shape "
            f"{tuple(features.shape)}"
        )
    features = features.to(logit_grad.dtype)
    n = logit_grad.shape[0]
    outer = (logit_grad.unsqueeze(2) * features.unsqueeze(1)).reshape(n, -1)
    return torch.cat([outer, logit_grad], dim=1) if bias else outer


def logit_grad(
    outputs: Tensor,
    targets: Any,
    loss_fn: PerSampleLossFn,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Per-sample gradient of any loss with respect to the model outputs, via :mod:`torch.func`.

    Computes g_i = ∂ℓ(o_i, y_i)/∂o_i with ``vmap(grad(...))``: ``loss_fn`` is called on a batch
    of one example (``outputs[i:i+1]``, ``targets[i:i+1]``) and its result summed. Use it for
    losses without a closed form (regression, focal loss, ...); for cross-entropy,
    :func:`cross_entropy_logit_grad` is the same number, faster.

    Args:
        outputs: ``[n, ...]`` model outputs.
        targets: tensor (or pytree of tensors) with a leading dimension n.
        loss_fn: ``loss_fn(outputs, targets)`` returning per-sample losses or their sum.
        chunk_size: examples per vectorised chunk (``None``: all at once).

    Returns:
        ``[n, outputs[0].numel()]`` tensor.

    Examples:
        >>> import torch
        >>> mse = lambda o, t: ((o - t) ** 2).sum(dim=1)
        >>> logit_grad(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), mse)
        tensor([[2., 4.]])
    """
    check_tensor("outputs", outputs, floating=True)
    check_optional_positive_int("chunk_size", chunk_size)

    def one(o: Tensor, t: Any) -> Tensor:
        o1 = o.unsqueeze(0)
        t1 = _unsqueeze(t)
        return loss_fn(o1, t1).sum()

    g: Tensor = vmap(grad(one), chunk_size=chunk_size)(outputs, targets)
    return g.reshape(outputs.shape[0], -1)


def per_sample_grads(
    model: nn.Module,
    loss_fn: PerSampleLossFn,
    inputs: Tensor,
    targets: Any,
    *,
    params: Iterable[str] | Iterable[nn.Parameter] | None = None,
    chunk_size: int | None = 64,
) -> Tensor:
    r"""Per-sample gradients of any loss for any subset of parameters, via :mod:`torch.func`.

    Row i is ∇_θ ℓ(f_θ(x_i), y_i) for the selected parameters θ, flattened and concatenated in
    the order of ``model.named_parameters()``. Computed as
    ``vmap(grad(functional_call(...)), chunk_size=...)``: memory is ``chunk_size`` gradients,
    never the whole batch. Modules that mix examples (BatchNorm in training mode) cannot be
    vectorised; call this in eval mode (or see ``torch.func.replace_all_batch_norm_modules_``).

    Args:
        model: the network (unwrap ``DistributedDataParallel`` first: ``ddp.module``).
        loss_fn: ``loss_fn(outputs, targets)`` returning per-sample losses or their sum.
        inputs: ``[n, ...]`` inputs.
        targets: tensor (or pytree) with a leading dimension n.
        params: names or Parameter objects of ``model`` to differentiate; all parameters that
            require grad if ``None``.
        chunk_size: examples per vectorised chunk (``None``: all at once).

    Returns:
        ``[n, d]`` tensor, d the total number of selected parameter entries.

    Raises:
        ValueError: if ``params`` names something that is not a parameter of ``model``, or
            selects nothing.

    Examples:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> ce = lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction="none")
        >>> per_sample_grads(lin, ce, x, y, params=["bias"]).shape
        torch.Size([4, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model should be an nn.Module, but got {type(model).__name__}")
    check_optional_positive_int("chunk_size", chunk_size)
    names = _resolve_param_names(model, params)
    named = dict(model.named_parameters())
    diff = {k: named[k].detach() for k in names}

    def one(p: dict[str, Tensor], x: Tensor, t: Any) -> Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        t1 = _unsqueeze(t)
        return loss_fn(out, t1).sum()

    grads = vmap(grad(one), in_dims=(None, 0, 0), chunk_size=chunk_size)(diff, inputs, targets)
    n = inputs.shape[0]
    return torch.cat([grads[k].reshape(n, -1) for k in names], dim=1)


# --------------------------------------------------------------------------- helpers


def _resolve_param_names(
    model: nn.Module, params: Iterable[str] | Iterable[nn.Parameter] | None
) -> list[str]:
    named = list(model.named_parameters())
    if params is None:
        names = [k for k, p in named if p.requires_grad]
    else:
        wanted = list(params)
        by_id = {id(p): k for k, p in named}
        valid = {k for k, _ in named}
        chosen: set[str] = set()
        for w in wanted:
            if isinstance(w, str):
                if w not in valid:
                    raise ValueError(f"params names {w!r}, which is not a parameter of model")
                chosen.add(w)
            elif isinstance(w, Tensor):
                if id(w) not in by_id:
                    raise ValueError(
                        f"params holds a tensor of shape {tuple(w.shape)} that is not a "
                        "parameter of model"
                    )
                chosen.add(by_id[id(w)])
            else:
                raise TypeError(
                    f"params should hold parameter names or Parameters, but got {type(w).__name__}"
                )
        names = [k for k, _ in named if k in chosen]
    if not names:
        raise ValueError("params selects no parameter of model")
    return names


def _unsqueeze(x: Any) -> Any:
    """Give every tensor of a (nested) target a leading batch dimension of one."""
    if isinstance(x, Tensor):
        return x.unsqueeze(0)
    if isinstance(x, Mapping):
        return {k: _unsqueeze(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_unsqueeze(v) for v in x)
    return x


def __getattr__(name: str) -> Any:
    # GradientProxyCallback lived here before 0.2 (it imports this module: no cycle at import)
    if name == "GradientProxyCallback":
        from coreset_sampler.proxies import GradientProxyCallback

        return GradientProxyCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
