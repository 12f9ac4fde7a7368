"""``method="incremental"``: exact greedy that corrects the gains only where they change.

Keeps every candidate's gain and, after a pick, corrects it only for the points whose most
similar pick changed, which in practice touches 2 to 5 times ``n`` rows of the similarity in
total instead of ``k·n``. Rows come from the dense matrix when it is small or given, and are
otherwise recomputed from the features in chunks of ``chunk_size`` rows: memory
``O(n·chunk_size + n·d)``. Same picks as the naive greedy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._problem import FacilityLocationResult, Problem
from ._torch import (
    CHUNK_ELEMENTS,
    Solution,
    TorchProblem,
    column,
    commit_pick,
    compact,
    coverage,
    distances,
    first_near_best,
    gains_of,
    initial_state,
    pairwise,
    per_problem,
    prepare,
    result,
    tie_tolerance,
)


def solve(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    """Greedy facility location, incrementally."""
    p = prepare(problem, "incremental")
    return result(p, _incremental(p))


def _incremental(p: TorchProblem) -> Solution:
    """Exact greedy that corrects the gains only where a point's best similarity improved.

    After pick ``s``, a point ``i`` whose best similarity rose from ``old_i`` to ``new_i``
    lowers ``g_j`` by ``clamp(s(i, j), old_i, new_i) − old_i``. For metric similarities that is
    non-zero only when ``d(i, j) < r_i`` (``r_i``: distance to ``i``'s previous nearest pick),
    hence only for ``j`` with ``d(j, s) < r_i + d(i, s)``, which late in the greedy is a small
    ball around ``s``. The clamp is exact; gains are accumulated in float64.
    """
    batch = p.mask.shape[0]
    if batch == 1:
        return compact(p, _incremental_one)
    if p.dense is None:
        # rows are recomputed from features: solve one problem at a time
        return per_problem(p, _incremental_one)
    g = _full_gains(p, p.base[:, None].expand(batch, p.n))
    return _incremental_loop(p, g, _batched_update)


def _incremental_one(p: TorchProblem) -> Solution:
    if p.kind == "neg_distance" and p.dense is None:
        p, g = _init_neg_distance(p)
    else:
        g = _full_gains(p, p.base[:, None].expand(1, p.n))
    update = _pruned_update if _metric(p) else _batched_update
    return _incremental_loop(p, g, update)


_Update = Callable[[TorchProblem, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], None]


def _incremental_loop(p: TorchProblem, g: Tensor, update: _Update) -> Solution:
    cur, indices, gains, available = initial_state(p)
    first = g.masked_fill(~available, -math.inf).max(1).values
    tol = tie_tolerance(p, first)
    # the running gains carry float64 rounding: candidates this close are re-evaluated exactly
    loose = torch.maximum(tol, 1e-11 * first.abs())
    for step in range(p.kmax):
        masked = g.masked_fill(~available, -math.inf)
        best = masked.max(1, keepdim=True).values
        near = masked >= best - loose[:, None]
        crowd = int(near.sum(1).max())
        pick = masked.argmax(1) if crowd == 1 else _exact_argmax(p, cur, near, crowd, tol)
        col = column(p, pick)
        old = cur
        cur, active = commit_pick(p, step, pick, col, cur, indices, gains, available)
        if step + 1 == p.kmax:
            break
        if step == 0:
            # the first pick moves (nearly) every point: recomputing is as cheap and tidier
            g = _full_gains(p, cur)
            continue
        changed = cur > old if active is None else (cur > old) & active[:, None]
        update(p, g, changed, old, cur, col, available)
    return indices, gains, coverage(p, cur)


def _batched_update(
    p: TorchProblem,
    g: Tensor,
    changed: Tensor,
    old: Tensor,
    cur: Tensor,
    col: Tensor,
    available: Tensor,
) -> None:
    """Correct the gains of every problem for its changed rows, with whole rows of ``dense``."""
    b_idx, i_idx = changed.nonzero(as_tuple=True)
    total = b_idx.numel()
    if total == 0:
        return
    lo, hi = old[b_idx, i_idx][:, None], cur[b_idx, i_idx][:, None]
    lo_w, hi_w = lo.to(p.dtype), hi.to(p.dtype)
    chunk = p.chunk_size or max(1, CHUNK_ELEMENTS // p.n)
    lo_sum = torch.zeros(g.shape[0], dtype=torch.float64, device=p.device)
    lo_sum.index_add_(0, b_idx, lo.squeeze(1))
    for start in range(0, total, chunk):
        sl = slice(start, min(total, start + chunk))
        block = _rows(p, b_idx[sl], i_idx[sl]).clamp_(min=lo_w[sl], max=hi_w[sl])
        if g.shape[0] == 1:
            g[0] -= block.sum(0, dtype=torch.float64)
        else:
            g.index_add_(0, b_idx[sl], block.double(), alpha=-1.0)
    g += lo_sum[:, None]


def _rows(p: TorchProblem, b_idx: Tensor | None, i_idx: Tensor) -> Tensor:
    """Fresh ``[len, n]`` tensor of similarity rows ``s(i, ·)`` of problems ``b`` (None: 0)."""
    if p.dense is not None:
        if b_idx is None or p.dense.shape[0] == 1:
            return p.dense[0].index_select(0, i_idx)
        return p.dense[b_idx, i_idx]
    assert p.features is not None and p.features.shape[0] == 1
    x = p.features[0]
    return pairwise(x.index_select(0, i_idx), x, p.kind)


def _pruned_update(
    p: TorchProblem,
    g: Tensor,
    changed: Tensor,
    old: Tensor,
    cur: Tensor,
    col: Tensor,
    available: Tensor,
) -> None:
    """:func:`_batched_update` for one problem of a metric similarity, skipping far columns.

    Row ``i`` can only change ``g_j`` for ``d(j, s) < r_i + d(i, s)``: with the candidates
    sorted by ``d(·, s)`` that is a prefix, whose length is found by binary search.
    """
    rows = changed[0].nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    dcol = _to_distance(p, col[0])
    lo, hi = old[0, rows], cur[0, rows]
    reach = (_to_distance(p, lo) + dcol[rows]) * (1.0 + 1e-9) + 1e-12
    if 2 * int((dcol <= reach.max()).sum()) >= p.n:
        # the widest row reaches half the points: sorting would not pay
        _batched_update(p, g, changed, old, cur, col, available)
        return
    cand = available[0].nonzero().squeeze(1)
    if cand.numel() == 0:
        return
    cand_d, order = dcol[cand].sort()
    cand = cand[order]
    prefix = torch.searchsorted(cand_d, reach, right=True)
    # widest rows first, so that each chunk's column prefix is set by its first row
    prefix, by_width = prefix.sort(descending=True)
    rows, lo, hi = rows[by_width], lo[by_width], hi[by_width]
    lo_w, hi_w = lo.to(p.dtype)[:, None], hi.to(p.dtype)[:, None]
    widths = prefix.tolist()
    start = 0
    while start < len(widths) and widths[start] > 0:
        width = widths[start]
        stop = min(len(widths), start + max(1, CHUNK_ELEMENTS // width))
        lo_sum = lo[start:stop].sum()
        if 2 * width >= p.n:
            # whole rows are cheaper than a gather; columns out of reach clamp to exactly 0
            block = _rows(p, None, rows[start:stop])
            block.clamp_(min=lo_w[start:stop], max=hi_w[start:stop])
            g[0] -= block.sum(0, dtype=torch.float64) - lo_sum
        else:
            cols = cand[:width]
            block = _sub_block(p, rows[start:stop], cols)
            block.clamp_(min=lo_w[start:stop], max=hi_w[start:stop])
            g[0].index_add_(0, cols, block.sum(0, dtype=torch.float64) - lo_sum, alpha=-1.0)
        start = stop


def _sub_block(p: TorchProblem, rows: Tensor, cols: Tensor) -> Tensor:
    """Fresh ``[len(rows), len(cols)]`` block of the similarity of a single problem."""
    if p.dense is not None:
        return p.dense[0][rows[:, None], cols[None, :]]
    assert p.features is not None
    x = p.features[0]
    return pairwise(x.index_select(0, rows), x.index_select(0, cols), p.kind)


def _exact_argmax(p: TorchProblem, cur: Tensor, near: Tensor, crowd: int, tol: Tensor) -> Tensor:
    """Best candidate among ``near`` by exactly evaluated gain; lowest index on ties."""
    # the `crowd` lowest indices flagged near, in increasing order
    keys = torch.where(near, torch.arange(p.n, device=p.device), p.n)
    cand = keys.topk(crowd, dim=1, largest=False).values.sort(dim=1).values  # [B, crowd]
    ok = cand < p.n
    cand = torch.where(ok, cand, 0)
    exact = gains_of(p, cur, cand).masked_fill_(~ok, -math.inf)
    return cand.gather(1, first_near_best(exact, tol).unsqueeze(1)).squeeze(1)


def _metric(p: TorchProblem) -> bool:
    """Whether s(i, j) decreases with a distance, so the triangle inequality prunes work."""
    return p.kind in ("neg_distance", "exp")


def _to_distance(p: TorchProblem, sim: Tensor) -> Tensor:
    """Invert a metric similarity (float64); ``base`` and below map to the initial radius."""
    if p.kind == "neg_distance":
        return -sim
    scale = float(p.features.shape[-1]) if p.features is not None else 1.0
    return torch.log(sim).mul_(-scale)  # exp(−d/dim); log(0) → inf


def _from_distance(p: TorchProblem, dist: Tensor) -> Tensor:
    if p.kind == "neg_distance":
        return dist.neg_()
    assert p.features is not None
    return dist.div_(-float(p.features.shape[-1])).exp_()


def _full_gains(p: TorchProblem, cur: Tensor) -> Tensor:
    """``g_j = Σ_i relu(s(i, j) − cur_i)`` over valid ``i``, from scratch: ``[B, n]`` float64.

    Computed as ``Σ_i max(s(i, j), cur_i) − Σ_i cur_i``: the max does no arithmetic, so only the
    float64 sums round.
    """
    batch = p.mask.shape[0]
    cur_w = torch.where(p.mask, cur, 0.0).to(p.dtype)  # padding rows: s = 0 and cur = 0
    g = torch.zeros(batch, p.n, dtype=torch.float64, device=p.device)
    rows = p.chunk_size or max(1, CHUNK_ELEMENTS // (p.n * batch))
    for start in range(0, p.n, rows):
        stop = min(p.n, start + rows)
        if p.dense is not None:
            block = p.dense[:, start:stop]
        else:
            assert p.features is not None
            block = pairwise(p.features[:, start:stop], p.features, p.kind)
            block.masked_fill_(~p.mask[:, start:stop, None], 0.0)
        g += torch.maximum(block, cur_w[:, start:stop, None]).sum(1, dtype=torch.float64)
    return g - cur_w.sum(1, dtype=torch.float64)[:, None]


def _init_neg_distance(p: TorchProblem) -> tuple[TorchProblem, Tensor]:
    """One pass for ``C`` (largest distance) and the first gains ``Σ_i (C − d_ij)``.

    Only for a single problem whose points are all valid (see :func:`compact`).
    """
    assert p.features is not None
    x = p.features[0]
    colsum = torch.zeros(p.n, dtype=torch.float64, device=p.device)
    big = torch.zeros((), dtype=p.dtype, device=p.device)
    rows = p.chunk_size or max(1, CHUNK_ELEMENTS // p.n)
    for start in range(0, p.n, rows):
        dist = distances(x[start : start + rows], x)
        colsum += dist.sum(0, dtype=torch.float64)
        big = torch.maximum(big, dist.max())
    c = big.double().reshape(1)
    return p._replace(base=-c), (c * p.n - colsum).unsqueeze(0)
