"""The proxy pass's forward: the model with each eval-mode BatchNorm folded into the convolution
before it.

In eval mode a BatchNorm is an affine map per channel, y = γ (x − μ) / √(σ² + ε) + β, so after
a convolution it can be folded into the convolution's weight and bias (as inference runtimes
do): one pass over the activations instead of two. On a 2-core CPU the example SmallCNN's
proxy pass took about 10% less time with it (``benchmarks/bench_proxies.py``).

:class:`FoldedForward` finds the pairs once per model structure with a symbolic trace
(:class:`torch.fx.Tracer`): a convolution called at one place whose output goes only to a
BatchNorm of the same kind, itself called at one place. The trace only finds them: the model
itself runs, with, for the duration of one forward pass, each paired convolution's ``forward``
computing the folded convolution and each paired BatchNorm's ``forward`` passing that output
through (and normalising anything else it is given). So the model's own code, attributes and
hooks stay live. A pair is skipped while either module has forward hooks (they would see
folded values), a pass whose folded output does not reach its BatchNorm is run again without
the fold, and the first folded batch is checked against the model itself; any disagreement or
error, and the model runs as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module

__all__ = ["FoldedForward", "find_pairs"]

_PAIRS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}
Pair = tuple[nn.Module, nn.Module]


def fold_conv_bn(conv: Any, bn: Any, x: Tensor) -> Tensor:
    """``bn(conv(x))`` in eval mode, as one convolution with the folded weight and bias."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    dtype = conv.weight.dtype
    weight = conv.weight * scale.reshape([-1] + [1] * (conv.weight.ndim - 1))
    out: Tensor = conv._conv_forward(x, weight.to(dtype), shift.to(dtype))
    return out


def find_pairs(model: nn.Module) -> list[Pair]:
    """The (convolution, BatchNorm) pairs of ``model`` that can fold, from a symbolic trace;
    none when the model has no convolution and BatchNorm of one kind or cannot be traced. The
    trace runs ``forward`` on symbolic values: the modules' attributes are restored after it."""
    kinds = {type(m) for m in model.modules()}
    if not any(conv in kinds and bn in kinds for conv, bn in _PAIRS.items()):
        return []
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
             for m in model.modules()]  # fmt: skip
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # (data-dependent control flow, unsupported inputs: no fold)
        return []
    finally:
        for m, attrs, params, buffers, children in saved:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            m._modules.clear()
            m._modules.update(children)
            m.__dict__.clear()
            m.__dict__.update(attrs)
    modules = dict(model.named_modules())
    sites = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs: list[Pair] = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn, prev = modules.get(node.target), node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        conv = modules.get(prev.target)
        if (
            conv is not None
            and bn is not None
            and _PAIRS.get(type(conv)) is type(bn)
            and sites[node.target] == 1
            and sites[prev.target] == 1
            and getattr(bn, "track_running_stats", False)
        ):
            pairs.append((conv, bn))
    return pairs


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether the pair can fold in this pass: eval mode, running statistics, no hook that would
    see a folded value, no ``forward`` of their own."""
    return (
        not conv.training
        and not bn.training
        and getattr(bn, "running_mean", None) is not None
        and getattr(bn, "running_var", None) is not None
        and not conv._forward_hooks
        and not bn._forward_hooks
        and not bn._forward_pre_hooks
        and "forward" not in conv.__dict__
        and "forward" not in bn.__dict__
    )


def _run(model: nn.Module, inputs: Any, pairs: list[Pair]) -> tuple[Any, list[Pair]]:
    """``model(inputs)`` with ``pairs`` folded; also the pairs whose folded output did not reach
    their BatchNorm (the pass is then wrong for them)."""
    pending: dict[int, Tensor] = {}

    def conv_forward(conv: nn.Module, bn: nn.Module) -> Callable[[Tensor], Tensor]:
        def forward(input: Tensor) -> Tensor:
            out = fold_conv_bn(conv, bn, input)
            pending[id(bn)] = out
            return out

        return forward

    def bn_forward(bn: nn.Module) -> Callable[[Tensor], Tensor]:
        own = type(bn).forward.__get__(bn)

        def forward(input: Tensor) -> Tensor:
            if pending.get(id(bn)) is input:  # (its convolution's folded output)
                del pending[id(bn)]
                return input
            return own(input)  # type: ignore[no-any-return]

        return forward

    for conv, bn in pairs:
        conv.__dict__["forward"] = conv_forward(conv, bn)
        bn.__dict__["forward"] = bn_forward(bn)
    try:
        out = model(inputs)
    finally:
        for conv, bn in pairs:
            del conv.__dict__["forward"], bn.__dict__["forward"]
    return out, [(c, b) for c, b in pairs if id(b) in pending]


class FoldedForward:
    """``forward(model, inputs)``: ``model(inputs)``, with the foldable pairs folded. Call it
    only with the model in eval mode and without gradients."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._pairs: list[Pair] = []
        self._checked = False

    def pairs(self, model: nn.Module) -> list[Pair]:
        """The pairs that fold in the next pass of ``model`` (after its first, checked one)."""
        if self._key != self._key_of(model) or not self._checked:
            return []
        return [(c, b) for c, b in self._pairs if _foldable(c, b)]

    def __call__(self, model: nn.Module, inputs: Any) -> Any:
        key = self._key_of(model)
        if key != self._key:  # (first call, or the model's modules were replaced)
            self._key, self._pairs, self._checked = key, find_pairs(model), False
        active = [(c, b) for c, b in self._pairs if _foldable(c, b)]
        if not active or _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return model(inputs)
        try:
            got, missed = _run(model, inputs, active)
        except Exception:  # (the model itself decides: run it as it is)
            self._pairs = []
            return model(inputs)
        if missed:  # (a folded output went elsewhere: no fold for that pair)
            self._pairs = [p for p in self._pairs if p not in missed]
            return model(inputs)
        if self._checked:
            return got
        # the first folded pass is checked against the model itself (run second, so that
        # hooks, e.g. the callback's on the head, see the model's own pass last)
        self._checked = True
        want = model(inputs)
        if not _close(got, want):
            self._pairs = []
        return want

    @staticmethod
    def _key_of(model: nn.Module) -> tuple[int, ...]:
        return tuple(id(m) for m in model.modules())


def _close(got: Any, want: Any) -> bool:
    """Equal up to the rounding a fold can change: the same non-finite entries, the finite
    ones within √ε of the dtype relative to the outputs' largest magnitude."""
    if not (isinstance(got, Tensor) and isinstance(want, Tensor)):
        return False
    if got.shape != want.shape or got.dtype != want.dtype or not want.is_floating_point():
        return False
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)):
        return False
    a, b = got[~finite], want[~finite]
    if not bool(((a == b) | (a.isnan() & b.isnan())).all()):
        return False
    g, w = got[finite], want[finite]
    if w.numel() == 0:
        return True
    tol = math.sqrt(torch.finfo(want.dtype).eps)
    return bool(torch.allclose(g, w, rtol=tol, atol=tol * float(w.abs().max())))
