r"""Local quadratic model of the loss that decides when CREST reselects its coresets.

CREST (Yang, Kang, Mirzasoleiman, "Towards Sustainable Learning: Coresets for Data-efficient Deep
Learning", ICML 2023, §4.2) keeps training on the same mini-batch coresets while a second-order
Taylor model of the loss, built right after the selection at parameters w_ℓ, still predicts the
loss on a small random check sample V_r:

.. math::

    F(δ) = L_0 + gᵀδ + ½ δᵀ \operatorname{diag}(H) δ, \qquad
    ρ = \frac{|L_r(w_t) - F(δ)|}{L_r(w_t)}, \qquad δ = w_t - w_ℓ,

with g the (EMA-smoothed) gradient and diag(H) the (EMA-smoothed) Hutchinson estimate of the
Hessian diagonal of the γ-weighted coreset loss, and L_0 = L_r(w_ℓ). When ρ > τ the sampler
reselects; the next check interval is T1 = ⌈h·‖H_0‖/‖H_ℓ‖⌉.

The pure pieces (:func:`hessian_vector_product`, :func:`hutchinson_diagonal`) take a function of
a tuple of parameter tensors; :class:`QuadraticLossMonitor` is the thin stateful layer on top.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from coreset_sampler._validation import check_positive_int, check_real

from .gradients import _check_indices, _eval_mode, _unwrap

__all__ = [
    "AnchorReport",
    "CheckReport",
    "PerSampleLoss",
    "QuadraticLossMonitor",
    "hessian_vector_product",
    "hutchinson_diagonal",
]

logger = logging.getLogger(__name__)

Params = tuple[Tensor, ...]
ScalarFn = Callable[[Params], Tensor]


class PerSampleLoss(Protocol):
    """Per-sample losses of the given examples, differentiable in the model parameters.

    ``loss_fn(indices)`` returns a floating tensor of shape ``[len(indices)]`` built from the
    model's current parameters, with graph (the monitor differentiates it at an anchor and wraps
    the check in :func:`torch.no_grad`). It must not change the model's mode: the monitor puts
    the model in eval mode around every call (when it knows the model) and restores it after.
    :meth:`coreset_sampler.gradients.GradientProxyCallback.per_sample_loss` is one.
    """

    def __call__(self, indices: Sequence[int]) -> Tensor: ...


@dataclass(frozen=True)
class AnchorReport:
    """What :meth:`QuadraticLossMonitor.anchor` measured.

    Attributes:
        seconds: wall time of the anchor.
        loss0: L_0, mean loss of the check sample at the anchor (eval mode).
        grad_norm: ‖g‖ of the smoothed, bias-corrected gradient.
        hessian_norm: ‖H_ℓ‖ of the smoothed Hessian diagonal (sqrt(EMA) + ε).
        interval: T1 = ⌈h·‖H_0‖/‖H_ℓ‖⌉, the number of steps until the next check.
        num_examples: examples differentiated (sum of the coreset sizes).
        hvp: how the Hessian-vector products were computed (``"jvp"`` or ``"double_backward"``).
    """

    seconds: float
    loss0: float
    grad_norm: float
    hessian_norm: float
    interval: int
    num_examples: int
    hvp: str


@dataclass(frozen=True)
class CheckReport:
    """What :meth:`QuadraticLossMonitor.check` measured.

    Attributes:
        rho: ρ = |L_r − F(δ)| / L_r.
        reselect: ρ > threshold.
        interval: T1 in use (the next :meth:`~QuadraticLossMonitor.anchor` recomputes it).
        loss: L_r, mean loss of the check sample now (eval mode).
        predicted: F(δ), the quadratic model's prediction of ``loss``.
        seconds: wall time of the check.
        delta_norm: ‖δ‖ = ‖w_t − w_ℓ‖ over the tracked parameters.
    """

    rho: float
    reselect: bool
    interval: int
    loss: float
    predicted: float
    seconds: float
    delta_norm: float


# --------------------------------------------------------------------------- pure functions


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


# --------------------------------------------------------------------------- the monitor


class QuadraticLossMonitor:
    r"""Decides when to reselect coresets by checking a local quadratic model of the loss.

    At an **anchor** (right after a selection, parameters w_ℓ) the monitor computes, for the
    γ-weighted coreset loss averaged over the P coresets,
    L_S(w) = (1/P) Σ_p mean_{i∈S_p} γ_i ℓ_i(w):

    * g: its gradient, smoothed m_t = β1 m_{t−1} + (1−β1) ∇L_S, bias-corrected m_t/(1−β1^t);
    * diag(H): Hutchinson's estimate D of its Hessian diagonal (one set of Rademacher probes per
      coreset), smoothed v_t = β2 v_{t−1} + (1−β2) D², used as sqrt(v_t/(1−β2^t)) + ε
      (AdaHessian's form; always positive); the EMAs carry over between anchors;
    * ‖H_ℓ‖ (the first is ‖H_0‖), a snapshot of the tracked parameters, and L_0, the mean loss
      of the check sample V_r.

    A **check** (every T1 steps) reads the parameters w_t, so any optimizer (momentum, weight
    decay, Adam) is accounted for, and returns ρ = |L_r(w_t) − F(δ)| / L_r(w_t) with
    F(δ) = L_0 + gᵀδ + ½ δᵀ diag(H) δ, δ = w_t − w_ℓ. It evaluates exactly |V_r| examples,
    never the training set, and adds nothing to the training step. The interval is
    T1 = max(1, ⌈h·‖H_0‖/‖H_ℓ‖⌉) (CREST, Yang, Kang, Mirzasoleiman, ICML 2023, §4.2; the
    paper's default τ = 0.05, h = 1).

    **Mode.** All evaluations (gradient, HVPs, L_0, L_r) run in eval mode, so the model, L_0
    and L_r are the same function of w (no batch statistics, no dropout) and ρ = 0 at δ = 0.
    The monitor switches the model (``params`` if it is a module, else ``module``) to eval and
    restores every submodule's flag after; ``loss_fn`` itself must not switch modes. Without a
    module, ``loss_fn`` is responsible for its mode.

    **Memory.** One copy of the tracked parameters (the snapshot) and two EMA buffers; pass a
    subset (e.g. ``model.fc.parameters()`` with ``module=model``) for large networks, as the
    paper did for RoBERTa.

    Args:
        params: the model (all its parameters that require grad are tracked) or an iterable of
            the parameters to track.
        loss_fn: per-sample losses with graph, see :class:`PerSampleLoss`.
        threshold: τ ≥ 0, reselect when ρ > τ.
        interval_multiplier: h > 0.
        beta1: β1 ∈ [0, 1) for the gradient EMA (0: no smoothing).
        beta2: β2 ∈ [0, 1) for the EMA of the squared Hessian diagonal (0: no smoothing).
        eps: ε > 0 added to the Hessian diagonal.
        num_probes: Rademacher probes per coreset and anchor.
        seed: seed of the probe generator (0 when neither ``seed`` nor ``generator`` is given).
        generator: probe generator (instead of ``seed``).
        module: the model owning ``params`` when ``params`` is an iterable: it is switched to
            eval mode and used for ``torch.func`` (without it: double backward).
        hvp: ``"auto"`` (forward-over-reverse, falling back to double backward if an operation
            lacks forward-mode AD), ``"jvp"`` or ``"double_backward"``.
        max_interval: optional upper bound on T1.

    Raises:
        TypeError: on arguments of the wrong type.
        ValueError: on invalid values.

    Examples:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
        >>> model = torch.nn.Linear(5, 3)
        >>> def loss_fn(indices):
        ...     i = torch.as_tensor(list(indices))
        ...     return torch.nn.functional.cross_entropy(model(x[i]), y[i], reduction="none")
        >>> monitor = QuadraticLossMonitor(model, loss_fn, seed=0)
        >>> coresets, weights = [range(0, 16), range(16, 32)], [torch.ones(16)] * 2
        >>> report = monitor.anchor(coresets, weights, check_indices=range(32, 64))
        >>> report.interval
        1
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(0.01)
        >>> check = monitor.check()
        >>> check.rho < 0.05, check.reselect
        (True, False)
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | nn.Module,
        loss_fn: PerSampleLoss,
        *,
        threshold: float = 0.05,
        interval_multiplier: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-4,
        num_probes: int = 1,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        module: nn.Module | None = None,
        hvp: Literal["auto", "jvp", "double_backward"] = "auto",
        max_interval: int | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn should be callable, but got {type(loss_fn).__name__}")
        self._loss_fn = loss_fn
        self.threshold = check_real("threshold", threshold, low=0.0)
        self.interval_multiplier = check_real(
            "interval_multiplier", interval_multiplier, low=0.0, strict=True
        )
        self.beta1 = _check_beta("beta1", beta1)
        self.beta2 = _check_beta("beta2", beta2)
        self.eps = check_real("eps", eps, low=0.0, strict=True)
        self.num_probes = check_positive_int("num_probes", num_probes)
        if max_interval is not None:
            check_positive_int("max_interval", max_interval)
        self.max_interval = max_interval
        if hvp not in ("auto", "jvp", "double_backward"):
            raise ValueError(
                f"hvp should be 'auto', 'jvp' or 'double_backward', but got hvp={hvp!r}"
            )
        if generator is not None and seed is not None:
            raise ValueError(
                f"pass seed or generator, not both (got seed={seed!r} and a generator)"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator should be a torch.Generator, but got {type(generator).__name__}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed should be an int, but got seed={seed!r}")
        self._generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)

        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"module should be an nn.Module, but got {type(module).__name__}")
        if isinstance(params, nn.Module):
            if module is not None and _unwrap(module) is not _unwrap(params):
                raise ValueError("params is a module; module=, if given, should be the same one")
            module = params
            tracked: list[Any] = [p for p in _unwrap(params).parameters() if p.requires_grad]
        elif isinstance(params, Tensor):
            tracked = [params]
        else:
            if not isinstance(params, Iterable):
                raise TypeError(
                    f"params should be an nn.Module or an iterable of parameters, but got "
                    f"{type(params).__name__}"
                )
            tracked = list(params)
        seen: set[int] = set()
        self._params: list[Tensor] = []
        for p in tracked:
            if not isinstance(p, Tensor):
                raise TypeError(f"params should hold tensors, but got {type(p).__name__}")
            if not p.is_floating_point() or not p.requires_grad:
                raise ValueError(
                    f"params should hold floating tensors that require grad, but got one of "
                    f"shape {tuple(p.shape)}, dtype {p.dtype}, requires_grad={p.requires_grad}"
                )
            if id(p) not in seen:
                seen.add(id(p))
                self._params.append(p)
        if not self._params:
            raise ValueError("params is empty: nothing to track")
        self._module: nn.Module | None = None if module is None else _unwrap(module)
        self._names: list[str] | None = None
        if self._module is not None:
            by_id = {id(p): name for name, p in self._module.named_parameters()}
            missing = [tuple(p.shape) for p in self._params if id(p) not in by_id]
            if missing:
                raise ValueError(
                    f"params holds tensors that are not parameters of module (shapes {missing})"
                )
            self._names = [by_id[id(p)] for p in self._params]
        if hvp == "jvp" and self._names is None:
            raise ValueError("hvp='jvp' needs the model: pass params as a module, or module=...")
        self._hvp: str = "double_backward" if self._names is None else hvp

        self._num_anchors = 0
        self._num_checks = 0
        self._exp_avg: list[Tensor] | None = None
        self._exp_hessian_sq: list[Tensor] | None = None
        self._snapshot: list[Tensor] | None = None
        self._check_indices: list[int] | None = None
        self._loss0 = math.nan
        self._grad_norm = math.nan
        self._hessian_norm0: float | None = None
        self._hessian_norm = math.nan
        self._interval = 1
        self.anchor_seconds = 0.0
        self.check_seconds = 0.0

    # -- public API -----------------------------------------------------------------------

    @property
    def interval(self) -> int:
        """T1: steps until the next check (1 before the first anchor)."""
        return self._interval

    @property
    def num_anchors(self) -> int:
        """Anchors taken so far (t of the EMA bias correction)."""
        return self._num_anchors

    def anchor(
        self,
        coresets: Sequence[Sequence[int]],
        weights: Sequence[Tensor],
        check_indices: Sequence[int],
    ) -> AnchorReport:
        """Build the quadratic model at the current parameters (call right after a selection).

        Args:
            coresets: the P coresets, each a list of example indices.
            weights: the P weight vectors γ (mean 1), ``weights[p]`` of shape
                ``[len(coresets[p])]``.
            check_indices: V_r, the check sample; :meth:`check` evaluates the same examples.

        Returns:
            An :class:`AnchorReport`.

        Raises:
            ValueError: on empty or mismatched coresets/weights, a ``loss_fn`` result of the
                wrong shape, or a non-finite gradient, Hessian diagonal or loss.
        """
        sets = self._check_coresets(coresets, weights)
        check = _check_indices(check_indices)
        if not check:
            raise ValueError("check_indices is empty: the check sample needs at least one index")
        start = time.perf_counter()
        snapshot = [p.detach().clone() for p in self._params]
        num_sets = len(sets)
        grad_sum = [torch.zeros_like(p) for p in self._params]
        diag_sum = [torch.zeros_like(p) for p in self._params]
        with _eval_mode(self._module):
            for k, (idx, w) in enumerate(sets):
                g, d = self._hutchinson(self._coreset_objective(idx, w, k))
                for gs, ds, gi, di in zip(grad_sum, diag_sum, g, d, strict=True):
                    gs.add_(gi, alpha=1.0 / num_sets)
                    ds.add_(di, alpha=1.0 / num_sets)
            loss0 = self._mean_loss(check, "anchor")
        if not all(bool(torch.isfinite(t).all()) for t in (*grad_sum, *diag_sum)):
            raise ValueError(
                "anchor: the gradient or Hessian diagonal of the coreset loss is not finite "
                "(NaN/inf); check loss_fn and the model (diverged training?)"
            )
        if self._exp_avg is None or self._exp_hessian_sq is None:
            self._exp_avg = [torch.zeros_like(p) for p in self._params]
            self._exp_hessian_sq = [torch.zeros_like(p) for p in self._params]
        b1, b2 = self.beta1, self.beta2
        torch._foreach_mul_(self._exp_avg, b1)
        torch._foreach_add_(self._exp_avg, grad_sum, alpha=1.0 - b1)
        torch._foreach_mul_(self._exp_hessian_sq, b2)
        torch._foreach_addcmul_(self._exp_hessian_sq, diag_sum, diag_sum, value=1.0 - b2)
        self._num_anchors += 1
        self._num_checks = 0
        self._snapshot = snapshot
        self._check_indices = check
        self._loss0 = loss0
        grad_hat, hess_hat = self._model_terms()
        self._grad_norm = _norm(grad_hat)
        self._hessian_norm = _norm(hess_hat)
        if self._hessian_norm0 is None:
            self._hessian_norm0 = self._hessian_norm
        self._interval = self._next_interval()
        seconds = time.perf_counter() - start
        self.anchor_seconds += seconds
        report = AnchorReport(
            seconds=seconds,
            loss0=loss0,
            grad_norm=self._grad_norm,
            hessian_norm=self._hessian_norm,
            interval=self._interval,
            num_examples=sum(len(i) for i, _ in sets),
            hvp=self._hvp,
        )
        logger.debug("anchor %d: %s", self._num_anchors, report)
        return report

    def check(self) -> CheckReport:
        """Compare the real loss of the check sample with the quadratic model's prediction.

        Returns:
            A :class:`CheckReport`; ``reselect`` is ρ > ``threshold``. If L_r = 0, ρ is 0 when
            F(δ) = 0 and inf otherwise; a negative L_r is divided by its absolute value.

        Raises:
            RuntimeError: if called before :meth:`anchor`.
            ValueError: if ``loss_fn`` returns the wrong shape or a non-finite loss.
        """
        if self._snapshot is None or self._check_indices is None:
            raise RuntimeError("check() called before anchor(): there is no quadratic model yet")
        start = time.perf_counter()
        with _eval_mode(self._module):
            loss = self._mean_loss(self._check_indices, "check")
        grad_hat, hess_hat = self._model_terms()
        lin = 0.0
        quad = 0.0
        delta_sq = 0.0
        with torch.no_grad():
            for p, s, g, h in zip(self._params, self._snapshot, grad_hat, hess_hat, strict=True):
                d = (p.detach() - s).double()
                lin += float(torch.dot(g.double().flatten(), d.flatten()))
                dd = d * d
                quad += float(torch.dot(h.double().flatten(), dd.flatten()))
                delta_sq += float(dd.sum())
        predicted = self._loss0 + lin + 0.5 * quad
        err = abs(loss - predicted)
        rho = err / abs(loss) if loss != 0.0 else (0.0 if err == 0.0 else math.inf)
        self._num_checks += 1
        seconds = time.perf_counter() - start
        self.check_seconds += seconds
        report = CheckReport(
            rho=rho,
            reselect=rho > self.threshold,
            interval=self._interval,
            loss=loss,
            predicted=predicted,
            seconds=seconds,
            delta_norm=math.sqrt(delta_sq),
        )
        logger.debug("check %d after anchor %d: %s", self._num_checks, self._num_anchors, report)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Return the monitor's state (fresh tensors and plain Python values).

        Examples:
            >>> import torch
            >>> model = torch.nn.Linear(2, 1)
            >>> m = QuadraticLossMonitor(model, lambda i: model(torch.ones(len(i), 2))[:, 0] ** 2)
            >>> sorted(m.state_dict())[:3]
            ['anchor_seconds', 'check_indices', 'check_seconds']
        """

        def clone(ts: list[Tensor] | None) -> list[Tensor] | None:
            return None if ts is None else [t.detach().clone() for t in ts]

        return {
            "num_anchors": self._num_anchors,
            "num_checks": self._num_checks,
            "exp_avg": clone(self._exp_avg),
            "exp_hessian_sq": clone(self._exp_hessian_sq),
            "snapshot": clone(self._snapshot),
            "check_indices": None if self._check_indices is None else list(self._check_indices),
            "loss0": self._loss0,
            "grad_norm": self._grad_norm,
            "hessian_norm0": self._hessian_norm0,
            "hessian_norm": self._hessian_norm,
            "interval": self._interval,
            "hvp": self._hvp,
            "generator_state": self._generator.get_state(),
            "anchor_seconds": self.anchor_seconds,
            "check_seconds": self.check_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (tensors are copied to the parameters).

        Raises:
            ValueError: on missing keys or tensors that do not match the tracked parameters.

        Examples:
            >>> import torch
            >>> model = torch.nn.Linear(2, 1)
            >>> f = lambda i: model(torch.ones(len(i), 2))[:, 0] ** 2
            >>> a, b = QuadraticLossMonitor(model, f), QuadraticLossMonitor(model, f)
            >>> b.load_state_dict(a.state_dict())
            >>> b.interval
            1
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state should be a mapping, but got {type(state).__name__}")
        required = {
            "num_anchors", "num_checks", "exp_avg", "exp_hessian_sq", "snapshot",
            "check_indices", "loss0", "grad_norm", "hessian_norm0", "hessian_norm",
            "interval", "hvp", "generator_state",
        }  # fmt: skip
        missing = sorted(required - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        tensors = {
            k: self._load_tensors(k, state[k]) for k in ("exp_avg", "exp_hessian_sq", "snapshot")
        }
        self._num_anchors = int(state["num_anchors"])
        self._num_checks = int(state["num_checks"])
        self._exp_avg = tensors["exp_avg"]
        self._exp_hessian_sq = tensors["exp_hessian_sq"]
        self._snapshot = tensors["snapshot"]
        ci = state["check_indices"]
        self._check_indices = None if ci is None else [int(i) for i in ci]
        self._loss0 = float(state["loss0"])
        self._grad_norm = float(state["grad_norm"])
        h0 = state["hessian_norm0"]
        self._hessian_norm0 = None if h0 is None else float(h0)
        self._hessian_norm = float(state["hessian_norm"])
        self._interval = int(state["interval"])
        if self._names is not None and state["hvp"] in ("auto", "jvp", "double_backward"):
            self._hvp = str(state["hvp"])  # without a module it stays "double_backward"
        self._generator.set_state(state["generator_state"])
        self.anchor_seconds = float(state.get("anchor_seconds", 0.0))
        self.check_seconds = float(state.get("check_seconds", 0.0))

    # -- internals ------------------------------------------------------------------------

    def _load_tensors(self, key: str, value: Any) -> list[Tensor] | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != len(self._params):
            raise ValueError(
                f"state[{key!r}] should be a list of {len(self._params)} tensors (one per tracked "
                f"parameter), but got {type(value).__name__} of length "
                f"{len(value) if hasattr(value, '__len__') else '?'}"
            )
        out = []
        for i, (t, p) in enumerate(zip(value, self._params, strict=True)):
            if not isinstance(t, Tensor) or t.shape != p.shape:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"state[{key!r}][{i}] should have shape {tuple(p.shape)}, but got {shape}"
                )
            out.append(t.detach().to(device=p.device, dtype=p.dtype, copy=True))
        return out

    def _check_coresets(
        self, coresets: Sequence[Sequence[int]], weights: Sequence[Tensor]
    ) -> list[tuple[list[int], Tensor]]:
        cs: object = coresets
        ws: object = weights
        if isinstance(cs, (str, bytes)) or not isinstance(cs, Sequence):
            raise TypeError(
                f"coresets should be a sequence of index lists, but got {type(cs).__name__}"
            )
        if isinstance(ws, Tensor) or not isinstance(ws, Sequence):
            raise TypeError(
                f"weights should be a sequence of 1-D tensors, but got {type(ws).__name__}"
            )
        if not coresets:
            raise ValueError("coresets is empty: anchor needs at least one coreset")
        if len(weights) != len(coresets):
            raise ValueError(
                f"weights should have one tensor per coreset ({len(coresets)}), but got "
                f"{len(weights)}"
            )
        out = []
        for k, (c, w) in enumerate(zip(coresets, weights, strict=True)):
            idx = _check_indices(c)
            if not idx:
                raise ValueError(f"coresets[{k}] is empty")
            if not isinstance(w, Tensor) or not w.is_floating_point():
                what = f"dtype {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
                raise TypeError(f"weights[{k}] should be a floating tensor, but got {what}")
            if w.shape != (len(idx),):
                raise ValueError(
                    f"weights[{k}] should have shape ({len(idx)},) to match coresets[{k}], "
                    f"but got {tuple(w.shape)}"
                )
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                raise ValueError(f"weights[{k}] should be finite and non-negative")
            out.append((idx, w.detach()))
        return out

    def _losses(self, indices: list[int], call: str) -> Tensor:
        losses = self._loss_fn(indices)
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

    def _mean_loss(self, indices: list[int], call: str) -> float:
        with torch.no_grad():
            value = float(self._losses(indices, call).double().mean())
        if not math.isfinite(value):
            raise ValueError(
                f"loss_fn(indices) in {call} returned non-finite losses (mean {value})"
            )
        return value

    def _coreset_objective(self, idx: list[int], w: Tensor, k: int) -> ScalarFn:
        call = f"anchor, coresets[{k}]"

        def eager() -> Tensor:
            losses = self._losses(idx, call)
            return (w.to(losses) * losses).mean()

        names = self._names
        module = self._module
        if names is None or module is None:
            return lambda _params: eager()

        def func(params: Params) -> Tensor:
            return _call_with(module, names, params, eager)

        return func

    def _hutchinson(self, func: ScalarFn) -> tuple[Params, Params]:
        params = tuple(self._params)
        if self._hvp == "double_backward":
            return hutchinson_diagonal(
                func,
                params,
                generator=self._generator,
                num_probes=self.num_probes,
                method="double_backward",
            )
        state = self._generator.get_state()
        try:
            return hutchinson_diagonal(
                func, params, generator=self._generator, num_probes=self.num_probes, method="jvp"
            )
        except (RuntimeError, NotImplementedError) as err:
            if self._hvp != "auto":
                raise
            logger.warning(
                "forward-mode AD failed (%s); computing Hessian-vector products by double "
                "backward from now on",
                err,
            )
            self._hvp = "double_backward"
            self._generator.set_state(state)
            return hutchinson_diagonal(
                func,
                params,
                generator=self._generator,
                num_probes=self.num_probes,
                method="double_backward",
            )

    def _model_terms(self) -> tuple[list[Tensor], list[Tensor]]:
        """Bias-corrected gradient and Hessian diagonal sqrt(v/(1−β2^t)) + ε."""
        assert self._exp_avg is not None and self._exp_hessian_sq is not None
        t = self._num_anchors
        c1 = 1.0 - self.beta1**t
        c2 = 1.0 - self.beta2**t
        grad_hat = [m / c1 for m in self._exp_avg]
        hess_hat = [(v / c2).sqrt_().add_(self.eps) for v in self._exp_hessian_sq]
        return grad_hat, hess_hat

    def _next_interval(self) -> int:
        assert self._hessian_norm0 is not None
        ratio = self.interval_multiplier * self._hessian_norm0 / self._hessian_norm
        interval = max(1, math.ceil(ratio - 1e-9 * ratio)) if math.isfinite(ratio) else 1
        if self.max_interval is not None:
            interval = min(interval, self.max_interval)
        return interval


# --------------------------------------------------------------------------- helpers


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


def _rademacher(params: Params, generator: torch.Generator) -> Params:
    out = []
    for p in params:
        z = torch.randint(0, 2, p.shape, generator=generator, device=generator.device)
        out.append(z.to(device=p.device, dtype=p.dtype).mul_(2).sub_(1))
    return tuple(out)


def _norm(ts: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in ts))


def _same_shapes(name: str, params: Params, others: Params) -> None:
    if len(others) != len(params) or any(
        a.shape != b.shape for a, b in zip(params, others, strict=True)
    ):
        raise ValueError(
            f"{name} should match params in number and shapes, but got "
            f"{[tuple(t.shape) for t in others]} for {[tuple(p.shape) for p in params]}"
        )


def _check_beta(name: str, value: Any) -> float:
    v = check_real(name, value, low=0.0)
    if v >= 1.0:
        raise ValueError(f"{name} should be in [0, 1), but got {name}={value!r}")
    return v
