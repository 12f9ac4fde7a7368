"""The proxy pass's forward: the model with each eval-mode BatchNorm folded into the convolution
before it.

In eval mode a BatchNorm is an affine map per channel, y = γ (x − μ) / √(σ² + ε) + β, so after
a convolution it can be folded into the convolution's weight and bias (as inference runtimes
do): one pass over the activations instead of two. On a 2-core CPU the example SmallCNN's
proxy pass took about 10% less time with it (``benchmarks/bench_proxies.py``).

:class:`FoldedForward` traces the model once with :func:`torch.fx.symbolic_trace` (the traced
module shares the model's submodules, so it always sees the current weights and running
statistics), replaces each convolution whose only use is a BatchNorm of the same kind with a
module that folds the two at every call, and checks the result against the model itself on the
first batch. A model that cannot be traced, has nothing to fold, or disagrees with its folded
trace runs as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx, nn

__all__ = ["FoldedForward"]

_PAIRS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


class _ConvBatchNorm(nn.Module):
    """``bn(conv(x))`` in eval mode, as one convolution with the folded weight and bias."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        # (plain attributes, not submodules: the traced module's parameters stay the model's)
        self.__dict__["conv"] = conv
        self.__dict__["bn"] = bn

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self.__dict__["conv"], self.__dict__["bn"]
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = conv.weight * scale.reshape([-1] + [1] * (conv.weight.ndim - 1))
        out: Tensor = conv._conv_forward(x, weight.to(conv.weight.dtype), shift.to(weight.dtype))
        return out


def _fold(model: nn.Module) -> fx.GraphModule | None:
    """The folded trace of ``model``, or ``None`` when it cannot be traced or nothing folds.
    A model without a convolution and a BatchNorm of the same kind is not traced at all
    (tracing runs ``forward`` on symbolic values, which a model may not expect)."""
    kinds = {type(m) for m in model.modules()}
    if not any(conv in kinds and bn in kinds for conv, bn in _PAIRS.items()):
        return None
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # (data-dependent control flow, unsupported inputs: run as it is)
        return None
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn, prev = modules.get(node.target), node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        conv = modules.get(prev.target)
        if (
            conv is None
            or bn is None
            or _PAIRS.get(type(conv)) is not type(bn)
            or not getattr(bn, "track_running_stats", False)
            or getattr(bn, "running_mean", None) is None
            or getattr(bn, "running_var", None) is None
        ):
            continue
        name = f"_conv_batchnorm_{folded}"
        modules[name] = _ConvBatchNorm(conv, bn)
        traced.add_submodule(name, modules[name])
        prev.target = name
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return None
    traced.graph.lint()
    traced.recompile()
    return traced


class FoldedForward:
    """``forward(model, inputs)``: ``model(inputs)``, through the folded trace when there is a
    faithful one. Call it only with the model in eval mode (the fold uses the running
    statistics) and without gradients."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._traced: fx.GraphModule | None = None
        self._checked = False

    def folded(self, model: nn.Module) -> bool:
        """Whether ``model`` runs through a folded trace (after its first checked call)."""
        return self._key == self._key_of(model) and self._traced is not None and self._checked

    def __call__(self, model: nn.Module, inputs: Any) -> Any:
        key = self._key_of(model)
        if key != self._key:  # (first call, or the model's modules were replaced)
            self._key, self._traced, self._checked = key, _fold(model), False
        if self._traced is None:
            return model(inputs)
        if self._checked:
            return self._traced(inputs)
        # the first call checks the folded trace against the model itself, on this batch
        want = model(inputs)
        got = self._traced(inputs)
        self._checked = True
        if not (
            isinstance(want, Tensor)
            and isinstance(got, Tensor)
            and got.shape == want.shape
            and got.dtype == want.dtype
            and _close(got, want)
        ):
            self._traced = None
            return want
        return got

    @staticmethod
    def _key_of(model: nn.Module) -> tuple[int, ...]:
        return tuple(id(m) for m in model.modules())


def _close(got: Tensor, want: Tensor) -> bool:
    """Equal up to the rounding a fold can change (relative to the outputs' scale)."""
    if want.numel() == 0:
        return True
    if not bool(torch.isfinite(want).all()):
        return bool(torch.equal(got.isfinite(), want.isfinite()))
    scale = float(want.abs().max())
    return bool(torch.allclose(got, want, rtol=1e-3, atol=1e-3 * scale + 1e-6))
