r"""GLISTER's subset of the whole training set as a DataLoader batch sampler.

GLISTER (Killamsetty, Sivasubramanian, Ramakrishnan and Iyer, "GLISTER: Generalization based
Data Subset Selection for Efficient and Robust Learning", AAAI 2021) selects, every R epochs,
the subset S that maximises the validation log-likelihood after one gradient step on S,

.. math::

    \max_{|S| ≤ k} \; LL_V\Bigl(θ - η \sum_{j ∈ S} ∇_θ ℓ_j(θ)\Bigr),

greedily, with a first-order Taylor approximation of each candidate's gain: after the picks so
far have moved the parameters to θ_S, candidate j gains η·∇_θ L_V(θ_S)·∇_θ ℓ_j(θ). As in the
authors' code without its ``linear_layer`` option, θ is the bias of the last layer: the
gradients are the logit gradients ``∂ℓ/∂z``, and moving the bias moves every validation logit
by the same vector, so the validation gradient after each pick follows in closed form from the
validation logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sized
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from coreset_sampler._checks import check_callable, check_in_interval
from coreset_sampler.proxies import ProxyCallback

from ._stream import BudgetedStream
from ._telemetry import Telemetry
from ._wholeset import WholeSetSampler, WholeSetSelection

__all__ = ["GlisterBatchSampler", "glister_greedy"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
ValidationFn = Callable[[], tuple[Tensor, Tensor]]


class GlisterResult(NamedTuple):
    """What :func:`glister_greedy` returns."""

    indices: Tensor  # [k] int64, the picks in order
    gains: Tensor  # [k] the first-order gain of each pick when it was picked (float64)


def glister_greedy(
    grads: Tensor, val_logits: Tensor, val_labels: Tensor, k: int, *, eta: float
) -> GlisterResult:
    r"""GLISTER's greedy on logit gradients (the last layer's bias).

    Each step computes the validation loss gradient at the current logits,
    ``G = mean_v (softmax(z_v + δ) − onehot(y_v))``, picks the candidate of largest
    ``g_j · G`` (lowest index on ties) that is not picked yet, and moves the logits:
    ``δ ← δ − η·g_j``. In float64.

    Args:
        grads: ``[N, C]`` the candidates' logit gradients ``∂ℓ_j/∂z``.
        val_logits: ``[V, C]`` the model's logits on the validation examples.
        val_labels: ``[V]`` their class indices.
        k: picks, at most N.
        eta: the step size η of the one-step update (the training learning rate).

    Returns:
        A :class:`GlisterResult` ``(indices, gains)``.

    Examples:
        >>> import torch
        >>> g = torch.tensor([[0.5, -0.5], [-0.5, 0.5], [0.1, -0.1]])
        >>> out = glister_greedy(g, torch.zeros(4, 2), torch.tensor([1, 1, 1, 0]), 2, eta=0.1)
        >>> out.indices.tolist()
        [0, 2]
    """
    if grads.ndim != 2 or val_logits.ndim != 2 or grads.shape[1] != val_logits.shape[1]:
        raise ValueError(
            f"grads [N, C] and val_logits [V, C] should have the same number of classes, but got "
            f"shapes {tuple(grads.shape)} and {tuple(val_logits.shape)}"
        )
    if val_labels.shape != (val_logits.shape[0],) or val_logits.shape[0] == 0:
        raise ValueError(
            f"val_labels should have shape ({val_logits.shape[0]},) with at least one example, "
            f"but got {tuple(val_labels.shape)}"
        )
    n, c = grads.shape
    if not 1 <= k <= n:
        raise ValueError(f"k should be in [1, {n}], but got k={k}")
    g = grads.detach().double()
    z = val_logits.detach().double().to(g.device)
    y = val_labels.detach().to(g.device).long()
    if not (bool(torch.isfinite(g).all()) and bool(torch.isfinite(z).all())):
        raise ValueError("the gradients or the validation logits contain NaN or inf")
    bad = ((y < 0) | (y >= c)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"val_labels should be class indices in [0, {c}), but val_labels[{i}] = {int(y[i])}"
        )
    onehot = torch.nn.functional.one_hot(y, c).double()
    shift = torch.zeros(c, dtype=torch.float64, device=g.device)
    taken = torch.zeros(n, dtype=torch.bool, device=g.device)
    picks = torch.empty(k, dtype=torch.long, device=g.device)
    gains = torch.empty(k, dtype=torch.float64, device=g.device)
    for step in range(k):
        val_grad = (torch.softmax(z + shift, dim=1) - onehot).mean(0)
        score = (g @ val_grad).masked_fill(taken, -math.inf)
        best = int(score.argmax())
        picks[step] = best
        gains[step] = eta * score[best]
        taken[best] = True
        shift -= eta * g[best]
    return GlisterResult(picks, gains)


class GlisterBatchSampler(WholeSetSampler):
    r"""Batch sampler that trains on GLISTER's subset (Killamsetty et al., AAAI 2021).

    **Budget.** ``len(sampler) = ceil(budget · N / batch_size)`` batches every epoch
    (``drop_last=True``: floor), as every sampler of the library.

    **Selection.** At the first epoch and then every ``reselect_every`` epochs (the paper's R,
    20 by default), the callback is asked for the logit gradients of all N examples and
    ``validation()`` for the model's logits and labels on the validation set; the subset of
    K = round(budget · N) examples is then picked greedily by :func:`glister_greedy`
    (the validation log-likelihood after a step of size ``eta`` on the last layer's bias, to
    first order), over the whole set (not per class). The examples' weights are 1.

    **Validation set.** Yours: ``validation`` is called once per selection and returns
    ``(logits [V, C], labels [V])`` of the current model (in eval mode, without gradients),
    for example on a held-out split of the training data that the loader never yields. The
    sampler holds nothing out itself.

    **Yield, state and resume** are CRAIG's (:class:`~coreset_sampler.CraigBatchSampler`).

    Args:
        data_source: the dataset (anything with ``len``) or its size N. Not a sampler.
        batch_size: examples per batch, at most K.
        callback: ``callback(indices) -> [n, C]`` logit gradients ``∂ℓ/∂z`` (for instance
            :class:`~coreset_sampler.GradientProxyCallback` with ``proxy="logits"``, its
            default), or ``(gradients, losses)``.
        validation: ``validation() -> (logits, labels)`` on the validation set.
        budget: fraction of a full-data epoch's batches to yield, in (0, 1]; also K / N.
        eta: the step size η of the one-step update (the training learning rate).
        reselect_every: epochs between selections (the paper's R).
        callback_batch_size: indices per callback call.
        drop_last: round ``budget · N / batch_size`` down instead of up.
        seed: seed of the random streams (0 when neither ``seed`` nor ``generator`` is given).
        generator: a :class:`torch.Generator` to draw the seed from (once, at construction).
        telemetry_size: selection records kept in :attr:`telemetry`.
        record_coresets: keep each selection's chosen indices in its
            :class:`~coreset_sampler.samplers.SelectionRecord`.

    Raises:
        TypeError: on arguments of the wrong type.
        ValueError: on invalid values; at a selection, when the callback's gradients and the
            validation logits have different numbers of classes.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> grads = torch.softmax(torch.randn(200, 3, generator=g), 1) - torch.eye(3)[
        ...     torch.randint(0, 3, (200,), generator=g)]
        >>> val = (torch.randn(30, 3, generator=g), torch.randint(0, 3, (30,), generator=g))
        >>> sampler = GlisterBatchSampler(
        ...     200, batch_size=16, callback=lambda idx: grads[idx], validation=lambda: val,
        ...     budget=0.2, eta=0.1, seed=0,
        ... )
        >>> len(list(sampler)), sampler.coreset_size, float(sampler.coreset_weights.mean())
        (3, 40, 1.0)
    """

    _kind = "GlisterBatchSampler"

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 128,
        *,
        callback: ProxyCallback | None = None,  # (required: None only to name what is missing)
        validation: ValidationFn | None = None,  # (required)
        budget: float = 0.1,
        eta: float = 0.1,
        reselect_every: int = 20,
        callback_batch_size: int = 1024,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        telemetry_size: int = 1000,
        record_coresets: bool = False,
    ) -> None:
        stream = BudgetedStream(
            data_source, batch_size, budget=budget, drop_last=drop_last, seed=seed,
            generator=generator,
        )  # fmt: skip
        selection = _GlisterSelection(
            callback, stream, validation=validation, eta=eta, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size,
        )  # fmt: skip
        telemetry = Telemetry(telemetry_size, logger, "GLISTER ", record_coresets=record_coresets)
        self._build(stream, selection, telemetry)


class _GlisterSelection(WholeSetSelection):
    """GLISTER's rule on the whole set: the greedy of :func:`glister_greedy`, weights 1."""

    def __init__(
        self, callback: Any, stream: BudgetedStream, *, validation: Any, eta: float,
        reselect_every: int, callback_batch_size: int,
    ) -> None:  # fmt: skip
        self.validation = check_callable("validation", validation)
        self.eta = check_in_interval("eta", eta, "(0, inf)", high=math.inf)
        self._val: tuple[Tensor, Tensor] | None = None
        super().__init__(
            callback, stream, labels=None, reselect_every=reselect_every,
            callback_batch_size=callback_batch_size, settings={"eta": self.eta},
        )  # fmt: skip

    def select(
        self, index: int, epoch: int, rng: np.random.Generator
    ) -> tuple[float, float, list[tuple[IntArray, int]]]:
        out = self.validation()
        if not (
            isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)
        ):
            raise TypeError(
                f"validation() should return (logits, labels) tensors, but got "
                f"{type(out).__name__} at selection {index}"
            )
        self._val = out
        try:
            return super().select(index, epoch, rng)
        finally:
            self._val = None

    def solve(
        self, feats: Tensor, k: int, rng: np.random.Generator
    ) -> tuple[IntArray, list[float]]:
        assert self._val is not None
        logits, labels = self._val
        result = glister_greedy(feats, logits, labels, k, eta=self.eta)
        picks: IntArray = result.indices.cpu().numpy().astype(np.int64)
        return picks, [1.0] * k
