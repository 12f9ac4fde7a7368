"""Per-sample gradient proxies for coreset selection.

CREST (Yang, Kang, Mirzasoleiman, "Towards Sustainable Learning: Coresets for Data-efficient Deep
Learning", ICML 2023) selects mini-batch coresets by facility location on a cheap *proxy* of each
example's gradient. This module provides those proxies:

* closed forms, batched and device-agnostic:

  - :func:`cross_entropy_logit_grad`: ∂ℓ_i/∂z_i for cross-entropy, i.e. ``softmax(z) - onehot(y)``
    (with class weights and label smoothing exactly as :func:`torch.nn.functional.cross_entropy`
    defines them);
  - :func:`last_layer_grad`: the gradient of ℓ_i with respect to the weight (and bias) of the
    last linear layer, ``∂ℓ_i/∂z_i ⊗ [h_i, 1]``, from the logit gradient and the penultimate
    features h_i, without per-sample gradients of the rest of the network;

* generic paths through :mod:`torch.func` for any loss (:func:`logit_grad`) and any subset of
  parameters (:func:`per_sample_grads`);
* :class:`GradientProxyCallback`, a ready-made callback for the sampler that also supplies the
  per-sample loss with graph that :class:`~coreset_sampler.monitor.QuadraticLossMonitor` needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import default_collate

__all__ = [
    "GradientProxyCallback",
    "cross_entropy_logit_grad",
    "last_layer_grad",
    "logit_grad",
    "per_sample_grads",
]

logger = logging.getLogger(__name__)

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
    _check_tensor("logits", logits, ndim=2, floating=True)
    n, num_classes = logits.shape
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing should be a float, but got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing should be in [0, 1], but got {label_smoothing}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target should be a Tensor, but got {type(target).__name__}")
    if weight is not None:
        _check_tensor("weight", weight, ndim=1, floating=True)
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
    p = torch.softmax(logits, dim=1)
    g = a.sum(dim=1, keepdim=True) * p - a
    if keep is not None:
        g = g * keep.unsqueeze(1).to(g.dtype)
    return g


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
    _check_tensor("logit_grad", logit_grad, ndim=2, floating=True)
    _check_tensor("features", features, ndim=2, floating=True)
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


# --------------------------------------------------------------------------- torch.func paths


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
    _check_tensor("outputs", outputs, floating=True)
    _check_chunk_size(chunk_size)

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
    _check_chunk_size(chunk_size)
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


# --------------------------------------------------------------------------- callback builder


class GradientProxyCallback:
    r"""Ready-made gradient-proxy callback for the CREST sampler.

    ``callback(indices)`` loads the examples, runs the model once in eval mode under
    :func:`torch.no_grad` (in chunks of ``batch_size``) and returns one proxy row per index:

    * ``proxy="logits"``: ∂ℓ_i/∂z_i (``softmax(z_i) - onehot(y_i)`` for cross-entropy), d = C;
    * ``proxy="last_layer"``: ∂ℓ_i/∂z_i ⊗ [h_i, 1], the last-layer gradient, with h_i the input
      of ``head`` captured by a temporary forward hook, d = C·D + C.

    The model's training flags are restored per submodule afterwards, and the CPU (and, on CUDA,
    the device's) random-number state is forked, so dropout and augmentation streams of the
    training loop are untouched. A model wrapped in ``DistributedDataParallel`` is unwrapped
    (its forward is a collective). See CREST (Yang, Kang, Mirzasoleiman, ICML 2023) §4.1.

    :meth:`per_sample_loss` returns the per-sample losses *with* graph; pass it as the
    ``loss_fn`` of :class:`~coreset_sampler.monitor.QuadraticLossMonitor`. It does not switch
    the model's mode (the monitor does).

    Args:
        model: the user's network (optionally DDP-wrapped).
        data: a map-style dataset whose items are ``(input, target, ...)`` (collated with
            ``collate_fn``), or a callable ``load(indices) -> (inputs, targets)``.
        head: the last ``nn.Linear`` (default: the last ``nn.Linear`` in ``model.modules()``);
            used only for ``proxy="last_layer"``.
        device: where to run the model (default: the device of its first parameter).
        proxy: ``"logits"`` or ``"last_layer"``.
        loss: ``"cross_entropy"`` (closed form) or ``loss(outputs, targets) -> Tensor[n]``
            (per-sample losses; its logit gradient is computed with :func:`logit_grad`).
        weight: class weights of the cross-entropy, if the training loss uses them.
        label_smoothing: label smoothing of the cross-entropy.
        batch_size: examples per inference forward pass.
        bias: include the bias column in ``"last_layer"`` proxies.
        collate_fn: how dataset items are batched (default ``default_collate``). A dataset
            with ``__getitems__`` gets one call per batch, as in a ``DataLoader``.

    Raises:
        TypeError: on arguments of the wrong type.
        ValueError: on invalid values.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> ds = TensorDataset(torch.randn(10, 3, generator=g), torch.randint(0, 2, (10,)))
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
        ... )
        >>> cb = GradientProxyCallback(model, ds, proxy="last_layer")
        >>> cb([0, 5, 7]).shape
        torch.Size([3, 10])
        >>> proxies, losses = cb.proxies_and_losses([1, 2])
        >>> cb.per_sample_loss([1, 2]).requires_grad
        True
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        head: nn.Linear | None = None,
        device: torch.device | str | None = None,
        proxy: Literal["logits", "last_layer"] = "logits",
        loss: Literal["cross_entropy"] | PerSampleLossFn = "cross_entropy",
        weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        batch_size: int = 256,
        bias: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model should be an nn.Module, but got {type(model).__name__}")
        self.model: nn.Module = _unwrap(model)
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self._load: Callable[[list[int]], Any] = self._dataset_loader(
                data, collate_fn or default_collate
            )
        elif callable(data):
            self._load = data
        else:
            raise TypeError(
                "data should be a map-style dataset or a callable load(indices) -> "
                f"(inputs, targets), but got {type(data).__name__}"
            )
        if proxy not in ("logits", "last_layer"):
            raise ValueError(f"proxy should be 'logits' or 'last_layer', but got proxy={proxy!r}")
        self.proxy = proxy
        if not (loss == "cross_entropy" or callable(loss)):
            raise ValueError(
                f"loss should be 'cross_entropy' or a callable loss(outputs, targets), "
                f"but got loss={loss!r}"
            )
        self._loss = loss
        if head is None and proxy == "last_layer":
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(
                    "proxy='last_layer' needs a head: model has no nn.Linear, pass head=..."
                )
            head = linears[-1]
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head should be an nn.Module, but got {type(head).__name__}")
        self.head = head
        if device is None:
            first = next(self.model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        if weight is not None:
            _check_tensor("weight", weight, ndim=1, floating=True)
        self.weight = weight
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
            raise TypeError(f"label_smoothing should be a float, but got {label_smoothing!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing should be in [0, 1], but got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(
                f"batch_size should be a positive integer value, but got batch_size={batch_size!r}"
            )
        self.batch_size = batch_size
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be a bool, but got {bias!r}")
        self.bias = bias

    # -- public API -----------------------------------------------------------------------

    def __call__(self, indices: Sequence[int]) -> Tensor:
        """Return the ``[len(indices), d]`` gradient proxies of the given examples."""
        return self.proxies_and_losses(indices)[0]

    def proxies_and_losses(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Return the proxies ``[n, d]`` and the per-sample losses ``[n]`` (same forward pass)."""
        idx = _check_indices(indices)
        proxies: list[Tensor] = []
        losses: list[Tensor] = []
        with _eval_mode(self.model), self._fork_rng(), torch.no_grad():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                p, loss = self._proxies_of(chunk)
                proxies.append(p)
                losses.append(loss)
        if not proxies:
            dim = 0
            return torch.empty(0, dim, device=self.device), torch.empty(0, device=self.device)
        out = torch.cat(proxies)
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).any(dim=1).sum())
            raise ValueError(
                f"gradient proxies contain NaN or inf in {bad} of {len(idx)} rows; check the "
                "model's outputs and the loss (diverged training?)"
            )
        return out, torch.cat(losses)

    def per_sample_loss(self, indices: Sequence[int]) -> Tensor:
        """Per-sample losses ``[len(indices)]`` *with* graph (the monitor's ``loss_fn``).

        Runs the model in its current mode (the caller, e.g. the monitor, chooses eval) and in
        the current grad mode; the random-number state is forked as in :meth:`__call__`.
        """
        idx = _check_indices(indices)
        with self._fork_rng():
            parts = [
                self._losses_of(idx[s : s + self.batch_size])
                for s in range(0, len(idx), self.batch_size)
            ]
        if not parts:
            return torch.empty(0, device=self.device)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _dataset_loader(
        data: Any, collate: Callable[[list[Any]], Any]
    ) -> Callable[[list[int]], Any]:
        # as the DataLoader's fetcher does: one __getitems__ call per batch when the dataset
        # has it (e.g. a Subset of such a dataset, or a HF datasets wrapper), else item by item
        getitems = getattr(data, "__getitems__", None)

        def load(indices: list[int]) -> Any:
            if getitems:
                return collate(getitems(indices))
            return collate([data[i] for i in indices])

        return load

    def _batch(self, indices: list[int]) -> tuple[Any, Any]:
        batch = self._load(indices)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                f"loading {len(indices)} indices should give (inputs, targets, ...), but got "
                f"{type(batch).__name__}"
            )
        inputs, targets = _to_device(batch[0], self.device), _to_device(batch[1], self.device)
        return inputs, targets

    def _forward(
        self, indices: list[int], *, features: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        inputs, targets = self._batch(indices)
        feats: list[Tensor] = []
        handle = None
        if features and self.head is not None:

            def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
                feats.append(args[0])

            handle = self.head.register_forward_hook(hook)
        try:
            outputs = self.model(inputs)
        finally:
            if handle is not None:
                handle.remove()
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"model(inputs) should return a Tensor, but got {type(outputs).__name__}"
            )
        if outputs.ndim == 0 or outputs.shape[0] != len(indices):
            raise ValueError(
                f"model(inputs) returned shape {tuple(outputs.shape)} for {len(indices)} indices; "
                f"expected {len(indices)} rows"
            )
        return outputs, targets, (feats[-1] if feats else None)

    def _per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self._loss == "cross_entropy":
            return F.cross_entropy(
                outputs,
                targets,
                weight=None if self.weight is None else self.weight.to(outputs),
                label_smoothing=self.label_smoothing,
                reduction="none",
            )
        assert callable(self._loss)
        return self._loss(outputs, targets)

    def _losses_of(self, indices: list[int]) -> Tensor:
        outputs, targets, _ = self._forward(indices)
        losses = self._per_sample(outputs, targets)
        if losses.shape != (len(indices),):
            raise ValueError(
                f"the loss returned shape {tuple(losses.shape)} for {len(indices)} indices; "
                f"expected ({len(indices)},) per-sample losses (reduction='none')"
            )
        return losses

    def _proxies_of(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        outputs, targets, feats = self._forward(indices, features=self.proxy == "last_layer")
        losses = self._per_sample(outputs, targets)
        if losses.shape != (len(indices),):
            raise ValueError(
                f"the loss returned shape {tuple(losses.shape)} for {len(indices)} indices; "
                f"expected ({len(indices)},) per-sample losses (reduction='none')"
            )
        if self._loss == "cross_entropy":
            g = cross_entropy_logit_grad(
                outputs, targets, weight=self.weight, label_smoothing=self.label_smoothing
            )
        else:
            assert callable(self._loss)
            g = logit_grad(outputs, targets, self._loss)
        if self.proxy == "last_layer":
            if feats is None:
                raise ValueError("the head's forward hook did not fire: is head used by model?")
            if feats.ndim != 2 or feats.shape[0] != len(indices):
                raise ValueError(
                    f"the head's input has shape {tuple(feats.shape)} for {len(indices)} "
                    "indices; proxy='last_layer' needs [n, D] penultimate features"
                )
            g = last_layer_grad(g, feats, bias=self.bias)
        return g, losses.detach()

    @contextmanager
    def _fork_rng(self) -> Iterator[None]:
        devices: list[int] = []
        if self.device.type == "cuda":
            devices = [
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            ]
        with torch.random.fork_rng(devices=devices):
            yield


# --------------------------------------------------------------------------- helpers


def _unwrap(model: nn.Module) -> nn.Module:
    """Return ``model.module`` for DDP/DataParallel wrappers, else ``model``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@contextmanager
def _eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag after."""
    if model is None:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _check_tensor(name: str, x: Any, *, ndim: int | None = None, floating: bool = False) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} should be a Tensor, but got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} should be a floating-point tensor, but got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} should be {ndim}-D, but got shape {tuple(x.shape)}")


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    ):
        raise ValueError(
            f"chunk_size should be a positive integer or None, but got chunk_size={chunk_size!r}"
        )


def _check_indices(indices: Sequence[int] | Tensor) -> list[int]:
    if isinstance(indices, Tensor):
        if indices.ndim != 1 or indices.is_floating_point():
            raise TypeError(
                f"indices should be a 1-D sequence of ints, but got a tensor of shape "
                f"{tuple(indices.shape)} and dtype {indices.dtype}"
            )
        return [int(i) for i in indices.tolist()]
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise TypeError(f"indices should be a sequence of ints, but got {type(indices).__name__}")
    out = list(indices)
    for i in out:
        # ints and numpy / torch integer scalars (through __index__); never bools
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"indices should hold ints, but got {i!r}")
    return [int(i) for i in out]


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


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x
