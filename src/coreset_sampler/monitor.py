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

The pure pieces (:func:`~coreset_sampler.hessian.hessian_vector_product`,
:func:`~coreset_sampler.hessian.hutchinson_diagonal`) are in :mod:`coreset_sampler.hessian`;
:class:`QuadraticLossMonitor` is the thin stateful layer on top.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from coreset_sampler._checks import (
    check_choice,
    check_in_interval,
    check_indices,
    check_optional_positive_int,
    check_positive_int,
    check_real,
    check_seed_or_generator,
)
from coreset_sampler._nn import eval_mode, unwrap
from coreset_sampler._state import BOOL, FLOAT, INT, Codec, Stateful
from coreset_sampler.hessian import (
    CoresetCurvature,
    checked_losses,
    hessian_vector_product,
    hutchinson_diagonal,
)

__all__ = [
    "AnchorReport",
    "CheckReport",
    "PerSampleLoss",
    "QuadraticLossMonitor",
    "hessian_vector_product",
    "hutchinson_diagonal",
]

logger = logging.getLogger(__name__)

_HVP = ("auto", "jvp", "double_backward")


class PerSampleLoss(Protocol):
    """Per-sample losses of the given examples, differentiable in the model parameters.

    ``loss_fn(indices)`` returns a floating tensor of shape ``[len(indices)]`` built from the
    model's current parameters, with graph (the monitor differentiates it at an anchor and wraps
    the check in :func:`torch.no_grad`). It must not change the model's mode: the monitor puts
    the model in eval mode around every call (when it knows the model) and restores it after.
    :meth:`coreset_sampler.gradients.GradientProxyCallback.per_sample_loss` is one.
    """

    def __call__(self, indices: Sequence[int]) -> Tensor: ...


@runtime_checkable
class HeadCurvature(Protocol):
    """What a ``loss_fn``'s owner offers for the closed-form quadratic model of the head:
    its parameters (or ``None`` where the closed form does not apply) and the gradient and
    exact Hessian diagonal of ``mean_i w_i ℓ_i`` over some examples with respect to them.
    :class:`~coreset_sampler.proxies.GradientProxyCallback` is one (through its
    ``per_sample_loss``)."""

    def head_parameters(self) -> list[Tensor] | None: ...

    def head_terms(
        self, indices: Sequence[int], weights: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]: ...


