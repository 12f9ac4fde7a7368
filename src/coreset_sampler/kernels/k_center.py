"""Greedy k-center (farthest-point traversal), batched over many problems, on any device.

k-center asks for ``k`` centres that minimise the covering radius
``max_i min_{j∈S} ‖x_i − x_j‖``. The greedy that repeatedly adds the point farthest from the
centres chosen so far is a 2-approximation (Gonzalez, 1985), and is the core-set selection of
Sener and Savarese ("Active Learning for Convolutional Neural Networks: A Core-Set Approach",
ICLR 2018).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from coreset_sampler._checks import check_choice

from .facility_location import _triton
from .facility_location._problem import (
    bool_rows,
    budgets,
    check_points,
    problem_name,
    raise_first_bad_row,
    valid_rows,
)
from .facility_location._torch import distances

__all__ = ["KCenterResult", "greedy_k_center"]

# ``method="auto"`` runs the Triton kernel on CUDA up to this many points per problem: one
# program walks all of a problem's points at every step, so a few large problems would leave
# most of the GPU idle (neither side has been timed on a GPU yet)
TRITON_MAX_N = 4096


class KCenterResult(NamedTuple):
    """What :func:`greedy_k_center` returns; every field has the problems' leading shape.

    Attributes:
        indices: ``[..., k]`` int64, the centres in selection order; ``-1`` past a problem's
            own budget.
        radii: ``[..., k]`` covering radius ``max_i min_{j∈S} ‖x_i − x_j‖`` over the valid
            points right after each pick (``initial`` centres included); non-increasing; NaN
            past a problem's own budget.
    """

    indices: Tensor
    radii: Tensor


def greedy_k_center(
    features: Tensor,
    k: int | Tensor,
    *,
    initial: Tensor | None = None,
    mask: Tensor | None = None,
    method: Literal["auto", "torch", "triton"] = "auto",
) -> KCenterResult:
    r"""Pick ``k`` centres per problem by farthest-point greedy, for many problems at once.

    Each step adds the valid point farthest from all centres so far (the ``initial`` ones
    included; lowest index on ties), which keeps the covering radius within twice the optimum
    for the same number of centres. Without ``initial`` centres the first pick is the valid point
    nearest to the mean of the valid points (any first pick keeps the guarantee; this one is
    deterministic and central). Costs ``O(B·k·n·d)`` time and ``O(B·n·d)`` memory; distances are
    computed from differences.

    Args:
        features: ``[..., n, d]`` float tensor (half precision is computed in float32).
        k: centres to add per problem: an ``int`` or an integer tensor of the leading shape.
        initial: optional boolean ``[..., n]``: points already chosen (for example the labelled
            set in active learning). They are not returned and not counted in ``k``.
        mask: optional boolean ``[..., n]``; ``False`` rows are padding, never picked and not
            covered.
        method: ``"torch"`` (a few PyTorch operations per step, any device), ``"triton"``
            (every step in one Triton kernel launch: CUDA float32 or half features; on CPU
            tensors only in Triton's interpreter, ``TRITON_INTERPRET=1``), or ``"auto"``
            (triton for CUDA features that are not float64, with at most 4096 points per
            problem, when Triton imports; else torch).
            Both compute distances in float64 and round them once to float32 (above 32
            features the PyTorch path uses a float64 matrix product, which can differ in the
            last bits).

    Returns:
        A :class:`KCenterResult` ``(indices, radii)``.

    Raises:
        TypeError: wrong argument types or dtypes.
        ValueError: wrong shapes, non-finite features, ``k`` out of range for a problem (it can
            be at most the number of valid points that are not initial centres), an initial
            centre on a padding row; ``method="triton"`` on float64 or CPU features.
        ImportError: ``method="triton"`` without Triton.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
        >>> out = greedy_k_center(x, 2)
        >>> out.indices.tolist(), out.radii.tolist()
        ([2, 3], [8.0, 2.0])
    """
    check_choice("method", method, ("auto", "torch", "triton"))
    lead, n = check_points(features, "features")
    d = features.shape[-1]
    batch = math.prod(lead)
    device = features.device
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    valid = valid_rows(mask, lead, n, device)
    if initial is None:
        seeded = torch.zeros_like(valid)
    else:
        seeded = bool_rows("initial", initial, lead, n, device)
        stray = (seeded & ~valid).nonzero()
        if stray.numel():
            b, i = int(stray[0, 0]), int(stray[0, 1])
            raise ValueError(f"initial centre {i} of {problem_name(b, lead)} is a padding row")
    k_vec = budgets(k, lead, (valid & ~seeded).sum(1))
    kmax = int(k_vec.max())

    x = features.reshape(batch, n, d).to(dtype)
    raise_first_bad_row(torch.isfinite(x).all(-1) | ~valid, lead, "features")
    x = torch.where(valid[:, :, None], x, 0.0)

    dmin = _distance_to_set(x, seeded)  # +inf where a problem has no initial centre
    dmin = dmin.masked_fill(~valid, -math.inf)  # padding: never farthest, never counted
    taken = seeded | ~valid
    # first pick of problems without initial centres: nearest to the mean of the valid points
    counts = valid.sum(1, keepdim=True).to(dtype)
    mean = (x * valid[:, :, None]).sum(1, keepdim=True) / counts[:, :, None]
    to_mean = distances(x, mean).squeeze(-1).masked_fill(~valid, math.inf)
    central = to_mean.argmin(1)
    fresh = ~seeded.any(1)
    if method == "auto":  # (one program per problem: up to TRITON_MAX_N points, untimed above)
        cuda = device.type == "cuda" and dtype == torch.float32 and n <= TRITON_MAX_N
        method = "triton" if cuda and _triton.available() else "torch"
    if method == "triton":
        if dtype != torch.float32:
            raise ValueError("method='triton' computes in float32; pass float32 features")
        dist = dmin.masked_fill(taken, -math.inf)  # centres and padding: never picked again
        first = torch.where(fresh, central, -1)
        found, covered = _triton.k_center(x, dist, first, k_vec, kmax)
        return KCenterResult(found.reshape(*lead, kmax), covered.reshape(*lead, kmax))

    arange = torch.arange(batch, device=device)
    picks: list[Tensor] = []
    radii: list[Tensor] = []
    for step in range(kmax):
        scores = dmin.masked_fill(taken, -math.inf)
        pick = scores.argmax(1)
        if step == 0:
            pick = torch.where(fresh, central, pick)
        active = step < k_vec
        centre = x[arange, pick].unsqueeze(1)  # [B, 1, d]
        dist = distances(x, centre).squeeze(-1)
        dmin = torch.where(active[:, None] & valid, torch.minimum(dmin, dist), dmin)
        at = pick[:, None]
        taken.scatter_(1, at, taken.gather(1, at) | active[:, None])
        radius = dmin.masked_fill(~valid, -math.inf).amax(1)
        picks.append(torch.where(active, pick, -1))
        radii.append(torch.where(active, radius, math.nan))
    return KCenterResult(
        indices=torch.stack(picks, 1).reshape(*lead, kmax),
        radii=torch.stack(radii, 1).reshape(*lead, kmax),
    )


def _distance_to_set(x: Tensor, members: Tensor) -> Tensor:
    """``min_{j: members[b, j]} ‖x_i − x_j‖`` for every point: ``[B, n]`` (+inf for none)."""
    batch, n, _ = x.shape
    out = torch.full((batch, n), math.inf, dtype=x.dtype, device=x.device)
    if not bool(members.any()):
        return out
    rows = max(1, (1 << 22) // max(1, batch * n))
    for start in range(0, n, rows):
        block = distances(x[:, start : start + rows], x)  # [B, rows, n]
        block = block.masked_fill(~members[:, None, :], math.inf)
        out[:, start : start + rows] = block.amin(2)
    return out
