"""The compiled kernel's similarities and gains (NumPy code compiled by numba, see :mod:`._jit`).

A problem's points are the columns of ``xt`` ``[d, m]`` (float64: the inner loops run over
points). Similarity codes (``kind``): 0 ``neg_distance`` (``top − d``, ``top`` the largest
distance), 1 ``exp`` (``exp(−d / dim)``), 2 ``dot`` and ``cosine`` (features normalised first),
``STORED`` rows read from a stored symmetric matrix in place of the features. Every function
here is plain Python over NumPy arrays: without numba it runs as it is (slowly), which the tests
use to check the source.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ._jit import CONTRACT, REDUCTION, jit

Array = npt.NDArray[Any]

# internal kind: similarity rows read from a stored symmetric matrix (solve_matrix, above
# matrix_max), in place of the features
STORED = 3

# columns per block when rows are recomputed (four rows of this many float64 stay in L1)
BLOCK = 512

# the kernel computes in float64 whatever the input's dtype: its rounding bounds use this
EPS64 = 2.0**-52

# ... and a point's squared norm must stay below this, so that no squared distance (at most 4×),
# dot product or sum of m of them overflows
NORM_MAX = 1e300

# exp(x), x ≤ 0, as the kernel computes it (:func:`exp_reduce`): x = k·ln 2 + r, |r| ≤ ln 2 / 2
# (Cody–Waite: k·LN2_HI is exact for |k| < 2^21), exp(r) from its Taylor polynomial
LN2_HI = 6.93147180369123816490e-01

LN2_LO = 1.90821492927058770002e-10

INV_LN2 = 1.44269504088896338700e00

# x/ln 2 + 1.5·2^52 holds round(x/ln 2) in its low bits (and as a float, minus the shift)
SHIFT = 6755399441055744.0

SHIFT_BITS = int(np.float64(SHIFT).view(np.int64))

# how many values :func:`exp_triangle` packs together (32 KB; a whole row if it is longer)
PACK = 4096

# exp of anything below this is 0 in float64 (and 2^k of its k is a product of two normals)
EXP_LOW = -746.0


@jit()
def valid_rows(valid: Array, rows: Array) -> int:
    """Write the indices of the ``True`` entries of ``valid`` into ``rows``; return their
    count."""
    m = 0
    for i in range(valid.shape[0]):
        if valid[i]:
            rows[m] = i
            m += 1
    return m


@jit(REDUCTION)
def max_of(values: Array, upto: int, top: float) -> float:
    """The largest of ``values[:upto]`` and ``top`` (four running maxima: one would be a chain
    of dependent comparisons)."""
    t0, t1, t2, t3 = top, top, top, top
    full = upto - upto % 4
    for c in range(0, full, 4):
        t0 = max(t0, values[c])
        t1 = max(t1, values[c + 1])
        t2 = max(t2, values[c + 2])
        t3 = max(t3, values[c + 3])
    for c in range(full, upto):
        t0 = max(t0, values[c])
    return max(max(t0, t1), max(t2, t3))


@jit()
def raw_row(xt: Array, xj: Array, upto: int, kind: int, acc: Array) -> None:
    """``acc[c]`` for ``c < upto``: the squared distance (or, kind 2, the dot product) of point
    ``c`` and the point ``xj``, summed over the features two at a time (``acc += (a + b)``, the
    order every ``raw_row*`` function follows)."""
    d = xt.shape[0]
    for c in range(upto):
        acc[c] = 0.0
    for t in range(0, d - 1, 2):  # (indexing xt directly: a view per feature would cost more)
        v, w = xj[t], xj[t + 1]
        if kind == 2:
            for c in range(upto):
                acc[c] += v * xt[t, c] + w * xt[t + 1, c]
        else:
            for c in range(upto):
                e, f = xt[t, c] - v, xt[t + 1, c] - w
                acc[c] += e * e + f * f
    if d % 2:
        t = d - 1
        v = xj[t]
        if kind == 2:
            for c in range(upto):
                acc[c] += v * xt[t, c]
        else:
            for c in range(upto):
                e = xt[t, c] - v
                acc[c] += e * e


@jit()
def raw_block(xt: Array, ids: Array, c0: int, width: int, kind: int, acc: Array) -> None:
    """``acc[r, c]`` for ``c < width``: :func:`raw_row` of the point ``ids[r]`` and the point
    ``c0 + c``, for the four rows ``r``, sharing each load of ``xt`` (the same operations in the
    same order as :func:`raw_row`)."""
    d = xt.shape[0]
    if kind == STORED:  # xt is the similarity matrix: its rows, as they are
        for r in range(4):
            i = ids[r]
            for c in range(width):
                acc[r, c] = xt[i, c0 + c]
        return
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for c in range(width):
        a0[c] = 0.0
        a1[c] = 0.0
        a2[c] = 0.0
        a3[c] = 0.0
    i0, i1, i2, i3 = ids[0], ids[1], ids[2], ids[3]
    for t in range(0, d - 1, 2):
        v0, v1, v2, v3 = xt[t, i0], xt[t, i1], xt[t, i2], xt[t, i3]
        w0, w1, w2, w3 = xt[t + 1, i0], xt[t + 1, i1], xt[t + 1, i2], xt[t + 1, i3]
        xs, ys = xt[t, c0 : c0 + width], xt[t + 1, c0 : c0 + width]
        if kind == 2:
            for c in range(width):
                x, y = xs[c], ys[c]
                a0[c] += v0 * x + w0 * y
                a1[c] += v1 * x + w1 * y
                a2[c] += v2 * x + w2 * y
                a3[c] += v3 * x + w3 * y
        else:
            for c in range(width):
                x, y = xs[c], ys[c]
                e0, e1, e2, e3 = x - v0, x - v1, x - v2, x - v3
                f0, f1, f2, f3 = y - w0, y - w1, y - w2, y - w3
                a0[c] += e0 * e0 + f0 * f0
                a1[c] += e1 * e1 + f1 * f1
                a2[c] += e2 * e2 + f2 * f2
                a3[c] += e3 * e3 + f3 * f3
    if d % 2:
        t = d - 1
        v0, v1, v2, v3 = xt[t, i0], xt[t, i1], xt[t, i2], xt[t, i3]
        xs = xt[t, c0 : c0 + width]
        if kind == 2:
            for c in range(width):
                x = xs[c]
                a0[c] += v0 * x
                a1[c] += v1 * x
                a2[c] += v2 * x
                a3[c] += v3 * x
        else:
            for c in range(width):
                x = xs[c]
                e0, e1, e2, e3 = x - v0, x - v1, x - v2, x - v3
                a0[c] += e0 * e0
                a1[c] += e1 * e1
                a2[c] += e2 * e2
                a3[c] += e3 * e3


@jit(REDUCTION)
def sqrt_max(acc: Array, upto: int, top: float) -> float:
    """Square roots of ``acc[:upto]`` in place; returns the largest of them and ``top``."""
    for c in range(upto):
        acc[c] = math.sqrt(acc[c])
    return max_of(acc, upto, top)


@jit(REDUCTION)
def sqrt_rows(sim: Array, start: int, stop: int, width: int, top: float) -> float:
    """:func:`sqrt_max` of ``sim[a, :width]`` for the rows ``start ≤ a < stop`` (indexing the
    matrix: a view per row costs more than the row's square roots at this size; four running
    maxima, as in :func:`max_of`)."""
    t0, t1, t2, t3 = top, top, top, top
    full = width - width % 4
    for a in range(start, stop):
        for c in range(width):
            sim[a, c] = math.sqrt(sim[a, c])
        for c in range(0, full, 4):
            t0 = max(t0, sim[a, c])
            t1 = max(t1, sim[a, c + 1])
            t2 = max(t2, sim[a, c + 2])
            t3 = max(t3, sim[a, c + 3])
        for c in range(full, width):
            t0 = max(t0, sim[a, c])
    return max(max(t0, t1), max(t2, t3))


@jit(REDUCTION)
def finish_row(values: Array, upto: int, kind: int, top: float) -> float:
    """Distances (kind 0) to similarities ``top − d`` in place (kind 1: the caller has applied
    :func:`exp_neg`); returns ``Σ max(s, 0)`` of the similarities (compiled with
    reassociation: the sum vectorises)."""
    total = 0.0
    for c in range(upto):
        if kind == 0:
            values[c] = top - values[c]
        total += max(values[c], 0.0)
    return total


@jit(REDUCTION)
def mirror(sim: Array, kind: int, top: float, eps: float, first: Array) -> None:
    """From the lower triangle (with the diagonal): distances (kind 0) to similarities
    ``top − d``, the upper triangle mirrored, and ``first`` (zeros) set to upper bounds of the
    row sums ``Σ_c max(s, 0)`` (each pair's term added to both of its rows; a margin for their
    rounding). One pass over the matrix, indexing it: no view per row."""
    m = sim.shape[0]
    for a in range(m):
        if kind == 0:
            for c in range(a + 1):
                sim[a, c] = top - sim[a, c]
        total = 0.0
        for c in range(a):
            term = max(sim[a, c], 0.0)
            total += term
            first[c] += term
        first[a] += total + max(sim[a, a], 0.0)
        for c in range(a):
            sim[c, a] = sim[a, c]
    for a in range(m):
        # m nonnegative terms: any two summation orders differ by less than 2·m·eps·total
        first[a] += 4.0 * m * eps * first[a]


@jit(CONTRACT)
def exp_reduce(x: float) -> tuple[float, float]:
    """``exp(x) = p·2^k`` for ``x ≤ 0``: returns ``p`` (from the Taylor polynomial of ``exp(r)``
    to degree 13, ``|r| ≤ ln 2 / 2``: truncation below 5e-18) and ``t``, whose bits as an int64
    are ``k + SHIFT_BITS`` (as a float, ``k = t − SHIFT``). ``x`` below ``EXP_LOW`` counts as
    ``EXP_LOW``."""
    x = max(x, EXP_LOW)
    t = x * INV_LN2 + SHIFT
    k = t - SHIFT
    r = (x - k * LN2_HI) - k * LN2_LO
    q = 1.0 / 6227020800.0  # 1/13!, then Horner down to 1/2!
    q = q * r + 1.0 / 479001600.0
    q = q * r + 1.0 / 39916800.0
    q = q * r + 1.0 / 3628800.0
    q = q * r + 1.0 / 362880.0
    q = q * r + 1.0 / 40320.0
    q = q * r + 1.0 / 5040.0
    q = q * r + 1.0 / 720.0
    q = q * r + 1.0 / 120.0
    q = q * r + 1.0 / 24.0
    q = q * r + 1.0 / 6.0
    q = q * r + 0.5
    return 1.0 + (r + (r * r) * q), t


@jit()
def exp_neg(values: Array, upto: int, dim: int, scratch: Array) -> None:
    """``values[c] = exp(−values[c] / dim)`` for ``c < upto`` (``values ≥ 0``), less than 1 ulp
    from the exact value, and the same in the vectorised loop and its scalar rest. Unlike a
    loop of ``math.exp`` calls it vectorises: ``2^k`` is made from integer bits in ``scratch``
    (``[2, ≥ upto]`` float64, seen as int64), as ``2^h·2^(k−h)``, two normal numbers down to
    ``k = −1076``, so ``p·2^h`` is exact and the second product rounds once (to a subnormal if
    need be)."""
    high, low = scratch[0], scratch[1]
    for c in range(upto):
        p, t = exp_reduce(-values[c] / dim)
        values[c] = p
        high[c] = t
    high_bits = high[:upto].view(np.int64)
    low_bits = low[:upto].view(np.int64)
    for c in range(upto):
        k = high_bits[c] - SHIFT_BITS
        h = k >> 1
        high_bits[c] = (h + 1023) << 52
        low_bits[c] = (k - h + 1023) << 52
    for c in range(upto):
        values[c] = values[c] * high[c] * low[c]


@jit()
def exp_triangle(sim: Array, dim: int) -> None:
    """:func:`exp_neg` on the lower triangle of ``sim`` (with the diagonal), its rows packed into
    a vector of up to ``PACK`` values at a time: short rows alone would spend most of their
    time outside the vectorised loop."""
    m = sim.shape[0]
    size = min(m * (m + 1) // 2, max(PACK, m))
    packed = np.empty(size, dtype=np.float64)
    scratch = np.empty((2, size), dtype=np.float64)
    first = 0
    while first < m:
        stop, used = first, 0
        while stop < m and used + stop + 1 <= size:
            for c in range(stop + 1):
                packed[used + c] = sim[stop, c]
            used += stop + 1
            stop += 1
        exp_neg(packed, used, dim, scratch)
        used = 0
        for a in range(first, stop):
            for c in range(a + 1):
                sim[a, c] = packed[used + c]
            used += a + 1
        first = stop


@jit()
def similarity_matrix(xt: Array, kind: int, eps: float) -> tuple[Array, Array]:
    """The ``[m, m]`` float64 similarity of the points (the columns of ``xt``; symmetric) and
    upper bounds of the first gains ``Σ_i max(s(i, j), 0)`` (its row sums, with a margin for
    their rounding)."""
    d, m = xt.shape
    sim = np.empty((m, m), dtype=np.float64)
    xj = np.empty(d, dtype=np.float64)
    top = 0.0  # the largest distance
    ids = np.empty(4, dtype=np.int64)
    full = m - m % 4
    for a0 in range(0, full, 4):  # the lower triangle, four rows at a time (the entries c > a
        for r in range(4):  # are computed too; the mirror overwrites them with the same values)
            ids[r] = a0 + r
        raw_block(xt, ids, 0, a0 + 4, kind, sim[a0 : a0 + 4])
        if kind != 2:  # (whole rows of the block: vectorised to the end, no scalar rest)
            top = sqrt_rows(sim, a0, a0 + 4, a0 + 4, top)
    for a in range(full, m):  # ... and the last rows one by one
        for t in range(d):
            xj[t] = xt[t, a]
        raw_row(xt, xj, a + 1, kind, sim[a])
        if kind != 2:
            top = sqrt_rows(sim, a, a + 1, a + 1, top)
    if kind == 1:  # exp on the triangle only (kind 0 needs the largest distance first)
        exp_triangle(sim, d)
    first = np.zeros(m, dtype=np.float64)
    mirror(sim, kind, top, eps, first)
    return sim, first


@jit()
def first_gains(xt: Array, kind: int) -> tuple[Array, float, float]:
    """Without a matrix: every first gain ``Σ_i max(s(i, j), 0)``, the largest distance and a
    bound of the gains' rounding error, in one pass over the pairs (each pair once)."""
    m = xt.shape[1]
    sums = np.zeros(m, dtype=np.float64)
    top = pair_sums(xt, kind, 0, m, sums)
    gains, err = gains_from_sums(sums, top, kind)
    return gains, top, err


