"""The compiled kernel's greedy strategies, exact, and its loops over the problems.

Up to ``matrix_max`` points a problem's similarity matrix is stored and the greedy is lazy
(:func:`lazy_greedy`); above, nothing quadratic is stored and the greedy is incremental
(:func:`incremental_greedy`, rows recomputed from the features). Both pick what the naive
greedy picks (see ``docs/facility_location.md``). Compiled by numba (:mod:`._jit`); plain
Python without it. (A private module: its names are the kernel's, not the package's API.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ._jit import jit
from ._kernel_similarity import (
    BLOCK,
    EPS64,
    NORM_MAX,
    STORED,
    exp_triangle,
    first_gains,
    gain_at,
    gains_from_sums,
    max_of,
    mirror,
    raw_block,
    row_gain,
    sim_row,
    similarity_matrix,
    valid_rows,
)

Array = npt.NDArray[Any]


@jit()
def solve_all(
    feats: Array,
    mask: Array,
    k: Array,
    kind: int,
    eps: float,
    matrix_max: int,
    later: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> int:
    """Solve every problem but those flagged ``later`` (whose values are checked all the same);
    return −1, or (then the outputs are incomplete) ``b·n + i`` for the first valid row ``i``
    of problem ``b`` with a non-finite value, or ``−2 − b`` for a problem ``b`` whose points
    are too large for float64 similarities (a squared norm above ``NORM_MAX``)."""
    batch, n, d = feats.shape
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = valid_rows(mask[b], rows)
        xt = np.empty((d, m), dtype=np.float64)  # by column: the inner loops run over points
        # whether a point's squared norm is NaN (a NaN value), infinite (an infinite value, or
        # an overflow) or above NORM_MAX: one comparison per point, no chain of adds through
        # all the values
        large = False
        for a in range(m):
            square = 0.0
            for t in range(d):
                value = np.float64(feats[b, rows[a], t])  # (a float32 square may overflow)
                xt[t, a] = value
                square += value * value
            large |= not square <= NORM_MAX
        if large:
            for a in range(m):
                for t in range(d):
                    if not math.isfinite(xt[t, a]):
                        return int(b * n + rows[a])
            return -2 - b
        if later[b]:
            continue
        if m <= matrix_max:
            sim, first = similarity_matrix(xt, kind, eps)
            lazy_greedy(
                sim, first, int(k[b]), eps, kind != 2, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
        else:
            first, top, err = first_gains(xt, kind)
            incremental_greedy(
                xt, kind, top, first, err, int(k[b]), eps, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
    return -1


@jit()
def solve_matrix_all(
    raw: Array,
    mask: Array,
    k: Array,
    kind: int,
    dim: int,
    eps: float,
    matrix_max: int,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """:func:`solve_matrix`'s compiled loop over the problems."""
    batch, n, _ = raw.shape
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = valid_rows(mask[b], rows)
        if m == n:
            sim = raw[b]
        else:  # the valid rows and columns, packed
            sim = np.empty((m, m), dtype=np.float64)
            for a in range(m):
                for c in range(m):
                    sim[a, c] = raw[b, rows[a], rows[c]]
        # the similarity as similarity_matrix makes it, from the lower triangle: the upper one is
        # overwritten by its mirror image (a matrix product need not be exactly symmetric)
        top = 0.0  # the largest distance
        if kind == 0:
            for a in range(m):
                top = max_of(sim[a], a + 1, top)
        if kind == 1:
            exp_triangle(sim, dim)
        first = np.zeros(m, dtype=np.float64)
        budget = int(k[b])
        if m <= matrix_max:
            mirror(sim, kind, top, eps, first)  # bounds of the first gains
            lazy_greedy(
                sim, first, budget, eps, kind != 2, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip
        else:
            mirror(sim, kind, top, 0.0, first)  # (eps 0: the sums themselves)
            g, err = gains_from_sums(first, 0.0, 2)
            incremental_greedy(
                sim, STORED, 0.0, g, err, budget, eps, rows[:m],
                indices[b], gains[b], weights[b], cover[b],
            )  # fmt: skip


@jit()
def lazy_greedy(
    sim: Array,
    first: Array,
    budget: int,
    eps: float,
    tighten: bool,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """The lazy greedy on a stored similarity matrix ``sim`` (``first``: bounds of the first
    gains; ``tighten``: whether each row's largest similarity is its diagonal, see
    :func:`lower_bounds`); writes the problem's outputs."""
    m = sim.shape[0]
    cur = np.zeros(m, dtype=np.float64)  # the floor: negative similarities count as 0
    near = np.full(m, -np.inf)  # each point's largest similarity to a pick (no floor) ...
    owner = np.zeros(m, dtype=np.int64)  # ... and that pick (the lowest index among equals)
    bound = first.copy()  # an upper bound of each candidate's gain; −inf once taken
    cand = np.empty(m, dtype=np.int64)  # the step's candidates, in index order
    picks = np.empty(budget, dtype=np.int64)
    tol = 0.0
    largest = max_of(first, m, 0.0)  # no gain exceeds the largest first bound
    # each gain's rounding is below m·eps64·largest / 2: what lower_bounds adds back per step
    slack = 4.0 * m * EPS64 * largest
    for step in range(budget):
        # nothing is exact yet: evaluate the (first) largest bound
        top = max_of(bound, m, -np.inf)
        lead = 0
        while bound[lead] < top:
            lead += 1
        best = gain_at(sim, lead, cur)
        bound[lead] = best
        if step == 0:
            tol = tie_tolerance(best, m, eps)
        # then, in index order, every bound that can still reach the best so far − tol (a gain
        # is at most its bound, and best only grows, so a candidate skipped now cannot reach
        # the final best − tol either); at the first step with a margin, as tol follows best.
        # The candidates are gathered first, without a branch per point.
        margin = 2.0 * tol if step == 0 else tol
        floor = best - margin
        count = 0
        for j in range(m):
            cand[count] = j
            count += bound[j] >= floor
        for c in range(count):
            j = cand[c]
            if j == lead or bound[j] < best - margin:
                continue
            value = gain_at(sim, j, cur)
            bound[j] = value
            best = max(best, value)
        if step == 0:
            tol = tie_tolerance(best, m, eps)
        # the lowest index within tol of the best, which is an evaluated candidate: a bound
        # left stale (outside cand, or skipped) was below b − margin, b the best when it was
        # passed. After step 0, margin = tol: it is below best − tol. At step 0 (tol = c·best,
        # margin = 2·c·lead's gain): if b is the gain of an earlier candidate of cand, that
        # candidate's bound is higher and comes first; else b is the lead's gain g, and
        # g·(1 − 2c) ≤ best·(1 − c) = best − tol. The best candidate's bound reaches the limit.
        limit = best - tol
        c = 0
        while c + 1 < count and bound[cand[c]] < limit:  # (c + 1 < count: never past cand)
            c += 1
        pick = cand[c]
        picks[step] = pick
        gains[step] = bound[pick]
        bound[pick] = -np.inf
        if tighten:
            lower_bounds(sim, pick, cur, bound, slack)
        take(sim[pick], pick, cur, near, owner)
    finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


@jit()
def lower_bounds(sim: Array, pick: int, cur: Array, bound: Array, slack: float) -> None:
    """Lower every bound by what the pick certainly removes from the candidate's gain, where
    each row's largest similarity is its diagonal (``s(j, j) ≥ s(i, j)``: kinds 0 and 1).
    Two terms of ``g_j = Σ_i max(s(i, j) − cur_i, 0)`` are known to shrink: the pick's own
    (``i = pick``: its ``cur`` becomes ``s(pick, pick)`` ≥ every ``s(pick, j)``, so the term
    becomes 0; it was at least ``max(s(pick, j) − cur_pick, 0)`` whenever the bound was
    evaluated, ``cur`` only growing) and the candidate's (``i = j``: ``s(j, j) − cur_j`` falls
    by the rise of ``cur_j``). Other terms only shrink. ``slack`` (added back each step) covers
    the rounding of the evaluated gains and of these subtractions, so a bound stays at or above
    the gain :func:`gain_at` would return. ``cur`` is still the one before the pick."""
    base = cur[pick]
    for j in range(cur.shape[0]):
        s = sim[pick, j]
        bound[j] -= max(s - base, 0.0) + max(s - cur[j], 0.0) - slack


@jit()
def tie_tolerance(best: float, m: int, eps: float) -> float:
    """Gains this close to the step's best count as tied (the lowest index wins): the rounding
    of two summation orders of ``m`` terms, from the first step's best gain."""
    return 16.0 * eps * abs(best) / math.sqrt(m)


@jit()
def take(row: Array, pick: int, cur: Array, near: Array, owner: Array) -> None:
    """Pick ``pick`` (similarities ``row`` = s(pick, ·)): raise ``cur`` and move the points it is
    now the most similar pick of (ties to the lowest index) into its cluster."""
    for i in range(cur.shape[0]):
        v = row[i]
        closer = v > near[i] or (v == near[i] and pick < owner[i])
        near[i] = v if closer else near[i]
        owner[i] = pick if closer else owner[i]
        cur[i] = max(cur[i], v)


@jit()
def finish_problem(
    picks: Array,
    budget: int,
    rows: Array,
    cur: Array,
    owner: Array,
    indices: Array,
    weights: Array,
    cover: Array,
) -> None:
    """Write the picks (as indices of the unmasked problem), cluster sizes and coverage (no
    picks, no clusters: a budget of 0 leaves ``indices`` and ``weights`` as they are)."""
    position = np.empty(cur.shape[0], dtype=np.int64)  # the step at which each pick was taken
    for step in range(budget):
        position[picks[step]] = step
        indices[step] = rows[picks[step]]
    for i in range(cur.shape[0]):
        cover[rows[i]] = cur[i]
        if budget > 0:
            weights[position[owner[i]]] += 1.0


# --------------------------------------------------------------------------- above matrix_max
# No matrix: every candidate's gain is kept and corrected as the picks come. After a pick, a
# point ``i`` whose best similarity rose from ``lo`` to ``hi`` lowers each ``g_j`` by
# ``clamp(s(i, j), lo, hi) − lo``; its similarity row is recomputed from the features for that.


@jit()
def incremental_greedy(
    xt: Array,
    kind: int,
    top: float,
    g: Array,
    err: float,
    budget: int,
    eps: float,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    """The incremental greedy from the first gains ``g`` (corrected in place; ``err`` bounds
    their rounding error); writes the problem's outputs. (:func:`_incremental_threads` is the
    same loop with the corrections split over threads.)"""
    m = xt.shape[1]
    state = buffers(g, err, budget)
    cur, near, owner, taken, row, cand, exact, moved, lo, hi, picks, scalars = state
    acc = np.empty((4, BLOCK), dtype=np.float64)
    for step in range(budget):
        count = greedy_step(
            xt, kind, top, eps, step, g, gains, cur, near, owner, taken, row, cand, exact,
            moved, lo, hi, picks, scalars,
        )  # fmt: skip
        if step + 1 < budget:
            correct(xt, kind, top, moved, lo, hi, count, g, acc, 0, m)
    finish_problem(picks, budget, rows, cur, owner, indices, weights, cover)


@jit()
def buffers(
    g: Array, err: float, budget: int
) -> tuple[Array, Array, Array, Array, Array, Array, Array, Array, Array, Array, Array, Array]:
    """The incremental greedy's state for ``m = len(g)`` points (see :func:`greedy_step`)."""
    m = g.shape[0]
    # no gain ever exceeds the largest first gain (F is submodular)
    largest = max_of(g, m, 0.0)
    scalars = np.empty(3, dtype=np.float64)
    scalars[0] = err + 4.0 * m * EPS64 * largest  # and the exact evaluations' own rounding
    scalars[1] = 0.0  # tol, set at the first step
    scalars[2] = largest
    return (
        np.zeros(m, dtype=np.float64),  # cur: the floor, negative similarities count as 0
        np.full(m, -np.inf),  # near: each point's largest similarity to a pick (no floor) ...
        np.zeros(m, dtype=np.int64),  # owner: ... and that pick (the lowest index among equals)
        np.zeros(m, dtype=np.bool_),  # taken
        np.empty(m, dtype=np.float64),  # row: similarities of the last evaluated candidate
        np.empty(m, dtype=np.int64),  # cand: the candidates near the largest kept gain
        np.zeros(m, dtype=np.bool_),  # exact: whether g[j] is exact (no correction since)
        np.empty(m, dtype=np.int64),  # moved: the points whose best similarity rose, ...
        np.empty(m, dtype=np.float64),  # lo: ... from ...
        np.empty(m, dtype=np.float64),  # hi: ... to
        np.empty(budget, dtype=np.int64),  # picks
        scalars,  # err (a bound of the kept gains' error), tol, the largest first gain
    )


@jit()
def greedy_step(
    xt: Array,
    kind: int,
    top: float,
    eps: float,
    step: int,
    g: Array,
    gains: Array,
    cur: Array,
    near: Array,
    owner: Array,
    taken: Array,
    row: Array,
    cand: Array,
    exact: Array,
    moved: Array,
    lo: Array,
    hi: Array,
    picks: Array,
    scalars: Array,
) -> int:
    """One step of the incremental greedy: the pick, its gain, and the points whose best
    similarity it raised (``moved``, from ``lo`` to ``hi``: their count is returned), whose
    corrections to ``g`` are left to the caller.

    The kept gains ``g`` round differently from an exact evaluation, so the step evaluates
    exactly (:func:`row_gain` of a recomputed row, as the lazy greedy does) every candidate whose
    kept gain is within ``tol + 2·err`` of the largest one, ``err`` a running bound of the kept
    gains' error: a candidate left out is more than ``tol`` below the best exact gain, so the
    pick (the lowest index within ``tol`` of the best) is the naive greedy's. An evaluated gain
    is written into ``g`` and flagged ``exact`` until the next correction (a step that moves no
    point, as once every gain is 0, corrects nothing), so it is not evaluated again.
    """
    d, m = xt.shape
    err, tol, largest = scalars[0], scalars[1], scalars[2]
    xj = np.empty(0 if kind == STORED else d, dtype=np.float64)
    scratch = np.empty((2, m if kind == 1 else 0), dtype=np.float64)
    lead = -1
    for j in range(m):
        if not taken[j] and (lead < 0 or g[j] > g[lead]):
            lead = j
    # at the first step tol is not known yet: twice its value from the kept gain
    margin = 2.0 * tie_tolerance(g[lead], m, eps) if step == 0 else tol
    floor = g[lead] - margin - 2.0 * err
    count = 0
    best = -np.inf
    in_row = -1  # the candidate whose similarities ``row`` holds
    for j in range(m):
        # (``lead`` always: a NaN floor must not leave the step without a candidate)
        if not taken[j] and (g[j] >= floor or j == lead):
            if not exact[j]:  # (else evaluated since the last correction: still exact)
                g[j] = row_gain(sim_row(xt, kind, top, j, xj, row, scratch), cur)
                exact[j] = True
                in_row = j
            cand[count] = j
            best = max(best, g[j])
            count += 1
    if step == 0:
        tol = tie_tolerance(best, m, eps)
    q = 0
    while g[cand[q]] < best - tol and q + 1 < count:
        q += 1
    pick = cand[q]
    if pick != in_row:
        sim_row(xt, kind, top, pick, xj, row, scratch)
    picks[step] = pick
    gains[step] = g[pick]
    taken[pick] = True
    count = 0
    for i in range(m):
        if row[i] > cur[i]:
            moved[count] = i
            lo[count] = cur[i]
            hi[count] = row[i]
            # each correction rounds twice: below eps·(|g| + |Δ|) each, Δ ≤ hi − lo
            err += 4.0 * EPS64 * (2.0 * largest + abs(row[i]) + abs(cur[i]))
            count += 1
    if count > 0:  # the caller corrects every gain: none is exact any more
        exact[:] = False
    take(row, pick, cur, near, owner)
    scalars[0] = err
    scalars[1] = tol
    return count


@jit()
def correct(
    xt: Array,
    kind: int,
    top: float,
    moved: Array,
    lo: Array,
    hi: Array,
    count: int,
    g: Array,
    acc: Array,
    start: int,
    stop: int,
) -> None:
    """``g_j −= clamp(s(i, j), lo_i, hi_i) − lo_i`` for the ``count`` points ``i`` of ``moved``
    and the columns ``start ≤ j < stop``, four rows at a time, in blocks of ``BLOCK`` columns
    (each ``g_j`` gets its corrections in the same order however the columns are split)."""
    d = xt.shape[0]
    ids = np.empty(4, dtype=np.int64)
    reach = np.empty(4, dtype=np.float64)
    for q0 in range(0, count, 4):
        rows_here = min(4, count - q0)
        for r in range(4):
            q = q0 + min(r, rows_here - 1)  # a short group repeats its last row
            ids[r] = moved[q]
            reach[r] = reach_of(kind, top, lo[q], d)
        for c0 in range(start, stop, BLOCK):
            width = min(BLOCK, stop - c0)
            raw_block(xt, ids, c0, width, kind, acc)
            for r in range(rows_here):
                q = q0 + r
                clamp_into(acc[r], width, kind, top, d, lo[q], hi[q], reach[r], g[c0:])


@jit()
def reach_of(kind: int, top: float, lo: float, dim: int) -> float:
    """A raw value (squared distance) at or above which ``s ≤ lo`` (kinds 0, 1), with a
    margin for rounding; +inf where no such bound is used."""
    if kind == 0:
        radius = top - lo
    elif kind == 1 and lo > 0.0:
        radius = -dim * math.log(lo)
    else:
        return np.inf
    return radius * radius * (1.0 + 1e-9) + 1e-300


@jit()
def clamp_into(
    raw: Array,
    width: int,
    kind: int,
    top: float,
    dim: int,
    lo: float,
    hi: float,
    reach: float,
    g: Array,
) -> None:
    """``g[c] −= clamp(s, lo, hi) − lo`` for the similarities ``s`` of the raw values
    ``raw[:width]`` (as :func:`sim_row` computes them, but for ``exp``: the C library's, one
    value at a time, where it is faster than the kernel's own; a few ulps from
    :func:`exp_neg`'s at most, far inside the kept gains' error bound); values at or beyond
    ``reach`` give ``s ≤ lo`` and are skipped."""
    for c in range(width):
        v = raw[c]
        if kind >= 2:  # (dot products, or similarities read from the matrix)
            s = v
        elif v >= reach:
            continue
        elif kind == 0:
            s = top - math.sqrt(v)
        else:
            s = math.exp(-math.sqrt(v) / dim)
        if s > lo:
            g[c] -= min(s, hi) - lo
