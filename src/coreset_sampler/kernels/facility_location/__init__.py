r"""Greedy facility location, batched over many independent problems, on any device.

Facility location scores a set ``S`` of selected points by how well it covers every point,
``F(S) = Σ_i max(b, max_{j∈S} s(i, j))``. ``F`` is monotone submodular, so the greedy algorithm
(Nemhauser, Wolsey and Fisher, 1978), which adds the point of largest marginal gain at each
step, is within ``1 − 1/e`` of the optimum. CRAIG (Mirzasoleiman, Bilmes and Leskovec, ICML
2020) and CREST (Yang, Kang and Mirzasoleiman, ICML 2023) select their coresets with it and
weight each selected point by the size of its cluster.

One entry, one dispatch: :func:`greedy_facility_location` checks its arguments once into a
problem description (:mod:`._problem`), picks a solver from a table keyed by method and device
(:data:`_SOLVERS`), and the solver, a module of its own, returns the result: :mod:`._naive`,
:mod:`._incremental`, :mod:`._stochastic` (PyTorch, any device), :mod:`._lazy` (compiled,
CPU) and :mod:`._triton` (Triton kernels, CUDA). ``docs/facility_location.md`` explains each
and why they pick alike.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from coreset_sampler._checks import check_choice

from . import _incremental, _naive, _stochastic, _triton
from ._problem import METHODS, FacilityLocationResult, Method, Problem, SimilarityName, describe
from ._torch import cluster_sizes, compiled_route, materialises, prepare

TIES = ("lowest", "share")

__all__ = ["FacilityLocationResult", "Method", "SimilarityName", "greedy_facility_location"]

# "auto" runs the naive dense greedy on problems up to this size (when the matrix is small),
# the incremental one above
NAIVE_MAX_N = 128

Solver = Callable[[Problem, "torch.Generator | None"], FacilityLocationResult]


logger = logging.getLogger(__name__)

# the compiled solver's module: it imports numba, so only when first asked for, and by "auto"
# in a background thread once the PyTorch solvers have served it LOAD_AFTER_S seconds
_LAZY = "coreset_sampler.kernels.facility_location._lazy"
_module: ModuleType | None = None
_loader: threading.Thread | None = None
_loader_lock = threading.Lock()
# "auto" serves the problems the compiled kernel would take with the PyTorch solvers (which pick
# alike) until they have spent this many seconds on them, and only then loads the kernel in the
# background. Loading costs about 0.5 s of CPU on a 2-core machine from numba's disk cache
# (import 0.2 s, the cache 0.35 s; about 20 s to compile the first time), which a short run
# pays in its training steps too: a 470-step CREST run on an MLP took 2.5 s without it and
# 3.2 s with it, its 14 selections costing 0.12 s in PyTorch. Paying for the kernel only after
# as much time in PyTorch keeps a run within about twice the cheaper of the two when the
# kernel is in numba's cache (ski rental).
LOAD_AFTER_S = 0.5
_pytorch_seconds = 0.0


def _solve_lazy(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    result: FacilityLocationResult = _compiled().solve_problem(problem, generator)
    return result


def _compiled() -> ModuleType:
    """The compiled solver's module, imported in this thread if it is not yet (waiting for a
    background import under way)."""
    global _module
    if _module is None:
        _module = importlib.import_module(_LAZY)
    return _module


def _start_loading(dtype: torch.dtype) -> None:
    """Import the compiled solver's module and compile it for ``dtype`` in a background thread
    (once): ``"auto"`` does not make a selection wait for numba's import, as it does not wait
    for the compilation (:func:`._lazy.ready`)."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = threading.Thread(
                target=_load_quietly, args=(dtype,), name="coreset_sampler-import", daemon=True
            )
            _loader.start()


def _load_quietly(dtype: torch.dtype) -> None:
    try:
        module = _compiled()
        if module.available():
            module.ready(dtype)  # (starts compiling in its own background thread)
    except Exception:  # (then "auto" keeps the PyTorch solvers; "lazy" raises in the caller)
        logger.debug("loading the compiled kernel failed", exc_info=True)


