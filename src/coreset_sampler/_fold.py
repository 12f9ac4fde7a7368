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
folded output (weakly): if any torch operation but its BatchNorm uses it (an in-place change, a
second use; reading its shape aside), or it is still held after the pass anywhere but under
what the model returned (an attribute, say), the pass runs again unfolded and the pair is not
folded again. A pair is skipped while a forward hook would see a folded value (on the
convolution, the BatchNorm, or a module that holds one of them but not the other), a model
with TorchScript modules is not folded (scripted code runs unwatched), and the first pass with
a pair not yet checked is checked against the model itself; on a disagreement, or a second
error, the model runs as it is from then on. Not watched: a folded output passed to a
TorchScript function called from Python, or read through ``torch._C.DisableTorchFunction``.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode

__all__ = ["FoldedForward", "Pair", "find_pairs"]

_KINDS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}
# tensor attributes and methods whose reading does not depend on the values (a folded output
# reads alike)
_METADATA = frozenset(
    {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "requires_grad", "size", "dim",
     "numel", "nelement", "stride", "is_contiguous", "element_size", "is_floating_point",
     "get_device"}
)  # fmt: skip


@dataclass(eq=False)
class Pair:
    """A convolution and the BatchNorm it feeds; ``between``: the modules that hold one of the
    two but not the other (their hooks would see a folded value)."""

    conv: nn.Module
    bn: nn.Module
    between: list[nn.Module] = field(default_factory=list)
    cache: tuple[Any, ...] = ()  # (what the folded weight and bias were made from, and them)

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
        """The folded weight and bias, made again when any of their sources changed: another
        tensor (held weakly, so a new one cannot pass for it), an in-place change (its
        version), new memory (``.data = ...``, which leaves the version), another ε."""
        conv, bn = self.conv, self.bn
        named: tuple[Any, ...] = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                  bn.running_var)  # fmt: skip
        sources = [t for t in named if t is not None]
        stamp = [(t._version, t.data_ptr()) for t in sources] + [bn.eps]
        if self.cache:
            refs, then, weight, bias = self.cache
            same = len(refs) == len(sources) and all(
                r() is t for r, t in zip(refs, sources, strict=True)
            )
            if same and then == stamp:
                return weight, bias
        weight, bias = fold_conv_bn(conv, bn)
        self.cache = ([weakref.ref(t) for t in sources], stamp, weight, bias)
        return weight, bias


def fold_conv_bn(conv: Any, bn: Any) -> tuple[Tensor, Tensor]:
    """The weight and bias of one convolution equal to ``bn(conv(x))`` in eval mode."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return weight.detach(), bias.detach()


def find_pairs(model: nn.Module) -> list[Pair]:
    """The (convolution, BatchNorm) pairs of ``model`` that can fold, from a symbolic trace;
    none when the model has no convolution and BatchNorm of one kind or cannot be traced."""
    kinds = {type(m) for m in model.modules()}
    if not any(conv in kinds and bn in kinds for conv, bn in _KINDS.items()):
        return []
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return []  # (TorchScript runs past the watch on folded outputs)
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
    """Notes the pairs whose folded output anything but their BatchNorm uses. It holds the
    outputs weakly: one the model has let go of needs no watching."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, tuple[weakref.ref[Tensor], Pair]] = {}  # by the output's id
        self.pending: dict[int, weakref.ref[Tensor]] = {}  # per pair: not yet passed on
        self.bad: set[int] = set()  # the pairs (by id) whose output went astray
        self.own = 0  # > 0 inside the fold's own operations

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self.own and self.outputs and not _is_metadata(func):
            self.note((*args, *kwargs.values()))
        return func(*args, **kwargs)

    def add(self, out: Tensor, pair: Pair) -> None:
        key = id(out)

        def gone(_: object) -> None:  # (freed: its id may come back for another tensor)
            self.outputs.pop(key, None)

        self.outputs[key] = (weakref.ref(out, gone), pair)
        self.pending[id(pair)] = weakref.ref(out)

    def pair_of(self, item: Any) -> Pair | None:
        """The pair whose folded output ``item`` is, if it is one."""
        found = self.outputs.get(id(item))
        return found[1] if found is not None and found[0]() is item else None

    def note(self, values: tuple[Any, ...]) -> None:
        """Mark the pairs whose folded output is among ``values`` (or one level inside)."""
        for value in values:
            if isinstance(value, dict):
                value = tuple(value.values())
            for item in value if isinstance(value, (list, tuple)) else (value,):
                pair = self.pair_of(item)
                if pair is not None:
                    self.bad.add(id(pair))

    def astray(self, out: Any, pairs: list[Pair]) -> list[Pair]:
        """After the pass: the pairs whose output was used elsewhere, or is still held anywhere
        but as the base of what the model returned (kept in an attribute, say, whether or not
        it reached its BatchNorm)."""
        self.note((out,))  # (a folded output returned as it is)
        returned = out.values() if isinstance(out, dict) else out
        returned = returned if isinstance(returned, (list, tuple)) else (returned,)
        bases = {id(getattr(o, "_base", None)) for o in returned if isinstance(o, Tensor)}
        for ref, pair in list(self.outputs.values()):
            held = ref()
            if held is not None and id(held) not in bases:
                self.bad.add(id(pair))
        return [p for p in pairs if id(p) in self.bad]

    @contextmanager
    def own_ops(self) -> Iterator[None]:
        self.own += 1
        try:
            yield
        finally:
            self.own -= 1