@jit()
def pair_sums(xt: Array, kind: int, start: int, stop: int, sums: Array) -> float:
    """Add to ``sums[j]`` the terms of the first gains (distances for kind 0, ``max(s, 0)``
    otherwise) of the pairs ``(i, c)``, ``c ≤ i``, of the rows ``start ≤ i < stop``, four rows
    at a time; returns the largest distance among them (kinds 0, 1)."""
    d = xt.shape[0]
    acc = np.empty((4, BLOCK), dtype=np.float64)
    ids = np.empty(4, dtype=np.int64)
    scratch = np.empty((2, BLOCK if kind == 1 else 0), dtype=np.float64)
    top = 0.0
    for i0 in range(start, stop, 4):
        end = min(stop, i0 + 4)
        for r in range(4):
            ids[r] = min(i0 + r, end - 1)  # a short group repeats its last row
        for c0 in range(0, end, BLOCK):  # the columns c ≤ i, up to the group's last row
            width = min(BLOCK, end - c0)
            raw_block(xt, ids, c0, width, kind, acc)
            for r in range(end - i0):
                i = i0 + r
                upto = min(width, i + 1 - c0)  # columns c0 ≤ c ≤ i
                if upto <= 0:
                    continue
                a = acc[r]
                if kind == 2:
                    for c in range(upto):
                        a[c] = max(a[c], 0.0)
                else:
                    top = sqrt_max(a, upto, top)
                    if kind == 1:
                        exp_neg(a, upto, d, scratch)
                total = 0.0
                for c in range(upto):
                    total += a[c]
                    sums[c0 + c] += a[c]
                # the diagonal was added to its column above; off it, the pair also counts
                # for row i
                if c0 <= i < c0 + width:
                    total -= a[i - c0]
                sums[i] += total
    return top


