"""The proxy pass's forward: the model with each eval-mode BatchNorm folded into the convolution
before it.

In eval mode a BatchNorm is an affine map per channel, y = γ (x − μ) / √(σ² + ε) + β, so after
a convolution it can be folded into the convolution's weight and bias (as inference runtimes
do): one pass over the activations instead of two. On a 2-core CPU the example SmallCNN's
proxy pass took 10 to 15% less time with it (``benchmarks/bench_proxies.py``).

:class:`FoldedForward` finds the pairs once per model structure with a symbolic trace
(:class:`torch.fx.Tracer`; the modules' attributes, and the lists, dicts and sets they hold,
are restored after it): a convolution called at one place whose output goes only to a
BatchNorm of the same kind, itself called at one place. The trace only finds them: the model
itself runs, with, for the duration of one forward pass, each paired convolution's ``forward``
computing the folded convolution and each paired BatchNorm's ``forward`` passing that output
on (and normalising anything else it is given). So the model's own code, attributes and hooks
stay live. While the pass runs, a :class:`~torch.overrides.TorchFunctionMode` watches each
folded output: if anything but its BatchNorm uses it (an in-place change, a second use, the
convolution called again first), or it never reaches its BatchNorm, the pass runs again
unfolded and the pair is not folded again. A pair is skipped while a forward hook would see a
folded value (on the convolution, the BatchNorm, or a module that holds one of them but not
the other), and the first pass with a new set of pairs is checked against the model itself;
any disagreement or error, and the model runs as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module
from torch.overrides import TorchFunctionMode

__all__ = ["FoldedForward", "Pair", "find_pairs"]

_KINDS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}
# tensor attributes whose reading does not depend on the values (a folded output reads alike)
_METADATA = frozenset({"shape", "ndim", "dtype", "device", "layout", "is_cuda", "requires_grad"})


@dataclass(eq=False)
class Pair:
    """A convolution and the BatchNorm it feeds; ``between``: the modules that hold one of the
    two but not the other (their hooks would see a folded value)."""

    conv: nn.Module
    bn: nn.Module
    between: list[nn.Module] = field(default_factory=list)
    cache: tuple[Any, ...] = ()  # (the folded weight and bias, and what they were made from)

    def foldable(self) -> bool:
        """Eval mode, running statistics, no hook that would see a folded value, no
        ``forward`` of their own."""
        conv, bn = self.conv, self.bn
        return (
            not conv.training
            and not bn.training
            and getattr(bn, "running_mean", None) is not None
            and getattr(bn, "running_var", None) is not None
            and not conv._forward_hooks
            and not bn._forward_hooks
            and not bn._forward_pre_hooks
            and not any(m._forward_hooks or m._forward_pre_hooks for m in self.between)
            and "forward" not in conv.__dict__
            and "forward" not in bn.__dict__
        )

    def folded(self) -> tuple[Tensor, Tensor]:
        """The folded weight and bias, made again when any of their sources changed."""
        conv, bn = self.conv, self.bn
        sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        # (in-place changes bump a tensor's version; ``.data = ...`` gives it new memory)
        key = (*((id(t), t._version, t.data_ptr()) for t in sources if t is not None), bn.eps)
        if not self.cache or self.cache[0] != key:
            self.cache = (key, *fold_conv_bn(conv, bn))
        return self.cache[1], self.cache[2]


def fold_conv_bn(conv: Any, bn: Any) -> tuple[Tensor, Tensor]:
    """The weight and bias of one convolution equal to ``bn(conv(x))`` in eval mode."""
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
    return weight.to(dtype), shift.to(dtype)


def find_pairs(model: nn.Module) -> list[Pair]:
    """The (convolution, BatchNorm) pairs of ``model`` that can fold, from a symbolic trace;
    none when the model has no convolution and BatchNorm of one kind or cannot be traced."""
    kinds = {type(m) for m in model.modules()}
    if not any(conv in kinds and bn in kinds for conv, bn in _KINDS.items()):
        return []
    with _restored(model):  # (tracing runs forward on symbolic values)
        try:
            graph = fx.Tracer().trace(model)
        except Exception:  # (data-dependent control flow, unsupported inputs: no fold)
            return []
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
            and _KINDS.get(type(conv)) is type(bn)
            and sites[node.target] == 1
            and sites[prev.target] == 1
        ):
            one_sided = _ancestors(str(prev.target)) ^ _ancestors(str(node.target))
            pairs.append(Pair(conv, bn, [modules[n] for n in sorted(one_sided) if n in modules]))
    return pairs


def _ancestors(name: str) -> set[str]:
    """The qualified names of the modules that hold ``name`` (not itself, not the root)."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put every module's attributes back as they were, and the lists, dicts and sets they
    hold (one level deep), after the block."""
    saved = []
    for m in model.modules():
        held = [(v, v.copy()) for v in m.__dict__.values() if isinstance(v, (list, dict, set))]
        saved.append((m, dict(m.__dict__), held))
    try:
        yield
    finally:
        for m, attrs, held in saved:
            for container, copy in held:
                container.clear()
                if isinstance(container, list):
                    container.extend(copy)
                else:
                    container.update(copy)
            m.__dict__.clear()
            m.__dict__.update(attrs)


class _Watch(TorchFunctionMode):
    """Notes the pairs whose folded output anything but their BatchNorm uses."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, tuple[Tensor, Pair]] = {}  # folded outputs, by id
        self.pending: dict[int, Tensor] = {}  # per pair (by id): an output not yet passed on
        self.bad: set[int] = set()  # the pairs (by id) whose output went astray
        self.own = 0  # > 0 inside the fold's own operations

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self.own and self.outputs and not _is_metadata(func):
            self.note((*args, *kwargs.values()))
        return func(*args, **kwargs)

    def note(self, values: tuple[Any, ...]) -> None:
        """Mark the pairs whose folded output is among ``values`` (or one level inside)."""
        for value in values:
            if isinstance(value, dict):
                value = tuple(value.values())
            for item in value if isinstance(value, (list, tuple)) else (value,):
                found = self.outputs.get(id(item))
                if found is not None and found[0] is item:
                    self.bad.add(id(found[1]))

    @contextmanager
    def own_ops(self) -> Iterator[None]:
        self.own += 1
        try:
            yield
        finally:
            self.own -= 1


