"""Compiled CPU greedy for ``greedy_facility_location(method="lazy")`` (optional: numba).

One call solves every problem of a batch in compiled code: similarities in float64, the greedy,
and the cluster sizes, so a batch of small problems costs one Python call instead of a dozen
PyTorch operations per greedy step.

**Two ways to get a similarity.** Up to ``matrix_max`` points (``_MATRIX_MAX``, 4096: a 134 MB
float64 matrix) the problem's ``[m, m]`` matrix is built once, each pair computed once and
mirrored. Above, nothing quadratic is stored: a similarity row is recomputed from the features
(``O(m·d)``) whenever a gain is evaluated, and the first gains' bounds and the largest distance
come from one pass over the pairs. Memory is then ``O(m·d)``.

**Same picks as the naive greedy.** Lazy evaluation keeps an upper bound per candidate (its last
exact gain; gains only shrink, F being submodular). At each step the candidate with the largest
bound is evaluated exactly (a float64 sum over the points), then, in index order, every other
candidate whose bound still reaches ``best − tol``, ``best`` the largest gain evaluated so far;
among the candidates evaluated in this step, the lowest index within ``tol`` of the best is
picked. A candidate left out has a bound, hence a gain, below ``best − tol`` (``best`` only
grows): the pick is the naive greedy's under the same tie rule. Every gain of a call is summed
the same way (vectorised, with reassociation), so equal gains compare equal. Cluster sizes are
kept up to date as the picks come (each point's most similar pick so far, ties to the lowest
index).

numba is imported on first use; :func:`available` says whether it can be.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

_KINDS = {"neg_distance": 0, "exp": 1, "cosine": 2, "dot": 2}
# up to this many points a problem's similarity matrix is stored (float64: 134 MB at 4096);
# above, similarity rows are recomputed from the features
_MATRIX_MAX = 4096
# helpers whose loops are reductions: reassociation lets them vectorise
_REDUCTIONS = ("_gain", "_gain_at", "_sqrt_max", "_finish")
_HELPERS = (
    "_raw", "_raw4", "_sqrt_max", "_finish", "_similarity", "_first_bounds", "_gain", "_gain_at",
    "_sim_row", "_greedy",
)  # fmt: skip
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
    feats: Array,
    mask: Array,
    k: Array,
    kmax: int,
    kind: str,
    eps: float,
    matrix_max: int = _MATRIX_MAX,
) -> tuple[Array, Array, Array, Array, int]:
    """Greedy facility location on every problem of ``feats`` ``[B, n, d]``.

    ``mask`` ``[B, n]`` bool, ``k`` ``[B]`` int64 budgets (each at most its valid count), ``kind``
    a similarity name (``"cosine"`` features already normalised), ``eps`` the machine epsilon of
    the working dtype (for the tie tolerance), ``matrix_max`` the largest problem whose
    similarity matrix is stored. Returns ``indices`` ``[B, kmax]`` int64 (−1 past a budget),
    ``gains`` ``[B, kmax]``, ``weights`` ``[B, kmax]`` (cluster sizes), ``cover`` ``[B, n]``
    (each valid point's term of the objective), all float64, and ``bad``: −1, or ``b·n + i``
    for the first valid row with a non-finite value (then nothing was solved).
    """
    kernel = _compiled()
    batch, n, _ = feats.shape
    indices = np.full((batch, kmax), -1, dtype=np.int64)
    gains = np.zeros((batch, kmax), dtype=np.float64)
    weights = np.zeros((batch, kmax), dtype=np.float64)
    cover = np.zeros((batch, n), dtype=np.float64)
    bad = kernel(
        np.ascontiguousarray(feats, dtype=np.float64),
        np.ascontiguousarray(mask, dtype=np.bool_),
        np.ascontiguousarray(k, dtype=np.int64),
        _KINDS[kind],
        float(eps),
        int(matrix_max),
        indices,
        gains,
        weights,
        cover,
    )
    return indices, gains, weights, cover, int(bad)


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
    module = globals()
    for name in _HELPERS:
        # reductions may be reassociated (and assume no NaN: the kernel checks its input first)
        fast: bool | set[str] = {"reassoc", "nsz", "nnan"} if name in _REDUCTIONS else False
        jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=fast)
        module[name] = jit(module[name])
    _kernel = numba.njit(cache=True, nogil=True, error_model="numpy")(_solve_all)
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
    matrix_max: int,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> int:
    """Solve every problem; return −1, or ``b·n + i`` for the first valid row ``i`` of problem
    ``b`` with a non-finite value (then the outputs are incomplete)."""
    batch, n, d = feats.shape
    rows = np.empty(n, dtype=np.int64)
    for b in range(batch):
        m = 0
        for i in range(n):
            if mask[b, i]:
                rows[m] = i
                m += 1
        xt = np.empty((d, m), dtype=np.float64)  # by column: the inner loops run over points
        probe = 0.0  # NaN once any value is NaN or infinite (x · 0)
        for a in range(m):
            for t in range(d):
                value = feats[b, rows[a], t]
                xt[t, a] = value
                probe += value * 0.0
        if probe != probe:
            for a in range(m):
                for t in range(d):
                    if not math.isfinite(xt[t, a]):
                        return int(b * n + rows[a])
        if m <= matrix_max:
            sim, first = _similarity(xt, kind, eps)
            top = 0.0
        else:
            sim = np.empty((0, 0), dtype=np.float64)
            first, top = _first_bounds(xt, kind, eps)
        _greedy(
            sim, xt, kind, top, first, int(k[b]), eps, rows[:m],
            indices[b], gains[b], weights[b], cover[b],
        )  # fmt: skip
    return -1


def _raw(xt: Array, xj: Array, upto: int, kind: int, acc: Array) -> None:
    """``acc[c]`` for ``c < upto``: the squared distance (or, kind 2, the dot product) of point
    ``c`` and the point ``xj``, summed over the features in order."""
    d = xt.shape[0]
    for c in range(upto):
        acc[c] = 0.0
    for t in range(d):  # (indexing xt directly: a view per feature would cost more here)
        v = xj[t]
        if kind == 2:
            for c in range(upto):
                acc[c] += v * xt[t, c]
        else:
            for c in range(upto):
                diff = xt[t, c] - v
                acc[c] += diff * diff


def _raw4(xt: Array, a0: int, kind: int, out: Array) -> None:
    """:func:`_raw` for the four rows ``a0 ≤ a < a0 + 4`` into ``out[a, :a0 + 4]``, sharing each
    load of ``xt`` (the entries ``c > a`` are computed too; the mirror overwrites them with the
    same values)."""
    d = xt.shape[0]
    upto = a0 + 4
    for a in range(a0, upto):
        for c in range(upto):
            out[a, c] = 0.0
    for t in range(d):
        v0, v1, v2, v3 = xt[t, a0], xt[t, a0 + 1], xt[t, a0 + 2], xt[t, a0 + 3]
        if kind == 2:
            for c in range(upto):
                x = xt[t, c]
                out[a0, c] += v0 * x
                out[a0 + 1, c] += v1 * x
                out[a0 + 2, c] += v2 * x
                out[a0 + 3, c] += v3 * x
        else:
            for c in range(upto):
                x = xt[t, c]
                e0, e1, e2, e3 = x - v0, x - v1, x - v2, x - v3
                out[a0, c] += e0 * e0
                out[a0 + 1, c] += e1 * e1
                out[a0 + 2, c] += e2 * e2
                out[a0 + 3, c] += e3 * e3


def _sqrt_max(acc: Array, upto: int, top: float) -> float:
    """Square roots of ``acc[:upto]`` in place; returns the largest of them and ``top``."""
    for c in range(upto):
        acc[c] = math.sqrt(acc[c])
    for c in range(upto):
        if acc[c] > top:
            top = acc[c]
    return top


def _finish(values: Array, upto: int, kind: int, top: float, dim: int) -> float:
    """Distances (kinds 0, 1) to similarities in place, ``top − d`` or ``exp(−d / dim)``; returns
    ``Σ max(s, 0)`` of the similarities (compiled with reassociation: the sum vectorises)."""
    total = 0.0
    for c in range(upto):
        if kind == 0:
            values[c] = top - values[c]
        elif kind == 1:
            values[c] = math.exp(-values[c] / dim)
        total += max(values[c], 0.0)
    return total


def _similarity(xt: Array, kind: int, eps: float) -> tuple[Array, Array]:
    """The ``[m, m]`` float64 similarity of the points (the columns of ``xt``; symmetric) and
    upper bounds of the first gains ``Σ_i max(s(i, j), 0)`` (its row sums, with a margin for
    their rounding)."""
    d, m = xt.shape
    sim = np.empty((m, m), dtype=np.float64)
    xj = np.empty(d, dtype=np.float64)
    top = 0.0  # the largest distance
    full = m - m % 4
    for a0 in range(0, full, 4):  # the lower triangle, four rows at a time ...
        _raw4(xt, a0, kind, sim)
    for a in range(full, m):  # ... and the last rows one by one
        for t in range(d):
            xj[t] = xt[t, a]
        _raw(xt, xj, a + 1, kind, sim[a])
    if kind != 2:
        for a in range(m):
            top = _sqrt_max(sim[a], a + 1, top)
    for a in range(m):
        for c in range(a):
            sim[c, a] = sim[a, c]
    first = np.empty(m, dtype=np.float64)
    for a in range(m):
        total = _finish(sim[a], m, kind, top, d)
        # m nonnegative terms: any two summation orders differ by less than 2·m·eps·total
        first[a] = total + 4.0 * m * eps * total
    return sim, first


def _first_bounds(xt: Array, kind: int, eps: float) -> tuple[Array, float]:
    """Without a matrix: upper bounds of every first gain ``Σ_i max(s(i, j), 0)`` and the
    largest distance, in one pass over the pairs (each pair once)."""
    d, m = xt.shape
    acc = np.empty(m, dtype=np.float64)
    xj = np.empty(d, dtype=np.float64)
    sums = np.zeros(m, dtype=np.float64)
    top = 0.0
    for j in range(m):
        for t in range(d):
            xj[t] = xt[t, j]
        _raw(xt, xj, j + 1, kind, acc)
        if kind == 2:
            for c in range(j + 1):
                acc[c] = max(acc[c], 0.0)
        else:
            top = _sqrt_max(acc, j + 1, top)
            if kind == 1:
                _finish(acc, j + 1, kind, top, d)
        total = acc[j]
        for c in range(j):
            total += acc[c]
            sums[c] += acc[c]
        sums[j] += total
    bounds = np.empty(m, dtype=np.float64)
    for j in range(m):
        if kind == 0:  # Σ_i (C − d_ij) = m·C − Σ_i d_ij
            value = m * top - sums[j]
            slack = 4.0 * m * eps * (m * top + sums[j])
        else:  # a sum of m nonnegative terms: relative error below m·eps
            value = sums[j]
            slack = 4.0 * m * eps * sums[j]
        bounds[j] = value + slack
    return bounds, top


def _gain(row: Array, cur: Array) -> float:
    """Σ_i max(s(j, i) − cur_i, 0) for ``row`` = s(j, ·) (compiled with reassociation, so the
    sum vectorises; every gain of a call is summed the same way)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(row[i] - cur[i], 0.0)
    return acc


def _gain_at(sim: Array, j: int, cur: Array) -> float:
    """:func:`_gain` of the matrix row ``j`` (without making a view of it)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(sim[j, i] - cur[i], 0.0)
    return acc


def _sim_row(xt: Array, kind: int, top: float, j: int, xj: Array, out: Array) -> Array:
    """s(j, ·) computed from the features into ``out`` (when there is no matrix)."""
    d, m = xt.shape
    for t in range(d):
        xj[t] = xt[t, j]
    _raw(xt, xj, m, kind, out)
    if kind != 2:
        _sqrt_max(out, m, 0.0)
        _finish(out, m, kind, top, d)
    return out


def _greedy(
    sim: Array,
    xt: Array,
    kind: int,
    top: float,
    first: Array,
    budget: int,
    eps: float,
    rows: Array,
    indices: Array,
    gains: Array,
    weights: Array,
    cover: Array,
) -> None:
    d, m = xt.shape
    matrix = sim.shape[0] > 0
    cur = np.zeros(m, dtype=np.float64)  # the floor: negative similarities count as 0
    near = np.full(m, -np.inf)  # each point's largest similarity to a pick (no floor) ...
    owner = np.zeros(m, dtype=np.int64)  # ... and that pick (the lowest index among equals)
    # an upper bound of each candidate's gain, exact where fresh == the step + 1; −inf once taken
    bound = first.copy()
    fresh = np.zeros(m, dtype=np.int64)
    xj = np.empty(d, dtype=np.float64)
    scratch = np.empty(0 if matrix else m, dtype=np.float64)
    picks = np.empty(budget, dtype=np.int64)
    tol = 0.0
    for step in range(budget):
        stamp = step + 1
        # nothing is exact yet: evaluate the largest bound (the matrix-or-row evaluation is
        # written out here and below: a helper holding it made the crest-split call 1.8× slower)
        lead = 0
        for j in range(1, m):
            if bound[j] > bound[lead]:
                lead = j
        if matrix:
            best = _gain_at(sim, lead, cur)
        else:
            best = _gain(_sim_row(xt, kind, top, lead, xj, scratch), cur)
        bound[lead] = best
        fresh[lead] = stamp
        if step == 0:
            tol = 16.0 * eps * abs(best) / math.sqrt(m)
        # then, in index order, every stale bound that can still reach the best so far − tol (a
        # gain is at most its bound, and best only grows, so a candidate skipped now cannot
        # reach the final best − tol either); at the first step with a margin, as tol follows
        # best
        margin = 2.0 * tol if step == 0 else tol
        for j in range(m):
            if bound[j] < best - margin or fresh[j] == stamp:
                continue
            if matrix:
                value = _gain_at(sim, j, cur)
            else:
                value = _gain(_sim_row(xt, kind, top, j, xj, scratch), cur)
            bound[j] = value
            fresh[j] = stamp
            best = max(best, value)
        if step == 0:
            tol = 16.0 * eps * abs(best) / math.sqrt(m)
        pick = 0
        while fresh[pick] != stamp or bound[pick] < best - tol:
            pick += 1
        picks[step] = pick
        indices[step] = rows[pick]
        gains[step] = bound[pick]
        bound[pick] = -np.inf
        row = sim[pick] if matrix else _sim_row(xt, kind, top, pick, xj, scratch)
        for i in range(m):
            v = row[i]
            # cluster sizes: each point to its most similar pick, ties to the lowest index
            closer = v > near[i] or (v == near[i] and pick < owner[i])
            near[i] = v if closer else near[i]
            owner[i] = pick if closer else owner[i]
            cur[i] = max(cur[i], v)
    position = np.empty(m, dtype=np.int64)  # the step at which each pick was taken
    for step in range(budget):
        position[picks[step]] = step
    for i in range(m):
        cover[rows[i]] = cur[i]
        weights[position[owner[i]]] += 1.0