@functools.cache
def _numba_installed() -> bool:
    """Whether numba can be found (not imported): while the compiled solver's module loads,
    ``"auto"`` picks as that solver will."""
    return importlib.util.find_spec("numba") is not None


# (method, device type) -> solver; device None: any device
_SOLVERS: dict[tuple[str, str | None], Solver] = {
    ("naive", None): _naive.solve,
    ("naive-like-lazy", "cpu"): _naive.solve_like_lazy,  # (auto only, see _auto)
    ("incremental", None): _incremental.solve,
    ("stochastic", None): _stochastic.solve,
    ("lazy", "cpu"): _solve_lazy,
}


def greedy_facility_location(
    features: Tensor | None,
    k: int | Tensor,
    *,
    mask: Tensor | None = None,
    similarity: SimilarityName | Tensor = "neg_distance",
    method: Method = "auto",
    epsilon: float = 0.1,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    ties: Literal["lowest", "share"] = "lowest",
) -> FacilityLocationResult:
    r"""Select ``k`` points per problem by greedy facility location, for many problems at once.

    Maximises :math:`F(S) = \sum_{i} \max(0, \max_{j \in S} s(i, j))` over :math:`|S| = k`,
    adding at each step the point of largest marginal gain (lowest index on ties). The
    problems are the leading dimensions of ``features``; all are solved in one call.

    Similarities: ``"neg_distance"`` (:math:`C - \lVert x_i - x_j \rVert`, ``C`` the largest
    distance between two valid points of the problem: the paper's and CRAIG's), ``"exp"``
    (:math:`\exp(-\lVert x_i - x_j \rVert / d)`: the CREST authors' code), ``"cosine"``,
    ``"dot"``, or a precomputed ``[..., n, n]`` tensor (``s(i, j)`` at ``[..., i, j]``; pass
    ``features=None``).

    Methods: ``"naive"`` (dense, every gain every step), ``"incremental"`` (exact, corrects
    only the gains that change; no ``n×n`` matrix with ``chunk_size``), ``"stochastic"``
    (stochastic greedy, ``1 − 1/e − epsilon`` in expectation), ``"lazy"`` (exact, compiled with
    numba, CPU: the fastest there), ``"triton"`` (exact, Triton kernels on CUDA float32
    features with a named similarity: one fused launch per call up to 128 points, two per
    greedy step above), ``"auto"`` (lazy on CPU with numba for named similarities without
    ``chunk_size``, up to 64 features or, for features that are not float64, a small enough
    batch, once the PyTorch solvers have spent 0.5 s on such problems and the kernel has
    loaded in the background; triton on CUDA float32 features with a named similarity, no
    ``chunk_size`` and at most 128 points when Triton imports; else naive up to 128 points,
    incremental above). The exact methods pick alike.
    Costs, memory and exactness: ``docs/facility_location.md``.

    Args:
        features: ``[..., n, d]`` float tensor (half precision is computed in float32), or
            ``None`` with a precomputed similarity.
        k: picks per problem: an ``int``, or an integer tensor of the problems' leading shape.
        mask: optional boolean ``[..., n]``; ``False`` rows are padding: neither candidates nor
            counted, and their features may hold anything.
        similarity: a name from the list above, or a precomputed ``[..., n, n]`` tensor.
        method: ``"auto"``, ``"naive"``, ``"incremental"``, ``"stochastic"``, ``"lazy"`` or
            ``"triton"``.
        epsilon: accuracy of the stochastic greedy, in ``(0, 1)``.
        generator: random stream of the stochastic greedy (seed 0 when omitted).
        chunk_size: rows per block when rows are recomputed from the features.
        ties: how a point equally similar to several picks counts in their weights:
            ``"lowest"`` (all of it to the pick of lowest index: the cluster sizes) or
            ``"share"`` (1/t to each of its t picks: identical points, such as the gradient
            proxies of a zero-initialised classifier head, do not leave most weights at 0).
            The picks, gains and objective are the same.

    Returns:
        A :class:`FacilityLocationResult` ``(indices, weights, gains, objective)``.

    Raises:
        TypeError: wrong argument types or dtypes.
        ValueError: wrong shapes, non-finite values, ``k`` out of range for a problem, a mask
            that selects nothing in a problem, an unknown similarity or method, or points whose
            similarities would overflow. Messages name the argument, the problem and the value.
        ImportError: ``method="lazy"`` without numba, ``method="triton"`` without Triton.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2], [9.0]])
        >>> result = greedy_facility_location(x, 2)
        >>> result.indices.tolist(), result.weights.tolist()
        ([2, 0], [3.0, 2.0])

        Many problems at once, with ragged sizes:

        >>> pools = torch.randn(5, 50, 10, generator=torch.Generator().manual_seed(0))
        >>> valid = torch.ones(5, 50, dtype=torch.bool)
        >>> valid[1, 40:] = False
        >>> out = greedy_facility_location(pools, 13, mask=valid)
        >>> out.indices.shape, out.weights.sum(-1).tolist()
        (torch.Size([5, 13]), [50.0, 40.0, 50.0, 50.0, 50.0])
    """
    check_choice("method", method, METHODS)
    check_choice("ties", ties, TIES)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator should be a torch.Generator, but got {type(generator).__module__}."
            f"{type(generator).__qualname__} (make one with torch.Generator().manual_seed(seed))"
        )
    problem = describe(features, k, mask, similarity, epsilon, chunk_size)
    route = method == "auto" and compiled_route(problem)  # (a problem the kernel would take)
    name = _auto(problem, route) if method == "auto" else method
    if name == "triton":  # weights by the ties rule in the kernel: no PyTorch pass after it
        return _triton.solve(problem, share=ties == "share")
    solver = _SOLVERS.get((name, problem.device.type)) or _SOLVERS.get((name, None))
    if solver is None:
        raise ValueError(
            f"method={name!r} runs on the CPU, but the features are on {problem.device} (use "
            "method='auto', 'naive' or 'incremental' there)"
        )
    start = time.perf_counter()
    result = solver(problem, generator)
    if route and name != "lazy":
        _served_by_pytorch(time.perf_counter() - start, problem.dtype)
    if ties == "share":
        working = prepare(problem, "incremental")
        kmax = result.indices.shape[-1]
        shared = cluster_sizes(working, result.indices.reshape(-1, kmax), share=True)
        result = result._replace(weights=shared.to(result.weights).reshape(result.weights.shape))
    return result


def _served_by_pytorch(seconds: float, dtype: torch.dtype) -> None:
    """Count time the PyTorch solvers spent on a problem the compiled kernel would take; past
    ``LOAD_AFTER_S``, start loading the kernel (for the next call: a whole-set selection that
    took long in PyTorch is followed by the kernel at the next one)."""
    global _pytorch_seconds
    _pytorch_seconds += seconds
    if _module is None and _pytorch_seconds >= LOAD_AFTER_S:
        _start_loading(dtype)


def _auto(p: Problem, route: bool) -> str:
    """``method="auto"``: the compiled solver where it fits (``route``) and is ready, else
    naive for small problems whose dense similarity is built (or given), else incremental."""
    lazy = route
    if lazy:
        module = _module
        if module is None:  # (not loaded: pick as it will)
            lazy = _numba_installed()
        else:
            lazy = module.suits(p)
            if lazy and module.ready(p.dtype):
                return "lazy"
    if _triton.fits(p):
        return "triton"
    small = p.n <= NAIVE_MAX_N and materialises(p, "incremental")
    if small and lazy:  # (the compiled kernel is not ready: pick as it would)
        return "naive-like-lazy"
    return "naive" if small else "incremental"
