"""Gradient proxies for the samplers: the callback contract and a ready-made callback.

A sampler asks its callback for one gradient proxy per example of a pool
(:class:`ProxyCallback`); a callback that can also give the per-sample losses of the same
forward pass says so by having a ``proxies_and_losses`` method (:class:`ProxiesAndLosses`),
which the samplers then call instead. :class:`GradientProxyCallback` is both, for a model and a
dataset, and also supplies the per-sample loss with graph that
:class:`~coreset_sampler.monitor.QuadraticLossMonitor` needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from coreset_sampler._checks import (
    check_bool,
    check_choice,
    check_in_interval,
    check_indices,
    check_positive_int,
    check_tensor,
)
from coreset_sampler._fold import FoldedForward
from coreset_sampler._nn import eval_mode, to_device, unwrap
from coreset_sampler.gradients import (
    PerSampleLossFn,
    _cross_entropy_losses_and_grad,
    cross_entropy_head_terms,
    cross_entropy_logit_hessian_diag,
    last_layer_grad,
    logit_grad,
)

__all__ = ["GradientProxyCallback", "ProxiesAndLosses", "ProxyCallback"]

IntArray = npt.NDArray[np.int64]


class ProxyCallback(Protocol):
    """``callback(indices) -> proxies`` or ``-> (proxies, losses)``.

    ``proxies`` is a floating ``[len(indices), d]`` tensor, one gradient proxy per example
    (e.g. ``softmax(logits) − onehot(y)``); ``losses``, if returned, the ``[len(indices)]``
    per-sample losses of the same forward pass (they feed learned-example dropping).
    """

    def __call__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]: ...


@runtime_checkable
class ProxiesAndLosses(Protocol):
    """A callback that can also return the per-sample losses of the same forward pass: the
    samplers call ``proxies_and_losses(indices) -> (proxies, losses)`` instead of the callback
    itself. :class:`GradientProxyCallback` is one."""

    def proxies_and_losses(self, indices: list[int]) -> tuple[Tensor, Tensor]: ...


def call_proxies(
    callback: Any, indices: IntArray, call: str
) -> tuple[Tensor, npt.NDArray[np.float64] | None]:
    """Ask ``callback`` for the proxies (and losses, where it gives them) of ``indices`` and
    check what it returns: ``([n, d]`` detached proxies, float64 losses or ``None)``. ``call``
    names the call in the messages."""
    ask = callback.proxies_and_losses if isinstance(callback, ProxiesAndLosses) else callback
    return _read_callback(ask(indices.tolist()), indices, call)


def _read_callback(
    out: Any, indices: IntArray, call: str
) -> tuple[Tensor, npt.NDArray[np.float64] | None]:
    n = int(indices.shape[0])
    losses: Any = None
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(
                f"{call} should return proxies or a tuple (proxies, losses), but got a tuple of "
                f"length {len(out)}"
            )
        proxies, losses = out
    else:
        proxies = out
    if not isinstance(proxies, Tensor) or not proxies.is_floating_point():
        raise TypeError(f"{call} should return a floating [n, d] tensor, but got {_what(proxies)}")
    if proxies.dim() != 2 or proxies.shape[0] != n or proxies.shape[1] == 0:
        raise ValueError(
            f"{call} returned proxies of shape {tuple(proxies.shape)} for {n} indices; "
            f"expected [{n}, d] with d >= 1"
        )
    if proxies.is_meta:
        raise ValueError(
            f"{call} returned proxies on the meta device, which hold no values: run the model "
            "on a real device (cpu or cuda) before sampling"
        )
    proxies = proxies.detach()
    bad = ~torch.isfinite(proxies).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().reshape(-1).cpu().numpy()
        shown = indices[rows[:10]].tolist()
        more = f" and {rows.shape[0] - 10} more" if rows.shape[0] > 10 else ""
        raise ValueError(
            f"{call} returned NaN or inf proxies for {rows.shape[0]} of {n} examples: indices "
            f"{shown}{more}"
        )
    if losses is None:
        return proxies, None
    if not isinstance(losses, Tensor) or not losses.is_floating_point():
        raise TypeError(
            f"{call} should return losses as a floating [n] tensor, but got {_what(losses)}"
        )
    if tuple(losses.shape) != (n,):
        raise ValueError(
            f"{call} returned losses of shape {tuple(losses.shape)} for {n} indices; expected [{n}]"
        )
    return proxies, losses.detach().to("cpu", torch.float64).numpy()


def _what(value: Any) -> str:
    return f"a tensor of dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__


# --------------------------------------------------------------------------- the callback


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
        batch_size: examples per inference forward pass (default 128, a common training
            batch: a chunk then holds fewer activations than a training step does; on a
            2-core CPU, chunks of 256 were 5 to 10% slower per example for a small CNN).
        bias: include the bias column in ``"last_layer"`` proxies.
        collate_fn: how dataset items are batched (default ``default_collate``). A dataset
            with ``__getitems__`` gets one call per batch, as in a ``DataLoader``.
        precondition: ``"hessian"`` divides each proxy coordinate by the example's own
            Hessian diagonal there plus ``damping`` (H_i⁻¹ g_i with the closed-form diagonal
            of :func:`~coreset_sampler.gradients.cross_entropy_logit_hessian_diag`, times h_j²
            for ``"last_layer"``): AdaCore's preconditioned proxies (Pooladzandi, Davini and
            Mirzasoleiman, ICML 2022), for any sampler. Cross-entropy only. ``"none"``: plain.
        damping: δ > 0 added to the diagonal before dividing (bounds the proxies of examples
            whose curvature vanishes).
        fold_batchnorm: run the proxy pass with each BatchNorm that follows a convolution
            folded into it (in eval mode both are affine, so one convolution with the folded
            weight and bias gives the same outputs up to rounding, in one pass over the
            activations instead of two: the example SmallCNN's proxy pass took 10 to 15% less
            time on a CPU). The pairs are found once with a :mod:`torch.fx` trace (a model
            without a convolution and BatchNorm of one kind is not traced); the model itself
            then runs, with each paired convolution's ``forward`` computing the folded
            convolution and its BatchNorm's passing that output on, for the duration of the
            pass. A pair whose modules (or a module holding one of them) have forward hooks is
            not folded; if a folded output is used by anything but its BatchNorm during a pass,
            or still held after it, the pass runs again unfolded and the pair is dropped; the
            first folded batch is checked against the model, and on a disagreement or a second
            error the model runs as it is. :meth:`per_sample_loss` never folds.

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
        batch_size: int = 128,
        bias: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        precondition: Literal["none", "hessian"] = "none",
        damping: float = 0.01,
        fold_batchnorm: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model should be an nn.Module, but got {type(model).__name__}")
        self.model: nn.Module = unwrap(model)
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self._load: Callable[[list[int]], Any] = _dataset_loader(
                data, collate_fn or default_collate
            )
        elif callable(data):
            self._load = data
        else:
            raise TypeError(
                "data should be a map-style dataset or a callable load(indices) -> "
                f"(inputs, targets), but got {type(data).__name__}"
            )
        self.proxy = check_choice("proxy", proxy, ("logits", "last_layer"))
        if not (loss == "cross_entropy" or callable(loss)):
            raise ValueError(
                f"loss should be 'cross_entropy' or a callable loss(outputs, targets), "
                f"but got loss={loss!r}"
            )
        self._loss = loss
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head should be an nn.Module, but got {type(head).__name__}")
        if head is None:
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            head = linears[-1] if linears else None
        if head is None and proxy == "last_layer":
            raise ValueError(
                "proxy='last_layer' needs a head: model has no nn.Linear, pass head=..."
            )
        self.head = head
        self._record = _HeadRecord(self.model)
        if device is None:
            first = next(self.model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        if weight is not None:
            check_tensor("weight", weight, ndim=1, floating=True)
        self.weight = weight
        self.label_smoothing = check_in_interval("label_smoothing", label_smoothing, "[0, 1]")
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.bias = check_bool("bias", bias)
        self.precondition = check_choice("precondition", precondition, ("none", "hessian"))
        if self.precondition == "hessian" and self._loss != "cross_entropy":
            raise ValueError(
                "precondition='hessian' needs loss='cross_entropy' (its per-sample Hessian "
                "diagonal is in closed form)"
            )
        self.damping = check_in_interval("damping", damping, "(0, inf)", high=math.inf)
        self.fold_batchnorm = check_bool("fold_batchnorm", fold_batchnorm)
        self._folded = FoldedForward()

    # -- public API -----------------------------------------------------------------------

    def __call__(self, indices: Sequence[int]) -> Tensor:
        """Return the ``[len(indices), d]`` gradient proxies of the given examples."""
        return self.proxies_and_losses(indices)[0]

    def proxies_and_losses(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Return the proxies ``[n, d]`` and the per-sample losses ``[n]`` (same forward pass)."""
        idx = check_indices(indices)
        proxies: list[Tensor] = []
        losses: list[Tensor] = []
        self._record.begin()
        with eval_mode(self.model), self._fork_rng(), torch.no_grad():
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
        idx = check_indices(indices)
        with self._fork_rng():
            parts = [
                self._losses_of(idx[s : s + self.batch_size])
                for s in range(0, len(idx), self.batch_size)
            ]
        if not parts:
            return torch.empty(0, device=self.device)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def head_parameters(self) -> list[Tensor] | None:
        """The head's weight (and bias) when the closed-form quadratic model of the head applies
        (cross-entropy on a final ``nn.Linear``), else ``None``."""
        if self._loss != "cross_entropy" or not isinstance(self.head, nn.Linear):
            return None
        return [p for p in (self.head.weight, self.head.bias) if p is not None]

    def head_terms(
        self, indices: Sequence[int], weights: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Gradient and exact Hessian diagonal of ``mean_i w_i ℓ_i`` over ``indices`` with
        respect to :meth:`head_parameters`
        (:func:`~coreset_sampler.gradients.cross_entropy_head_terms`), from the last proxy pass
        when it covered these examples and the model has not changed since (no forward pass
        then), else from one forward pass in eval mode."""
        if self.head_parameters() is None:
            raise ValueError(
                "head_terms needs cross-entropy on a final nn.Linear (loss='cross_entropy' and a "
                "model with an nn.Linear, or head=...)"
            )
        idx = check_indices(indices)
        found = self._record.lookup(idx)
        if found is None:
            self._record.begin()
            with eval_mode(self.model), self._fork_rng(), torch.no_grad():
                for start in range(0, len(idx), self.batch_size):
                    self._forward(idx[start : start + self.batch_size], features=True, fold=True)
            found = self._record.lookup(idx)
            if found is None:
                raise ValueError(
                    "the model's output is not the output of its head (the last nn.Linear, or "
                    "head=...): the head's closed-form quadratic model does not apply; pass "
                    "curvature='hutchinson' to the monitor, or the right head= here"
                )
        logits, feats, targets = found
        assert self.head is not None
        return cross_entropy_head_terms(
            logits, targets, feats, weights.to(logits), weight=self.weight,
            label_smoothing=self.label_smoothing, bias=self.head.bias is not None,
        )  # fmt: skip

    # -- internals ------------------------------------------------------------------------

    def _batch(self, indices: list[int]) -> tuple[Any, Any]:
        batch = self._load(indices)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                f"loading {len(indices)} indices should give (inputs, targets, ...), but got "
                f"{type(batch).__name__}"
            )
        inputs, targets = to_device(batch[0], self.device), to_device(batch[1], self.device)
        return inputs, targets

    def _forward(
        self, indices: list[int], *, features: bool = False, fold: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Outputs and targets of ``indices``; with ``features``, the head's input too (and,
        where the head's output is the model's output, a record of the three for
        :meth:`head_terms`). With ``fold`` (an eval-mode pass without gradients) and
        ``fold_batchnorm``, through the model with its BatchNorms folded."""
        inputs, targets = self._batch(indices)
        feats: list[Tensor] = []
        head_out: list[Any] = []
        handle = None
        if features and self.head is not None:

            def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
                feats.append(args[0])
                head_out.append(out)

            handle = self.head.register_forward_hook(hook)
        try:
            if fold and self.fold_batchnorm:
                outputs = self._folded(self.model, inputs)
            else:
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
        if feats and head_out[-1] is outputs and feats[-1].ndim == 2:
            self._record.add(indices, outputs.detach(), feats[-1].detach(), targets)
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
        losses = self._loss(outputs, targets)
        if losses.shape != (outputs.shape[0],):
            raise ValueError(
                f"the loss returned shape {tuple(losses.shape)} for {outputs.shape[0]} indices; "
                f"expected ({outputs.shape[0]},) per-sample losses (reduction='none')"
            )
        return losses

    def _losses_of(self, indices: list[int]) -> Tensor:
        outputs, targets, _ = self._forward(indices)
        return self._per_sample(outputs, targets)

    def _proxies_of(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        wanted = self.proxy == "last_layer" or self.head_parameters() is not None
        outputs, targets, feats = self._forward(indices, features=wanted, fold=True)
        if self._loss == "cross_entropy":
            losses, g = _cross_entropy_losses_and_grad(
                outputs, targets, weight=self.weight, label_smoothing=self.label_smoothing
            )
        else:
            assert callable(self._loss)
            losses = self._per_sample(outputs, targets)
            g = logit_grad(outputs, targets, self._loss)
        if self.proxy == "last_layer":
            if feats is None:
                raise ValueError("the head's forward hook did not fire: is head used by model?")
            if feats.ndim != 2 or feats.shape[0] != len(indices):
                raise ValueError(
                    f"the head's input has shape {tuple(feats.shape)} for {len(indices)} "
                    "indices; proxy='last_layer' needs [n, D] penultimate features"
                )
            grad = last_layer_grad(g, feats, bias=self.bias)
        else:
            grad = g
        if self.precondition == "hessian":  # AdaCore: H_i⁻¹ g_i, H_i the diagonal, damped
            h = cross_entropy_logit_hessian_diag(
                outputs, targets, weight=self.weight, label_smoothing=self.label_smoothing
            )
            if self.proxy == "last_layer":
                assert feats is not None
                h = last_layer_grad(h, feats.to(h.dtype) ** 2, bias=self.bias)
            grad = grad / (h + self.damping)
        return grad, losses.detach()

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


def _dataset_loader(data: Any, collate: Callable[[list[Any]], Any]) -> Callable[[list[int]], Any]:
    """``load(indices)`` as the DataLoader's fetcher does: one ``__getitems__`` call per batch
    when the dataset has it (e.g. a Subset of such a dataset, or a HF datasets wrapper), else
    item by item; then ``collate``."""
    getitems = getattr(data, "__getitems__", None)

    def load(indices: list[int]) -> Any:
        if getitems:
            return collate(getitems(indices))
        return collate([data[i] for i in indices])

    return load


class _HeadRecord:
    """The head's outputs, inputs and the targets of the examples of the last forward passes,
    valid while the model's parameters are unchanged (their version counters)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.clear()

    def clear(self) -> None:
        self.rows: dict[int, int] = {}
        self.parts: list[tuple[Tensor, Tensor, Any]] = []
        self.version: tuple[int, ...] | None = None

    def begin(self) -> None:
        """Start a record at the model's current parameters (one forward pass's chunks follow;
        the parameters cannot change between them)."""
        self.clear()
        self.version = self._version()

    def add(self, indices: list[int], logits: Tensor, feats: Tensor, targets: Any) -> None:
        offset = sum(part[0].shape[0] for part in self.parts)
        self.parts.append((logits, feats, targets))
        for k, i in enumerate(indices):
            self.rows[i] = offset + k

    def lookup(self, indices: list[int]) -> tuple[Tensor, Tensor, Any] | None:
        if not self.parts or self.version != self._version():
            return None
        rows = [self.rows.get(i) for i in indices]
        if any(r is None for r in rows):
            return None
        if len(self.parts) > 1:  # (joined into one part once, not once per coreset looked up)
            logits, feats, targets = (torch.cat([p[k] for p in self.parts]) for k in range(3))
            self.parts = [(logits, feats, targets)]
        logits, feats, targets = self.parts[0]
        at = torch.tensor(rows, dtype=torch.long, device=logits.device)
        return logits[at], feats[at], targets[at]

    def _version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.model.parameters())
