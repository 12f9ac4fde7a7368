r"""Non-negative orthogonal matching pursuit with ridge regularisation, batched over problems.

GradMatch (Killamsetty et al., "GRAD-MATCH: Gradient Matching based Data Subset Selection for
Efficient Deep Model Training", ICML 2021) selects a weighted subset whose weighted sum of
per-example gradient proxies matches a target gradient ``b`` (the sum over the training set,
or a validation gradient):

.. math::

    \min_{S, w ≥ 0,\ |S| ≤ k} \Bigl\lVert \sum_{j ∈ S} w_j g_j - b \Bigr\rVert^2
    + λ \lVert w \rVert^2,

greedily by orthogonal matching pursuit: each step adds the candidate whose proxy has the
largest positive inner product with the residual, then refits the weights of every candidate
picked so far to the regularised non-negative least-squares problem above (exactly: an
active-set solver on the picks' Gram matrix, warm-started from the previous step's support),
and stops early when the relative residual falls below ``tol`` or no candidate correlates
positively with the residual.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from coreset_sampler._checks import check_in_interval

from .facility_location._problem import (
    budgets,
    check_points,
    raise_first_bad_row,
    valid_rows,
)

__all__ = ["OMPResult", "nonnegative_omp", "ridge_nnls"]


class OMPResult(NamedTuple):
    """What :func:`nonnegative_omp` returns; every field has the problems' leading shape.

    Attributes:
        indices: ``[..., k]`` int64, the picks in order; ``-1`` after a problem stopped.
        weights: ``[..., k]`` the non-negative weights of the picks after the last refit
            (0 for a pick the refit set to 0, and after a problem stopped); the features' dtype.
        residual: ``[...]`` the relative residual ``‖Σ_j w_j g_j − b‖ / ‖b‖`` at the end.
    """

    indices: Tensor
    weights: Tensor
    residual: Tensor


def nonnegative_omp(
    features: Tensor,
    target: Tensor,
    k: int | Tensor,
    *,
    lam: float = 0.5,
    mask: Tensor | None = None,
    tol: float = 1e-4,
) -> OMPResult:
    r"""Pick up to ``k`` candidates per problem whose non-negative weighted sum matches ``target``.

    Every problem runs the same steps at once: the inner products of all candidates with the
    residual are one batched product; the refit of each problem's weights, the regularised
    non-negative least squares ``min_{w≥0} ‖Σ_j w_j g_j − b‖² + lam·‖w‖²`` over its picks, is
    solved exactly in float64 by :func:`ridge_nnls` (warm-started from the previous support).
    A pick is never picked again, even when a refit sets its weight to 0. A problem stops
    early when its relative residual is below ``tol``, or when no remaining candidate has a
    positive inner product with the residual.

    Args:
        features: ``[..., n, d]`` float tensor of candidate proxies ``g_j``.
        target: ``[..., d]`` the vector ``b`` to match.
        k: picks per problem, an ``int`` or an integer tensor of the leading shape, at most the
            number of valid candidates.
        lam: the ridge weight λ ≥ 0 (GradMatch's regularisation; 0 is plain non-negative
            least squares).
        mask: optional boolean ``[..., n]``; ``False`` rows are padding, never picked.
        tol: stop when ``‖residual‖ / ‖b‖`` falls below it, in ``[0, 1)``.

    Returns:
        An :class:`OMPResult` ``(indices, weights, residual)``.

    Raises:
        TypeError: wrong argument types or dtypes.
        ValueError: wrong shapes, non-finite values, ``k`` out of range, negative ``lam``.

    Examples:
        >>> import torch
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> out = nonnegative_omp(g, torch.tensor([2.0, 2.0]), 2, lam=0.0)
        >>> out.indices.tolist(), out.weights.tolist(), float(out.residual)
        ([2, -1], [2.0, 0.0], 0.0)
    """
    lead, n = check_points(features, "features")
    d = features.shape[-1]
    if not isinstance(target, Tensor) or target.shape != (*lead, d):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target should have shape {(*lead, d)}, but got {shape}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam should be a number ≥ 0, but got lam={lam!r}")
    tol = check_in_interval("tol", tol, "[0, 1)")
    batch = math.prod(lead)
    device = features.device
    valid = valid_rows(mask, lead, n, device)
    k_vec = budgets(k, lead, valid.sum(1))
    kmax = int(k_vec.max())
    x = features.reshape(batch, n, d).double()
    raise_first_bad_row(torch.isfinite(x).all(-1) | ~valid, lead, "features")
    b = target.reshape(batch, d).double()
    if not bool(torch.isfinite(b).all()):
        raise ValueError("target contains non-finite values")
    x = torch.where(valid[:, :, None], x, 0.0)

    indices = torch.full((batch, kmax), -1, dtype=torch.long, device=device)
    weights = torch.zeros(batch, kmax, dtype=torch.float64, device=device)
    taken = ~valid
    residual = b.clone()
    norm_b = b.norm(dim=1)
    active = norm_b > 0
    picks: list[list[int]] = [[] for _ in range(batch)]
    support: list[Tensor] = [torch.zeros(0, dtype=torch.float64, device=device)] * batch
    for step in range(kmax):
        active &= (step < k_vec) & (residual.norm(dim=1) > tol * norm_b)
        if not bool(active.any()):
            break
        corr = torch.einsum("bnd,bd->bn", x, residual).masked_fill(taken, -math.inf)
        best, pick = corr.max(1)
        active &= best > 0
        for p in active.nonzero().flatten().tolist():
            j = int(pick[p])
            picks[p].append(j)
            taken[p, j] = True
            g = x[p, picks[p]]  # [s, d]
            w = ridge_nnls(g, b[p], lam, start=torch.cat([support[p], support[p].new_zeros(1)]))
            support[p] = w
            indices[p, : len(picks[p])] = torch.tensor(picks[p], device=device)
            weights[p, : len(picks[p])] = w
            residual[p] = b[p] - w @ g
    rel = torch.where(norm_b > 0, residual.norm(dim=1) / norm_b.clamp_min(1e-300), 0.0)
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    return OMPResult(
        indices=indices.reshape(*lead, kmax),
        weights=weights.to(dtype).reshape(*lead, kmax),
        residual=rel.to(dtype).reshape(lead),
    )


def ridge_nnls(
    g: Tensor, b: Tensor, lam: float, *, start: Tensor | None = None, max_iter: int | None = None
) -> Tensor:
    r"""``argmin_{w ≥ 0} ‖gᵀw − b‖² + lam·‖w‖²`` exactly, for ``g`` ``[s, d]`` and ``b`` ``[d]``.

    The Lawson–Hanson active-set method on the Gram form ``Q = g gᵀ + lam·I``, ``c = g b``
    (Bro and De Jong's fast NNLS), in float64: the passive set starts as the support of
    ``start`` (or empty); each outer step frees the constrained variable of largest negative
    gradient, each inner step solves the passive system and steps back to the boundary if a
    passive variable would turn negative. Returns ``w`` ``[s]`` float64.
    """
    g = g.double()
    b = b.double()
    s = g.shape[0]
    q = g @ g.T + lam * torch.eye(s, dtype=torch.float64, device=g.device)
    c = g @ b
    # a variable is freed when its negative half-gradient c − Q w exceeds eps: relative to c,
    # the scale of that gradient, so that scaling g and b changes nothing
    eps = 1e-12 * max(float(c.abs().max()) if s else 0.0, 1e-300)
    w = torch.zeros(s, dtype=torch.float64, device=g.device)
    passive = torch.zeros(s, dtype=torch.bool, device=g.device)
    if start is not None:
        passive = start > 0
        w = _refit(q, c, passive, w)
    limit = max_iter if max_iter is not None else 3 * s + 10
    for _ in range(limit):
        grad = c - q @ w  # minus half the gradient
        free = (~passive) & (grad > eps)
        if not bool(free.any()):
            break
        j = int(torch.where(free, grad, -math.inf).argmax())
        passive[j] = True
        w = _refit(q, c, passive, w)
    return w


def _refit(q: Tensor, c: Tensor, passive: Tensor, w: Tensor) -> Tensor:
    """Lawson–Hanson's inner loop: solve on the passive set, stepping back to the boundary while
    a passive variable would go negative (and dropping it); returns the feasible ``w``."""
    w = w.clone()
    for _ in range(int(passive.sum()) + 1):
        idx = passive.nonzero().flatten()
        z = torch.zeros_like(w)
        if idx.numel():
            sub = q[idx][:, idx]
            try:
                z[idx] = torch.linalg.solve(sub, c[idx])
            except RuntimeError:  # torch.linalg.LinAlgError: singular (lam = 0), least norm
                z[idx] = torch.linalg.pinv(sub, hermitian=True) @ c[idx]
        bad = passive & (z <= 0)
        if not bool(bad.any()):
            return z
        ratio = torch.where(bad, w / (w - z).clamp_min(1e-300), math.inf)
        alpha = float(ratio.min().clamp(0.0, 1.0))
        w = w + alpha * (z - w)
        passive &= w > 1e-15 * float(w.abs().max().clamp_min(1e-300))
        w = torch.where(passive, w, 0.0)
    return w
