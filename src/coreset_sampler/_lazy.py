"""Compiled CPU greedy for ``greedy_facility_location(method="lazy")`` (optional: numba).

One call solves every problem of a batch in compiled code: distances (or dot products) in
float64, the greedy, and the cluster sizes, so a batch of small problems costs one Python call
instead of a dozen PyTorch operations per greedy step.

**Same picks as the naive greedy.** Up to ``_DENSE_MAX`` points every gain is recomputed at
every step. Above, lazy evaluation keeps an upper bound per candidate (its last
exact gain; gains only shrink, F being submodular). At each step the candidate with the largest
bound is evaluated exactly, from scratch (a float64 sum over the points), until no unevaluated
bound reaches ``best − tol``; among the candidates evaluated in this step, the lowest index
within ``tol`` of the best is picked. A candidate left out has a bound, hence a gain, below
``best − tol``: the pick is the naive greedy's under the same tie rule.

numba is imported on first use; :func:`available` says whether it can be.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

_KINDS = {"neg_distance": 0, "exp": 1, "cosine": 2, "dot": 2}
# up to this many points, every gain is recomputed at every step (vectorised, no bookkeeping);
# above, lazy evaluation touches far fewer of them
_DENSE_MAX = 160
_kernel: Any = None
_import_error: BaseException | None = None


def available() -> bool:
    """Whether numba can be imported (the kernel compiles on the first call)."""
    try:
        _compiled()
    except ImportError:
        return False
    return True


def solve(
    feats: Array, mask: Array, k: Array, kmax: int, kind: str, eps: float
) -> tuple[Array, Array, Array, Array]:
    """Greedy facility location on every problem of ``feats`` ``[B, n, d]``.

    ``mask`` ``[B, n]`` bool, ``k`` ``[B]`` int64 budgets (each at most its valid count), ``kind``
    a similarity name (``"cosine"`` features already normalised), ``eps`` the machine epsilon of
    the working dtype (for the tie tolerance). Returns ``indices`` ``[B, kmax]`` int64 (−1 past a
    budget), ``gains`` ``[B, kmax]``, ``weights`` ``[B, kmax]`` (cluster sizes) and ``cover``
    ``[B, n]`` (each valid point's term of the objective), all float64.
    """
    kernel = _compiled()
    batch, n, _ = feats.shape
    indices = np.full((batch, kmax), -1, dtype=np.int64)
    gains = np.zeros((batch, kmax), dtype=np.float64)
    weights = np.zeros((batch, kmax), dtype=np.float64)
    cover = np.zeros((batch, n), dtype=np.float64)
    kernel(
        np.ascontiguousarray(feats, dtype=np.float64),
        np.ascontiguousarray(mask, dtype=np.bool_),
        np.ascontiguousarray(k, dtype=np.int64),
        _KINDS[kind],
        float(eps),
        indices,
        gains,
        weights,
        cover,
    )
    return indices, gains, weights, cover


def _compiled() -> Any:
    global _kernel, _import_error
    if _kernel is not None:
        return _kernel
    if _import_error is not None:
        raise ImportError(_MISSING) from _import_error
    try:
        import numba
    except Exception as exc:  # not installed, or broken (e.g. built for another NumPy)
        _import_error = exc
        raise ImportError(_MISSING) from exc
    # the helpers are looked up in this module's globals when _solve_all compiles: swap in
    # their compiled versions first
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    module = globals()
    for name in ("_similarity", "_gain", "_all_gains", "_greedy"):
        module[name] = jit(module[name])
    _kernel = jit(_solve_all)
    return _kernel


_MISSING = (
    "method='lazy' needs numba (pip install numba, or pip install 'coreset-sampler[fast]'); "
    "method='auto' uses it when installed and otherwise runs in PyTorch"
)


# --------------------------------------------------------------------------- the kernel
# Plain Python over NumPy arrays, compiled by numba.njit; it also runs uncompiled (slowly),
# which the tests use to check it without numba.


def _solve_all(
    feats: Array,
    mask: Array,
    k: Array,
    kind: int,
    eps: float,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    batch, n = feats.shape[0], feats.shape[1]
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = 0
        for i in range(n):
            if mask[b, i]:
                rows[m] = i
                m += 1
        sim = _similarity(feats[b], rows[:m], kind)
        _greedy(sim, int(k[b]), eps, rows[:m], indices[b], gains[b], weights[b], cover[b])


def _similarity(x: Array, rows: Array, kind: int) -> Array:
    """``[m, m]`` float64 similarity of the valid points ``x[rows]`` (symmetric)."""
    m = rows.shape[0]
    d = x.shape[1]
    xt = np.empty((d, m), dtype=np.float64)  # features by column: the inner loops run over points
    for a in range(m):
        for t in range(d):
            xt[t, a] = x[rows[a], t]
    sim = np.zeros((m, m), dtype=np.float64)
    top = 0.0  # the largest distance
    for a in range(m):
        row = sim[a]
        for t in range(d):
            va = xt[t, a]
            col = xt[t]
            if kind == 2:
                for c in range(m):
                    row[c] += va * col[c]
            else:
                for c in range(m):
                    diff = va - col[c]
                    row[c] += diff * diff
        if kind != 2:
            for c in range(m):
                row[c] = math.sqrt(row[c])
                top = max(top, row[c])
    if kind == 0:  # C − distance, C the largest distance of the problem
        for a in range(m):
            for c in range(m):
                sim[a, c] = top - sim[a, c]
    elif kind == 1:  # exp(−distance / dim)
        for a in range(m):
            for c in range(m):
                sim[a, c] = math.exp(-sim[a, c] / d)
    return sim


def _gain(sim: Array, cur: Array, j: int) -> float:
    """Σ_i max(s(i, j) − cur_i, 0), summed in the order of the points (s symmetric)."""
    col = sim[j]
    acc = 0.0
    for i in range(cur.shape[0]):
        diff = col[i] - cur[i]
        if diff > 0.0:
            acc += diff
    return acc


def _all_gains(sim: Array, cur: Array, bound: Array, fresh: Array, stamp: int) -> None:
    """Every candidate's exact gain into ``bound``, point by point in loops over candidates that
    vectorise; each gain is summed in the same order as :func:`_gain` sums it."""
    m = cur.shape[0]
    for j in range(m):
        bound[j] = 0.0
        fresh[j] = stamp
    for i in range(m):
        row = sim[i]
        ci = cur[i]
        for j in range(m):
            bound[j] += max(row[j] - ci, 0.0)


def _greedy(
    sim: Array,
    budget: int,
    eps: float,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    m = rows.shape[0]
    cur = np.zeros(m, dtype=np.float64)  # the floor: negative similarities count as 0
    bound = np.empty(m, dtype=np.float64)
    fresh = np.zeros(m, dtype=np.int64)  # 1 + the step at which bound[j] was computed
    taken = np.zeros(m, dtype=np.bool_)
    _all_gains(sim, cur, bound, fresh, 1)
    picks = np.empty(budget, dtype=np.int64)
    tol = 0.0
    for step in range(budget):
        stamp = step + 1  # bounds computed at this step are exact gains now
        best = -np.inf
        if step == 0 or m <= _DENSE_MAX:
            if step > 0:  # small problems: recompute every gain, no bookkeeping
                _all_gains(sim, cur, bound, fresh, stamp)
            for j in range(m):
                if not taken[j]:
                    best = max(best, bound[j])
            if step == 0:
                tol = 16.0 * eps * abs(best) / math.sqrt(m)
        else:
            while True:
                top = -1
                top_bound = -np.inf
                for j in range(m):
                    if not taken[j] and fresh[j] != stamp and bound[j] > top_bound:
                        top_bound = bound[j]
                        top = j
                # stop once no stale bound can reach best − tol (its gain is at most its bound)
                if top < 0 or top_bound < best - tol:
                    break
                bound[top] = _gain(sim, cur, top)
                fresh[top] = stamp
                best = max(best, bound[top])
        pick = -1
        for j in range(m):
            if not taken[j] and fresh[j] == stamp and bound[j] >= best - tol:
                pick = j
                break
        taken[pick] = True
        picks[step] = pick
        indices[step] = rows[pick]
        gains[step] = bound[pick]
        col = sim[pick]
        for i in range(m):
            if col[i] > cur[i]:
                cur[i] = col[i]
    for i in range(m):
        cover[rows[i]] = cur[i]
    # cluster sizes: each point to its most similar pick, ties to the lowest point index
    # (rows is increasing, so the compact index orders points as the original one does)
    order = np.argsort(picks, kind="mergesort")
    for i in range(m):
        best_pos = order[0]
        best_sim = sim[i, picks[best_pos]]
        for r in range(1, budget):
            pos = order[r]
            s = sim[i, picks[pos]]
            if s > best_sim:
                best_sim = s
                best_pos = pos
        weights[best_pos] += 1.0
