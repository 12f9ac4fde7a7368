"""``method="naive"``: every gain recomputed at every step from the dense similarity.

``O(B·k·n²)`` time, ``O(B·n²)`` memory, the fewest kernel launches: best for small problems.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._problem import FacilityLocationResult, Problem
from ._torch import Solution, TorchProblem, prepare, result, tie_tolerance


def solve(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    """Greedy facility location, naively."""
    p = prepare(problem, "naive")
    return result(p, _naive(p))


def solve_like_lazy(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    """The naive greedy in the compiled kernel's arithmetic: similarities and gains in float64,
    gains tied within the tolerance of the input's dtype. ``method="auto"`` runs it on small
    problems while the compiled kernel is loading, so that a run's picks do not depend on
    when it has loaded: the float32 naive greedy broke a near-tie differently from the
    compiled kernel in about 3 of 1000 problems of CREST's gradient proxies, this one in none
    of them (``docs/facility_location.md``, exactness)."""
    p = prepare(problem._replace(dtype=torch.float64), "naive")._replace(dtype=problem.dtype)
    return result(p, _naive(p))


def _naive(p: TorchProblem) -> Solution:
    """Recompute every gain at every step from the dense similarity (few, large kernels)."""
    assert p.dense is not None
    dense = p.dense
    batch, n = p.mask.shape
    # padding rows hold s = 0 and cur = 0, so they add 0 to the max-form gains below
    cur_w = torch.where(p.mask, p.base[:, None], 0.0).to(dense.dtype)
    taken = ~p.mask  # padding or selected
    # columns s(·, j) as contiguous rows: the matrix itself when symmetric
    by_col = dense if p.kind != "precomputed" else dense.transpose(1, 2).contiguous()
    flat_cols = by_col.reshape(batch * n, n)
    offsets = torch.arange(batch, device=p.device) * n
    uniform = p.kmin == p.kmax
    tol = torch.zeros(batch, 1, dtype=dense.dtype, device=p.device)
    picks: list[Tensor] = []
    gains: list[Tensor] = []
    # the gains themselves, Σ_i relu(s(i, j) − cur_i): as the other exact methods sum them, so
    # that their rounding is that of the gains (Σ_i max(s(i, j), cur_i) saves a pass but adds
    # Σ_i cur_i to every gain, whose rounding can then order tied gains differently)
    for step in range(p.kmax):
        g = (dense - cur_w[:, :, None]).clamp_min_(0.0).sum(1).masked_fill_(taken, -math.inf)
        best = g.amax(1, keepdim=True)
        if step == 0:
            tol = tie_tolerance(p, best.squeeze(1))[:, None].to(dense.dtype)
        pick = (g >= best - tol).to(torch.uint8).argmax(1)
        col = flat_cols.index_select(0, offsets + pick)
        gain = g.gather(1, pick[:, None]).squeeze(1)
        if uniform:
            taken.scatter_(1, pick[:, None], True)
            cur_w = torch.maximum(cur_w, col)
        else:
            active = step < p.k
            pick = torch.where(active, pick, -1)
            gain = torch.where(active, gain, 0.0)
            taken.scatter_(
                1,
                pick.clamp_min(0)[:, None],
                active[:, None] | taken.gather(1, pick.clamp_min(0)[:, None]),
            )
            cur_w = torch.where(active[:, None], torch.maximum(cur_w, col), cur_w)
        picks.append(pick)
        gains.append(gain)
    indices = torch.stack(picks, 1)
    cover = torch.where(p.mask, cur_w.double() - p.base[:, None], 0.0)
    return indices, torch.stack(gains, 1).double(), cover
