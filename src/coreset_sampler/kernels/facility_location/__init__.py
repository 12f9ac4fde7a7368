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

__all__ = [
    "FacilityLocationResult",
    "Method",
    "SimilarityName",
    "greedy_facility_location",
    "load_compiled_kernel",
]

# "auto" runs the naive dense greedy on problems up to this size (when the matrix is small),
# the incremental one above
NAIVE_MAX_N = 128

Solver = Callable[[Problem, "torch.Generator | None"], FacilityLocationResult]


logger = logging.getLogger(__name__)

# The compiled solver's module imports numba: only when first asked for. "auto" serves the
# problems the compiled kernel would take with the PyTorch solvers (which pick alike) until they
# have spent LOAD_AFTER_S seconds on them; the call that crosses it imports the module (about
# 0.2 s, in the caller's thread: a fork during a background import could leave a child process
# waiting for ever on numba's import lock) and starts compiling in a background thread (0.35 s
# from numba's disk cache, about 20 s the first time). Loading costs a run's training steps
# too: a 470-step CREST run on an MLP took 2.5 s without it and 3.2 s with it, its 14
# selections costing 0.12 s in PyTorch. Paying for the kernel only after as much time in
# PyTorch keeps a run within about twice the cheaper of the two when the kernel is in numba's
# cache (ski rental).
_LAZY = "coreset_sampler.kernels.facility_location._lazy"
_module: ModuleType | None = None
LOAD_AFTER_S = 0.5
_pytorch_seconds = 0.0  # spent by the PyTorch solvers on problems the kernel would take
_last_call = (0.0, 1)  # (seconds, work) of the last of those calls
_waited: set[torch.dtype] = set()  # dtypes "auto" has waited for the compilation of, once
_load_lock = threading.Lock()
_load_failed = False


def _solve_lazy(problem: Problem, generator: torch.Generator | None) -> FacilityLocationResult:
    result: FacilityLocationResult = _compiled().solve_problem(problem, generator)
    return result


def _compiled() -> ModuleType:
    """The compiled solver's module, imported in this thread if it is not yet."""
    global _module
    if _module is None:
        _module = importlib.import_module(_LAZY)
    return _module


def _load(dtype: torch.dtype) -> None:
    """Import the compiled solver's module (here) and start compiling it for ``dtype`` in a
    background thread (:func:`._lazy.ready`); once: a failure is logged, and "auto" keeps the
    PyTorch solvers."""
    global _load_failed
    with _load_lock:
        if _module is not None or _load_failed:
            return
        try:
            module = _compiled()
        except Exception:
            _load_failed = True
            logger.warning("loading the compiled facility-location kernel failed", exc_info=True)
            return
    if module.available():
        module.ready(dtype)
    else:
        _warn_unusable(module)


def _warn_unusable(module: ModuleType) -> None:
    logger.warning(
        "numba is installed but does not import (%s): the facility-location greedy runs in PyTorch",
        module.import_error(),
    )


def load_compiled_kernel(dtype: torch.dtype = torch.float32) -> bool:
    """Import and compile the numba kernel now, in this thread, so that ``method="auto"`` uses
    it from the next call on the CPU problems it takes.

    By default ``"auto"`` loads it only once the PyTorch solvers have spent 0.5 s on such
    problems (loading costs about as much CPU from numba's disk cache, and about 20 s to
    compile the first time): call this first when a process will select for long, or to time
    the kernel itself.

    Args:
        dtype: the features' dtype to compile for, ``torch.float32`` or ``torch.float64``
            (pass ``torch.float32`` for half-precision features, which are computed in float32).

    Returns:
        Whether the compiled kernel is available (``False`` without a working numba, with a
        warning when numba is installed but does not import).

    Raises:
        TypeError: ``dtype`` is not a ``torch.dtype``.
        ValueError: ``dtype`` is not float32 or float64.
        Exception: whatever numba raises if the compilation fails.

    Examples:
        >>> import torch
        >>> if load_compiled_kernel(torch.float32):
        ...     out = greedy_facility_location(torch.randn(4, 30, 5), 6)  # the kernel serves
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype should be a torch.dtype, but got {type(dtype).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype should be torch.float32 or torch.float64, but got {dtype}")
    module = _compiled()
    if not module.available():
        if _numba_installed():
            _warn_unusable(module)
        return False
    module.compile_now(dtype)
    return True


@functools.cache
def _numba_installed() -> bool:
    """Whether numba can be found (not imported): until the compiled solver is ready, "auto"
    picks as that solver will."""
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
    compiled in the background; triton on CUDA float32 features with a named similarity, no
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
        _served_by_pytorch(time.perf_counter() - start, problem)
    if ties == "share":
        working = prepare(problem, "incremental")
        kmax = result.indices.shape[-1]
        shared = cluster_sizes(working, result.indices.reshape(-1, kmax), share=True)
        result = result._replace(weights=shared.to(result.weights).reshape(result.weights.shape))
    return result


def _served_by_pytorch(seconds: float, p: Problem) -> None:
    """Count time the PyTorch solvers spent on a problem the compiled kernel would take; past
    ``LOAD_AFTER_S``, load the kernel (:func:`_load`)."""
    global _pytorch_seconds, _last_call
    _pytorch_seconds += seconds
    _last_call = (seconds, _work(p))
    ripe = _pytorch_seconds >= LOAD_AFTER_S and _numba_installed()
    if ripe and _module is None and not _load_failed:
        _load(p.dtype)


def _work(p: Problem) -> int:
    """A problem's size for the greedy: problems × points² × features."""
    assert p.features is not None
    return max(1, p.batch * p.n * p.n * int(p.features.shape[-1]))


def _wait_for(p: Problem) -> float:
    """How long "auto" waits for the compilation under way before serving ``p`` with PyTorch:
    once per dtype, and only for a problem that PyTorch would take more than ``LOAD_AFTER_S``
    on (estimated from the last PyTorch call, in proportion to the work): waiting that long
    costs no more than solving it; a small call after a large one does not wait, and a cold
    compilation (about 20 s) is waited for once, not before every call."""
    if p.dtype in _waited:
        return 0.0
    seconds, work = _last_call
    estimate = seconds * _work(p) / work
    if estimate < LOAD_AFTER_S:
        return 0.0
    _waited.add(p.dtype)
    return estimate


def _auto(p: Problem, route: bool) -> str:
    """``method="auto"``: the compiled solver where it fits (``route``) and is ready, else
    naive for small problems whose dense similarity is built (or given), else incremental."""
    lazy = route
    if lazy:
        module = _module
        if module is None or not module.available():  # (not loaded: pick as it will)
            lazy = _numba_installed()
        else:
            lazy = module.suits(p)
            if lazy and (module.ready(p.dtype) or module.ready(p.dtype, wait=_wait_for(p))):
                return "lazy"
    if _triton.fits(p):
        return "triton"
    small = p.n <= NAIVE_MAX_N and materialises(p, "incremental")
    if small and lazy:  # (the compiled kernel is not ready: pick as it would)
        return "naive-like-lazy"
    return "naive" if small else "incremental"