@dataclass(frozen=True)
class AnchorReport:
    """What :meth:`QuadraticLossMonitor.anchor` measured.

    Attributes:
        seconds: wall time of the anchor.
        loss0: L_0, mean loss of the check sample at the anchor (eval mode).
        grad_norm: ‖g‖ of the smoothed, bias-corrected gradient.
        hessian_norm: ‖H_ℓ‖ of the smoothed Hessian diagonal (sqrt(EMA) + ε).
        interval: T1, the number of steps until the next check.
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
        interval: T1 in use at this check (``interval_rule="adaptive"`` doubles it after a
            check that holds).
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


class QuadraticLossMonitor(Stateful):
    r"""Decides when to reselect coresets by checking a local quadratic model of the loss.

    At an **anchor** (right after a selection, parameters w_ℓ) it builds, for the γ-weighted
    coreset loss averaged over the P coresets, the smoothed gradient g (EMA β1), the smoothed
    Hutchinson estimate of the Hessian diagonal diag(H) = sqrt(EMA_β2(D²)) + ε, ‖H_ℓ‖, a
    snapshot of the tracked parameters and L_0, the mean loss of the check sample V_r. A
    **check** reads the parameters w_t (any optimizer is accounted for) and returns
    ρ = |L_r(w_t) − F(δ)| / L_r(w_t), F(δ) = L_0 + gᵀδ + ½ δᵀ diag(H) δ, evaluating exactly
    |V_r| examples. The check interval T1 (``interval_rule``): ``"adaptive"`` (default) doubles
    T1 after every check that holds (ρ ≤ τ) and halves it at a check that does not (so that
    :attr:`interval` tells the sampler, before it reselects, the interval its new coresets
    will serve), starting at ⌈h⌉; ``"paper"`` sets T1 = max(1, ⌈h·‖H_0‖/‖H_ℓ‖⌉) at each
    anchor (CREST, Yang, Kang, Mirzasoleiman, ICML 2023, §4.2; the paper's τ = 0.05, h = 1),
    which stays at 1 once the curvature has grown past its first value. Every evaluation runs in
    eval mode (the model is switched and every submodule's flag restored after), so ρ = 0 at
    δ = 0. Memory: one copy of the tracked parameters and two EMA buffers; track a subset
    (``model.fc.parameters()`` with ``module=model``) for large networks. Details:
    ``docs/monitor.md``.

    Args:
        params: the model (all its parameters that require grad are tracked) or an iterable of
            the parameters to track.
        loss_fn: per-sample losses with graph, see :class:`PerSampleLoss`.
        threshold: τ ≥ 0, reselect when ρ > τ (default 0.2; the paper tuned 0.05 for CIFAR-10
            with the whole network's model: see ``docs/algorithm.md``).
        interval_multiplier: h > 0 (``"paper"``: the ratio's factor; ``"adaptive"``: the
            first interval, ⌈h⌉).
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
        interval_rule: ``"adaptive"`` or ``"paper"``, see above.

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

    # declared state (add_state in __init__)
    _num_anchors: int
    _num_checks: int
    _exp_avg: list[Tensor] | None
    _exp_hessian_sq: list[Tensor] | None
    _snapshot: list[Tensor] | None
    _check_indices: list[int] | None
    _loss0: float
    _grad_norm: float
    _hessian_norm0: float | None
    _hessian_norm: float
    _interval: int
    _reselected: bool
    anchor_seconds: float
    check_seconds: float

    def __init__(
        self,
        params: Iterable[nn.Parameter] | nn.Module,
        loss_fn: PerSampleLoss,
        *,
        threshold: float = 0.2,
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
        interval_rule: Literal["adaptive", "paper"] = "adaptive",
        curvature: Literal["auto", "head", "hutchinson"] = "auto",
    ) -> None:
        super().__init__()
        if not callable(loss_fn):
            raise TypeError(f"loss_fn should be callable, but got {type(loss_fn).__name__}")
        self._loss_fn = loss_fn
        self.threshold = check_real("threshold", threshold, low=0.0)
        self.interval_multiplier = check_real(
            "interval_multiplier", interval_multiplier, low=0.0, strict=True
        )
        self.beta1 = check_in_interval("beta1", beta1, "[0, 1)")
        self.beta2 = check_in_interval("beta2", beta2, "[0, 1)")
        self.eps = check_real("eps", eps, low=0.0, strict=True)
        self.num_probes = check_positive_int("num_probes", num_probes)
        self.max_interval = check_optional_positive_int("max_interval", max_interval)
        self.interval_rule = check_choice("interval_rule", interval_rule, ("adaptive", "paper"))
        check_choice("hvp", hvp, _HVP)
        self._generator = _probe_generator(seed, generator)
        self._params, self._module, self._names = _tracked(params, module)
        if hvp == "jvp" and self._names is None:
            raise ValueError("hvp='jvp' needs the model: pass params as a module, or module=...")
        self._head = _head_model(loss_fn, self._params, check_choice(
            "curvature", curvature, ("auto", "head", "hutchinson")
        ))  # fmt: skip
        if self._head is not None:  # the closed-form quadratic model of the head
            self._params = list(self._head[0])

        self._curvature = CoresetCurvature(
            loss_fn, self._params, self._module, self._names, self._generator, self.num_probes
        )
        tensors = Codec(_clone_all, partial(_read_tensors, self._params))
        self.add_state("num_anchors", INT, 0, attr="_num_anchors")
        self.add_state("num_checks", INT, 0, attr="_num_checks")
        self.add_state("exp_avg", tensors, None, attr="_exp_avg")
        self.add_state("exp_hessian_sq", tensors, None, attr="_exp_hessian_sq")
        self.add_state("snapshot", tensors, None, attr="_snapshot")
        self.add_state(
            "check_indices", Codec(_copy_list, _read_indices), None, attr="_check_indices"
        )
        self.add_state("loss0", FLOAT, math.nan, attr="_loss0")
        self.add_state("grad_norm", FLOAT, math.nan, attr="_grad_norm")
        self.add_state("hessian_norm0", Codec(_same, _read_optional_float), None,
                       attr="_hessian_norm0")  # fmt: skip
        self.add_state("hessian_norm", FLOAT, math.nan, attr="_hessian_norm")
        self.add_state("interval", INT, 1, attr="_interval")
        self.add_state("reselected", BOOL, False, attr="_reselected")  # at the last check
        hvp_used: str = "double_backward" if self._names is None else hvp
        if self._head is not None:
            hvp_used = "closed_form"
        self.add_state("hvp", Codec(str, _read_hvp), hvp_used, attr="_hvp")
        self.add_state("generator_state", Codec(Tensor.clone, _read_byte_tensor),
                       self._generator.get_state(), attr="_generator_state")  # fmt: skip
        self.add_state("anchor_seconds", FLOAT, 0.0)
        self.add_state("check_seconds", FLOAT, 0.0)

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
        sets = _check_coresets(coresets, weights)
        check = _check_sample(check_indices)
        start = time.perf_counter()
        snapshot = [p.detach().clone() for p in self._params]
        grad_sum = [torch.zeros_like(p) for p in self._params]
        diag_sum = [torch.zeros_like(p) for p in self._params]
        with eval_mode(self._module):
            for k, (idx, w) in enumerate(sets):
                if self._head is not None:
                    head_g, head_d = self._head[1](idx, w)
                    g, d = tuple(head_g), tuple(head_d)
                else:
                    g, d = self._curvature.estimate(idx, w, k)
                for gs, ds, gi, di in zip(grad_sum, diag_sum, g, d, strict=True):
                    gs.add_(gi, alpha=1.0 / len(sets))
                    ds.add_(di, alpha=1.0 / len(sets))
            loss0 = _mean_loss(self._loss_fn, check, "anchor")
        if not all(bool(torch.isfinite(t).all()) for t in (*grad_sum, *diag_sum)):
            raise ValueError(
                "anchor: the gradient or Hessian diagonal of the coreset loss is not finite "
                "(NaN/inf); check loss_fn and the model (diverged training?)"
            )
        if self._exp_avg is None or self._exp_hessian_sq is None:
            self._exp_avg = [torch.zeros_like(p) for p in self._params]
            self._exp_hessian_sq = [torch.zeros_like(p) for p in self._params]
        _ema(self._exp_avg, grad_sum, self.beta1)
        _ema(self._exp_hessian_sq, diag_sum, self.beta2, squared=True)
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
        with eval_mode(self._module):
            loss = _mean_loss(self._loss_fn, self._check_indices, "check")
        grad_hat, hess_hat = self._model_terms()
        lin, quad, delta_sq = _model_sums(self._params, self._snapshot, grad_hat, hess_hat)
        predicted = self._loss0 + lin + 0.5 * quad
        err = abs(loss - predicted)
        rho = err / abs(loss) if loss != 0.0 else (0.0 if err == 0.0 else math.inf)
        self._num_checks += 1
        seconds = time.perf_counter() - start
        self.check_seconds += seconds
        interval = self._interval
        self._reselected = rho > self.threshold
        if self.interval_rule == "adaptive":
            # the model held: check half as often; it failed: the next anchor's interval is
            # half this one, known now, so that the sampler draws pools for it
            self._interval = self._capped(
                max(1, interval // 2) if self._reselected else 2 * interval
            )
        report = CheckReport(
            rho=rho,
            reselect=self._reselected,
            interval=interval,
            loss=loss,
            predicted=predicted,
            seconds=seconds,
            delta_norm=math.sqrt(delta_sq),
        )
        logger.debug("check %d after anchor %d: %s", self._num_checks, self._num_anchors, report)
        return report

    # -- internals ------------------------------------------------------------------------

    @property
    def _generator_state(self) -> Tensor:
        return self._generator.get_state()

    @_generator_state.setter
    def _generator_state(self, state: Tensor) -> None:
        self._generator.set_state(state)

    @property
    def _hvp(self) -> str:
        return self._curvature.hvp

    @_hvp.setter
    def _hvp(self, hvp: str) -> None:
        self._curvature.hvp = hvp

    def _after_load(self) -> None:
        if self._head is not None:
            self._hvp = "closed_form"
        elif self._names is None:
            self._hvp = "double_backward"  # without the model, whatever the saved monitor did

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
        """T1 after an anchor: the paper's ⌈h·‖H_0‖/‖H_ℓ‖⌉, or (adaptive) the interval that
        held, halved when the last check asked for this reselection (h at the first anchor)."""
        if self.interval_rule == "paper":
            assert self._hessian_norm0 is not None
            ratio = self.interval_multiplier * self._hessian_norm0 / self._hessian_norm
            interval = max(1, math.ceil(ratio - 1e-9 * ratio)) if math.isfinite(ratio) else 1
        elif self._num_anchors == 1:
            interval = max(1, math.ceil(self.interval_multiplier - 1e-9))
        else:
            interval = self._interval  # (halved by the check that asked for this anchor)
        self._reselected = False
        return self._capped(interval)

    def _capped(self, interval: int) -> int:
        return interval if self.max_interval is None else min(interval, self.max_interval)


# --------------------------------------------------------------------------- helpers


def _head_model(
    loss_fn: Any, tracked: list[Tensor], curvature: str
) -> tuple[list[Tensor], Callable[..., tuple[list[Tensor], list[Tensor]]]] | None:
    """The head's parameters and its closed-form terms, where ``curvature`` asks for them
    ("head"), or allows them ("auto") and ``loss_fn`` belongs to a :class:`HeadCurvature` whose
    head is among the tracked parameters; ``None`` for Hutchinson's estimate."""
    if curvature == "hutchinson":
        return None
    owner = getattr(loss_fn, "__self__", None)
    head = owner.head_parameters() if isinstance(owner, HeadCurvature) else None
    ids = {id(p) for p in tracked}
    if head is not None and all(id(p) in ids for p in head):
        assert owner is not None
        return [p for p in head if p.requires_grad], owner.head_terms
    if curvature == "head":
        raise ValueError(
            "curvature='head' needs loss_fn to be the per_sample_loss of a callback with a "
            "closed-form head (a GradientProxyCallback with cross-entropy on a final "
            "nn.Linear) whose head parameters are among params"
        )
    return None


def _probe_generator(seed: Any, generator: Any) -> torch.Generator:
    given = check_seed_or_generator(seed, generator)
    return given or torch.Generator().manual_seed(0 if seed is None else seed)


def _tracked(params: Any, module: Any) -> tuple[list[Tensor], nn.Module | None, list[str] | None]:
    """The tracked parameters (distinct, floating, requiring grad), the unwrapped module that
    owns them (if known) and their names in it."""
    if module is not None and not isinstance(module, nn.Module):
        raise TypeError(f"module should be an nn.Module, but got {type(module).__name__}")
    if isinstance(params, nn.Module):
        if module is not None and unwrap(module) is not unwrap(params):
            raise ValueError("params is a module; module=, if given, should be the same one")
        module = params
        candidates: list[Any] = [p for p in unwrap(params).parameters() if p.requires_grad]
    elif isinstance(params, Tensor):
        candidates = [params]
    elif isinstance(params, Iterable):
        candidates = list(params)
    else:
        raise TypeError(
            f"params should be an nn.Module or an iterable of parameters, but got "
            f"{type(params).__name__}"
        )
    tracked: list[Tensor] = []
    for p in candidates:
        if not isinstance(p, Tensor):
            raise TypeError(f"params should hold tensors, but got {type(p).__name__}")
        if not p.is_floating_point() or not p.requires_grad:
            raise ValueError(
                f"params should hold floating tensors that require grad, but got one of "
                f"shape {tuple(p.shape)}, dtype {p.dtype}, requires_grad={p.requires_grad}"
            )
        if all(p is not q for q in tracked):
            tracked.append(p)
    if not tracked:
        raise ValueError("params is empty: nothing to track")
    if module is None:
        return tracked, None, None
    owner = unwrap(module)
    by_id = {id(p): name for name, p in owner.named_parameters()}
    missing = [tuple(p.shape) for p in tracked if id(p) not in by_id]
    if missing:
        raise ValueError(
            f"params holds tensors that are not parameters of module (shapes {missing})"
        )
    return tracked, owner, [by_id[id(p)] for p in tracked]


def _mean_loss(loss_fn: PerSampleLoss, indices: list[int], call: str) -> float:
    with torch.no_grad():
        value = float(checked_losses(loss_fn, indices, call).double().mean())
    if not math.isfinite(value):
        raise ValueError(f"loss_fn(indices) in {call} returned non-finite losses (mean {value})")
    return value


def _read_tensors(params: list[Tensor], value: Any, where: str) -> list[Tensor] | None:
    """A list of tensors shaped like the tracked parameters (copied to their device)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != len(params):
        size = len(value) if hasattr(value, "__len__") else "?"
        raise ValueError(
            f"{where} should be a list of {len(params)} tensors (one per tracked parameter), "
            f"but got {type(value).__name__} of length {size}"
        )
    out = []
    for i, (t, p) in enumerate(zip(value, params, strict=True)):
        if not isinstance(t, Tensor) or t.shape != p.shape:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{where}[{i}] should have shape {tuple(p.shape)}, but got {shape}")
        out.append(t.detach().to(device=p.device, dtype=p.dtype, copy=True))
    return out


def _check_coresets(
    coresets: Sequence[Sequence[int]], weights: Sequence[Tensor]
) -> list[tuple[list[int], Tensor]]:
    cs: object = coresets
    ws: object = weights
    if isinstance(cs, (str, bytes)) or not isinstance(cs, Sequence):
        raise TypeError(
            f"coresets should be a sequence of index lists, but got {type(cs).__name__}"
        )
    if isinstance(ws, Tensor) or not isinstance(ws, Sequence):
        raise TypeError(f"weights should be a sequence of 1-D tensors, but got {type(ws).__name__}")
    if not coresets:
        raise ValueError("coresets is empty: anchor needs at least one coreset")
    if len(weights) != len(coresets):
        raise ValueError(
            f"weights should have one tensor per coreset ({len(coresets)}), but got {len(weights)}"
        )
    out = []
    for k, (c, w) in enumerate(zip(coresets, weights, strict=True)):
        idx = check_indices(c)
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


def _check_sample(indices: Sequence[int]) -> list[int]:
    check = check_indices(indices)
    if not check:
        raise ValueError("check_indices is empty: the check sample needs at least one index")
    return check


def _ema(average: list[Tensor], value: list[Tensor], beta: float, squared: bool = False) -> None:
    """``average ← β·average + (1 − β)·value`` (of ``value²`` when ``squared``), in place."""
    torch._foreach_mul_(average, beta)
    if squared:
        torch._foreach_addcmul_(average, value, value, value=1.0 - beta)
    else:
        torch._foreach_add_(average, value, alpha=1.0 - beta)


def _model_sums(
    params: list[Tensor], snapshot: list[Tensor], grad: list[Tensor], hess: list[Tensor]
) -> tuple[float, float, float]:
    """gᵀδ, δᵀ diag(H) δ and ‖δ‖² for δ = params − snapshot, in float64."""
    lin = quad = delta_sq = 0.0
    with torch.no_grad():
        for p, s, g, h in zip(params, snapshot, grad, hess, strict=True):
            d = (p.detach() - s).double()
            lin += float(torch.dot(g.double().flatten(), d.flatten()))
            dd = d * d
            quad += float(torch.dot(h.double().flatten(), dd.flatten()))
            delta_sq += float(dd.sum())
    return lin, quad, delta_sq


def _norm(ts: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in ts))


# the monitor's state fields that are not plain numbers


def _same(value: Any) -> Any:
    return value


def _copy_list(value: list[int] | None) -> list[int] | None:
    return None if value is None else list(value)


def _clone_all(tensors: list[Tensor] | None) -> list[Tensor] | None:
    return None if tensors is None else [t.detach().clone() for t in tensors]


def _read_indices(value: Any, where: str) -> list[int] | None:
    return None if value is None else [int(i) for i in value]


def _read_optional_float(value: Any, where: str) -> float | None:
    return None if value is None else FLOAT.decode(value, where)


def _read_hvp(value: Any, where: str) -> str:
    if value not in (*_HVP, "closed_form"):
        raise ValueError(f"{where} should be one of {(*_HVP, 'closed_form')}, but got {value!r}")
    return str(value)


def _read_byte_tensor(value: Any, where: str) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise TypeError(f"{where} should be a generator state (a uint8 tensor), but got {value!r}")
    return value.clone()