@jit()
def gains_from_sums(sums: Array, top: float, kind: int) -> tuple[Array, float]:
    """The first gains from :func:`pair_sums`' sums, and a bound of their rounding error
    (whatever order the sums were added in)."""
    m = sums.shape[0]
    gains = np.empty(m, dtype=np.float64)
    err = 0.0
    for j in range(m):
        if kind == 0:  # Σ_i (C − d_ij) = m·C − Σ_i d_ij
            gains[j] = m * top - sums[j]
            err = max(err, 4.0 * m * EPS64 * (m * top + sums[j]))
        else:  # a sum of m nonnegative terms: relative error below m·eps
            gains[j] = sums[j]
            err = max(err, 4.0 * m * EPS64 * sums[j])
    return gains, err


@jit()
def sim_row(
    xt: Array, kind: int, top: float, j: int, xj: Array, out: Array, scratch: Array
) -> Array:
    """s(j, ·) computed from the features into ``out`` (when there is no matrix; ``scratch``:
    see :func:`exp_neg`), or, kind ``STORED``, copied from the similarity matrix ``xt``."""
    d, m = xt.shape
    if kind == STORED:  # xt is the similarity matrix
        for c in range(m):
            out[c] = xt[j, c]
        return out
    for t in range(d):
        xj[t] = xt[t, j]
    raw_row(xt, xj, m, kind, out)
    if kind != 2:
        sqrt_max(out, m, 0.0)
        if kind == 1:
            exp_neg(out, m, d, scratch)
        finish_row(out, m, kind, top)
    return out


@jit(REDUCTION)
def row_gain(row: Array, cur: Array) -> float:
    """Σ_i max(s(j, i) − cur_i, 0) for ``row`` = s(j, ·) (compiled with reassociation, so the
    sum vectorises; every gain of a call is summed the same way)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(row[i] - cur[i], 0.0)
    return acc


@jit(REDUCTION)
def gain_at(sim: Array, j: int, cur: Array) -> float:
    """:func:`row_gain` of the matrix row ``j`` (without making a view of it)."""
    acc = 0.0
    for i in range(cur.shape[0]):
        acc += max(sim[j, i] - cur[i], 0.0)
    return acc
