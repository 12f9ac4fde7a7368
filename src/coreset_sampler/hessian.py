"""Hessian-vector products and Hutchinson's estimate of the Hessian diagonal.

:func:`hessian_vector_product` and :func:`hutchinson_diagonal` are pure functions: they take a
function of a tuple of parameter tensors and return tuples of tensors, one per parameter.
:class:`CoresetCurvature` applies them to a coreset's weighted loss of a model's parameters,
as :class:`~coreset_sampler.monitor.QuadraticLossMonitor` needs at each anchor.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from coreset_sampler._checks import check_positive_int

__all__ = ["hessian_vector_product", "hutchinson_diagonal"]

logger = logging.getLogger(__name__)

Params = tuple[Tensor, ...]
ScalarFn = Callable[[Params], Tensor]


def hessian_vector_product(
    func: ScalarFn, params: Sequence[Tensor], tangents: Sequence[Tensor]
) -> tuple[Params, Params]:
    r"""Gradient and Hessian-vector product of a scalar function, forward-over-reverse.

    Returns (∇f(θ), ∇²f(θ)·v) computed as ``torch.func.jvp(torch.func.grad(func), (θ,), (v,))``:
    one forward-mode pass through the reverse-mode gradient, about the cost of two backward
    passes, never the d×d Hessian.

    Args:
        func: ``func(params_tuple) -> scalar tensor``.
        params: θ, the point of evaluation.
        tangents: v, one tensor per parameter with the same shapes.

    Returns:
        ``(grads, hvps)``, tuples with one tensor per parameter.

    Examples:
        >>> import torch
        >>> f = lambda p: (p[0] ** 3).sum()
        >>> g, hv = hessian_vector_product(f, (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
        >>> g[0], hv[0]
        (tensor([ 3., 12.]), tensor([ 6., 12.]))
    """
    primals = tuple(p.detach() for p in params)
    tans = tuple(t.detach() for t in tangents)
    _same_shapes("tangents", primals, tans)
    with warnings.catch_warnings():
        # torch loads its forward-AD decompositions through the deprecated torch.jit.script on
        # first use (torch 2.13); that warning is torch's, not the caller's
        warnings.filterwarnings("ignore", r".*torch\.jit\.script.*", DeprecationWarning)
        # the transforms differentiate w.r.t. ``params`` regardless; no_grad keeps ordinary
        # autograd from recording a graph through other tensors that require grad (the
        # untracked parameters when only a subset is tracked)
        with torch.no_grad():
            out = jvp(grad(func), (primals,), (tans,))
    return tuple(t.detach() for t in out[0]), tuple(t.detach() for t in out[1])


def hutchinson_diagonal(
    func: ScalarFn,
    params: Sequence[Tensor],
    *,
    generator: torch.Generator,
    num_probes: int = 1,
    method: Literal["jvp", "double_backward"] = "jvp",
) -> tuple[Params, Params]:
    r"""Hutchinson estimate of the Hessian diagonal (and the exact gradient) of a scalar function.

    .. math:: \operatorname{diag}(H) ≈ \frac1k \sum_{j=1}^k z_j ⊙ H z_j,
              \qquad z_j ∈ \{-1, +1\}^d \text{ Rademacher},

    unbiased, with per-entry variance Σ_{j≠i} H_ij² / k (exact for a diagonal H). The Hessian-
    vector products are forward-over-reverse (:func:`hessian_vector_product`) or, with
    ``method="double_backward"``, ``torch.autograd.grad`` twice (``params`` must then be the
    tensors ``func`` really uses, requiring grad). Used by CREST (Yang et al., ICML 2023) after
    AdaHessian (Yao et al., AAAI 2021).

    Args:
        func: ``func(params_tuple) -> scalar tensor``.
        params: the point of evaluation.
        generator: source of the probes (probes are drawn on its device, then moved).
        num_probes: k ≥ 1.
        method: ``"jvp"`` or ``"double_backward"``.

    Returns:
        ``(grads, diagonal)``, tuples with one tensor per parameter.

    Raises:
        ValueError: for ``num_probes < 1``, an unknown method, or a ``func`` that does not
            depend on ``params`` (double backward).

    Examples:
        >>> import torch
        >>> f = lambda p: (torch.tensor([1.0, 2.0, 3.0]) * p[0] ** 2).sum()
        >>> gen = torch.Generator().manual_seed(0)
        >>> g, d = hutchinson_diagonal(f, (torch.ones(3),), generator=gen)
        >>> d[0]
        tensor([2., 4., 6.])
    """
    check_positive_int("num_probes", num_probes)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator should be a torch.Generator, but got {type(generator).__name__}"
        )
    params = tuple(params)
    if method == "jvp":
        grads: Params | None = None
        acc = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        for _ in range(num_probes):
            z = _rademacher(params, generator)
            g, hz = hessian_vector_product(func, params, z)
            grads = g if grads is None else grads
            for a, zi, hi in zip(acc, z, hz, strict=True):
                a.addcmul_(zi, hi)
        assert grads is not None
        return tuple(g.detach() for g in grads), tuple(a.div_(num_probes) for a in acc)
    if method == "double_backward":
        return _hutchinson_double_backward(func, params, generator, num_probes)
    raise ValueError(f"method should be 'jvp' or 'double_backward', but got method={method!r}")


def _hutchinson_double_backward(
    func: ScalarFn, params: Params, generator: torch.Generator, num_probes: int
) -> tuple[Params, Params]:
    with torch.enable_grad():
        loss = func(params)
        if not loss.requires_grad:
            raise ValueError(
                "the loss does not require grad: loss_fn must return losses built from the "
                "tracked parameters, with graph (not under torch.no_grad, not detached)"
            )
        raw = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = tuple(
            torch.zeros_like(p) if g is None else g for p, g in zip(params, raw, strict=True)
        )
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        acc = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        for _ in range(num_probes):
            z = _rademacher(params, generator)
            if not live:
                continue
            hz = torch.autograd.grad(
                [grads[i] for i in live],
                params,
                grad_outputs=[z[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            for a, zi, hi in zip(acc, z, hz, strict=True):
                if hi is not None:
                    a.addcmul_(zi, hi.detach())
    return tuple(g.detach() for g in grads), tuple(a.div_(num_probes) for a in acc)


def _rademacher(params: Params, generator: torch.Generator) -> Params:
    out = []
    for p in params:
        z = torch.randint(0, 2, p.shape, generator=generator, device=generator.device)
        out.append(z.to(device=p.device, dtype=p.dtype).mul_(2).sub_(1))
    return tuple(out)


def _same_shapes(name: str, params: Params, others: Params) -> None:
    if len(others) != len(params) or any(
        a.shape != b.shape for a, b in zip(params, others, strict=True)
    ):
        raise ValueError(
            f"{name} should match params in number and shapes, but got "
            f"{[tuple(t.shape) for t in others]} for {[tuple(p.shape) for p in params]}"
        )


# --------------------------------------------------------------------------- on a model


class CoresetCurvature:
    """Gradient and Hutchinson diagonal of one coreset's γ-weighted loss, by
    forward-over-reverse Hessian-vector products, falling back once and for all to double
    backward (``hvp="auto"``) where an operation lacks forward-mode AD."""

    def __init__(
        self,
        loss_fn: Callable[[list[int]], Tensor],
        params: list[Tensor],
        module: nn.Module | None,
        names: list[str] | None,
        generator: torch.Generator,
        num_probes: int,
    ) -> None:
        self.loss_fn, self.params, self.module, self.names = loss_fn, params, module, names
        self.generator, self.num_probes = generator, num_probes
        self.hvp = "double_backward"  # set by the monitor

    def estimate(self, idx: list[int], w: Tensor, k: int) -> tuple[Params, Params]:
        func = self._objective(idx, w, k)
        params = tuple(self.params)
        if self.hvp != "double_backward":
            state = self.generator.get_state()
            try:
                return hutchinson_diagonal(
                    func, params, generator=self.generator, num_probes=self.num_probes
                )
            except (RuntimeError, NotImplementedError) as err:
                if self.hvp != "auto":
                    raise
                logger.warning(
                    "forward-mode AD failed (%s); computing Hessian-vector products by double "
                    "backward from now on",
                    err,
                )
                self.hvp = "double_backward"
                self.generator.set_state(state)
        return hutchinson_diagonal(
            func,
            params,
            generator=self.generator,
            num_probes=self.num_probes,
            method="double_backward",
        )

    def _objective(self, idx: list[int], w: Tensor, k: int) -> ScalarFn:
        call = f"anchor, coresets[{k}]"

        def eager() -> Tensor:
            losses = checked_losses(self.loss_fn, idx, call)
            return (w.to(losses) * losses).mean()

        names, module = self.names, self.module
        if names is None or module is None:
            return lambda _params: eager()
        return lambda params: _call_with(module, names, params, eager)


def checked_losses(loss_fn: Callable[[list[int]], Tensor], indices: list[int], call: str) -> Tensor:
    """``loss_fn(indices)``, checked: a floating ``[len(indices)]`` tensor (``call`` names the
    call in the messages)."""
    losses = loss_fn(indices)
    if not isinstance(losses, Tensor) or not losses.is_floating_point():
        what = f"dtype {losses.dtype}" if isinstance(losses, Tensor) else type(losses).__name__
        raise TypeError(
            f"loss_fn(indices) in {call} should return a floating tensor, but got {what}"
        )
    if losses.shape != (len(indices),):
        raise ValueError(
            f"loss_fn(indices) in {call} returned shape {tuple(losses.shape)} for "
            f"{len(indices)} indices; expected ({len(indices)},)"
        )
    return losses


class _Closure(nn.Module):
    """Wraps a closure over ``model`` so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[], Tensor]) -> None:
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self) -> Tensor:
        return self._fn()


def _call_with(
    module: nn.Module, names: list[str], params: Params, fn: Callable[[], Tensor]
) -> Tensor:
    wrapper = _Closure(module, fn)
    mapping = {f"model.{n}": p for n, p in zip(names, params, strict=True)}
    out: Tensor = functional_call(wrapper, mapping, ())
    return out