def _is_metadata(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # (an attribute: named by its descriptor)
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name in _METADATA


def _run(model: nn.Module, inputs: Any, pairs: list[Pair]) -> tuple[Any, list[Pair]]:
    """``model(inputs)`` with ``pairs`` folded; also the pairs whose folded output went anywhere
    but to their BatchNorm, once (the pass is then wrong for them)."""
    watch = _Watch()

    def conv_forward(pair: Pair) -> Callable[[Tensor], Tensor]:
        def forward(input: Tensor) -> Tensor:
            with watch.own_ops():
                weight, bias = pair.folded()
                out: Tensor = pair.conv._conv_forward(input, weight, bias)  # type: ignore[operator]
            watch.add(out, pair)
            return out

        return forward

    def bn_forward(pair: Pair) -> Callable[[Tensor], Tensor]:
        own = type(pair.bn).forward.__get__(pair.bn)

        def forward(input: Tensor) -> Tensor:
            pending = watch.pending.get(id(pair))
            if pending is not None and pending() is input:
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
    finally:
        for pair in pairs:
            del pair.conv.__dict__["forward"], pair.bn.__dict__["forward"]
    return out, watch.astray(out, pairs)


class FoldedForward:
    """``forward(model, inputs)``: ``model(inputs)``, with the foldable pairs folded. Call it
    only with the model in eval mode and without gradients."""

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._pairs: list[Pair] = []
        self._checked: set[int] = set()  # the pairs (by id) checked against the model
        self._failures = 0  # folded passes that raised

    def pairs(self, model: nn.Module) -> list[Pair]:
        """The pairs that fold in the next pass of ``model`` (checked ones)."""
        if self._key != self._key_of(model):
            return []
        return [p for p in self._pairs if id(p) in self._checked and p.foldable()]

    def __call__(self, model: nn.Module, inputs: Any) -> Any:
        key = self._key_of(model)
        if key != self._key:  # (first call, or the model's modules were replaced)
            self._key, self._pairs, self._checked = key, find_pairs(model), set()
            self._failures = 0
        active = [p for p in self._pairs if p.foldable()]
        if not active or _module._global_forward_hooks or _module._global_forward_pre_hooks:
            return model(inputs)
        try:
            got, astray = _run(model, inputs, active)
        except Exception:  # (the model itself decides: run it as it is; after a second
            failed = True  # failure, from now on)
        else:
            failed = False
        if failed:
            self._failures += 1
            if self._failures >= 2:
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