def _is_metadata(func: Any) -> bool:
    owner = getattr(func, "__self__", None)
    return (
        getattr(func, "__name__", "") == "__get__" and getattr(owner, "__name__", "") in _METADATA
    )


def _run(model: nn.Module, inputs: Any, pairs: list[Pair]) -> tuple[Any, list[Pair]]:
    """``model(inputs)`` with ``pairs`` folded; also the pairs whose folded output went anywhere
    but to their BatchNorm, once (the pass is then wrong for them)."""
    watch = _Watch()

    def conv_forward(pair: Pair) -> Callable[[Tensor], Tensor]:
        def forward(input: Tensor) -> Tensor:
            with watch.own_ops():
                weight, bias = pair.folded()
                out: Tensor = pair.conv._conv_forward(input, weight, bias)  # type: ignore[operator]
            watch.outputs[id(out)] = (out, pair)
            watch.pending[id(pair)] = out
            return out

        return forward

    def bn_forward(pair: Pair) -> Callable[[Tensor], Tensor]:
        own = type(pair.bn).forward.__get__(pair.bn)

        def forward(input: Tensor) -> Tensor:
            found = watch.outputs.get(id(input))
            if found is not None and found[1] is pair and watch.pending.get(id(pair)) is input:
                del watch.pending[id(pair)]
                with watch.own_ops():  # (a new tensor: later uses of the output show)
                    return input.view_as(input)
            return own(input)  # type: ignore[no-any-return]  # (the watch sees a folded input)

        return forward

    for pair in pairs:
        pair.conv.__dict__["forward"] = conv_forward(pair)
        pair.bn.__dict__["forward"] = bn_forward(pair)
    try:
        with watch:
            out = model(inputs)
        watch.note((out,))  # (a folded output returned as it is)
    finally:
        for pair in pairs:
            del pair.conv.__dict__["forward"], pair.bn.__dict__["forward"]
    return out, [p for p in pairs if id(p) in watch.bad or id(p) in watch.pending]


class FoldedForward:
    """``forward(model, inputs)``: ``model(inputs)``, with the foldable pairs folded. Call it
    only with the model in eval mode and without gradients."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._pairs: list[Pair] = []
        self._checked: set[int] = set()  # the pairs (by id) checked against the model

    def pairs(self, model: nn.Module) -> list[Pair]:
        """The pairs that fold in the next pass of ``model`` (checked ones)."""
        if self._key != self._key_of(model):
            return []
        return [p for p in self._pairs if id(p) in self._checked and p.foldable()]

    def __call__(self, model: nn.Module, inputs: Any) -> Any:
        key = self._key_of(model)
        if key != self._key:  # (first call, or the model's modules were replaced)
            self._key, self._pairs, self._checked = key, find_pairs(model), set()
        active = [p for p in self._pairs if p.foldable()]
        if not active or _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return model(inputs)
        try:
            got, astray = _run(model, inputs, active)
        except Exception:  # (the model itself decides: run it as it is)
            self._pairs = []
            return model(inputs)
        if astray:  # (a folded output went elsewhere: no fold for those pairs)
            self._pairs = [p for p in self._pairs if p not in astray]
            return model(inputs)
        if all(id(p) in self._checked for p in active):
            return got
        # a pass with a pair not yet checked is checked against the model itself (run second,
        # so that hooks, e.g. the callback's on the head, see the model's own pass last)
        want = model(inputs)
        if _close(got, want):
            self._checked.update(id(p) for p in active)
        else:
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
