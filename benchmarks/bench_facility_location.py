"""Benchmark ``greedy_facility_location`` against apricot, submodlib and a plain NumPy greedy.

Every method maximises the same objective, facility location with the similarity
``s(i, j) = C − ‖x_i − x_j‖`` (``C`` the largest pairwise distance of the problem)::

    F(S) = Σ_i max_{j∈S} s(i, j)

except in the case ``crest-released``, which uses ``s(i, j) = exp(−‖x_i − x_j‖ / d)``, the
similarity of the authors' released CREST code, and adds the row ``submodlib-released``: submodlib
called as that code calls it (``FacilityLocationFunction(n, data=X, metric="euclidean",
mode="dense")``, which builds that similarity itself, then LazyGreedy).

Each (case, method) pair runs in a fresh subprocess, so that its peak memory is its own. Inside
the worker: imports, data creation, one warm-up call on a small slice of the data (excluded),
then ``--repeats`` timed calls (more, up to ``--min-time`` seconds in total, when they are
short); the median is reported. The baselines are timed INCLUDING the construction of their
dense similarity matrix from the features (our kernel computes the similarity itself).
Objectives of every selection are evaluated afterwards by one shared float64 NumPy evaluator and
compared with ours.

Usage::

    python benchmarks/bench_facility_location.py                    # all cases
    python benchmarks/bench_facility_location.py --cases crest-split,n5000-d10 --repeats 3
    python benchmarks/bench_facility_location.py --quick            # a few seconds, smoke test
    python benchmarks/bench_facility_location.py --threads 1 --json results.json

apricot (``apricot-select``) and submodlib (``submodlib-py``) are optional: without them their
rows read "not installed".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

RESULT_TAG = "@@BENCH_RESULT@@ "
SEED = 0
# Relative objective difference up to which two selections count as equally good.
AGREE_TOL = 1e-4
# Above this feature dimension, distances are computed from a float64 Gram matrix (BLAS) rather
# than from differences (scipy cdist), for the baselines and the evaluator alike.
DIFF_MAX_DIM = 32
# Rows per block in the evaluator (bounds its memory to about EVAL_BLOCK · n float64 values).
EVAL_BLOCK = 1024
# The plain NumPy greedy runs only when problems · k · n² stays under this many element updates.
NUMPY_MAX_WORK = 3e9
DEFAULT_TIMEOUT_S = 1800.0
# Calls shorter than --min-time in total are repeated until they take that long, up to this many.
MAX_CALLS = 1000

Selection = list[list[int]]  # selected indices, one list per problem
Solver = Callable[[np.ndarray, int], tuple[Selection, list[float] | None]]


# --------------------------------------------------------------------------------------------
# Cases and methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A benchmark problem set: ``problems`` independent problems of ``n`` points in ``d`` dims.

    ``caps`` limits the number of timed calls per method family (prefix of the method name).
    """

    name: str
    problems: int
    n: int
    d: int
    k: int
    description: str
    caps: dict[str, int] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)  # method -> reason
    stochastic: bool = False
    warmup: bool = True
    similarity: str = "neg_distance"  # or "exp": exp(−‖x_i − x_j‖ / d)


CREST_SPLIT = Case(
    name="crest-split",
    problems=50,
    n=50,
    d=10,
    k=13,
    description="CREST CIFAR-10 default, split per class: 50 problems × 50 points → 13",
    caps={"apricot": 1},
)

CASES: tuple[Case, ...] = (
    CREST_SPLIT,
    replace(
        CREST_SPLIT,
        name="crest-released",
        description="crest-split with the released code's similarity exp(−‖x_i − x_j‖ / d)",
        similarity="exp",
    ),
    Case(
        name="crest-unsplit",
        problems=5,
        n=500,
        d=10,
        k=128,
        description="CREST unsplit: 5 problems × 500 points → 128",
        caps={"apricot": 2},
    ),
    Case(
        name="pools-1280",
        problems=10,
        n=1280,
        d=10,
        k=128,
        description="10 pools × 1280 points → 128",
        caps={"apricot": 1, "numpy": 1, "*": 3},
    ),
    Case(
        name="n5000-d10",
        problems=1,
        n=5000,
        d=10,
        k=500,
        description="one problem, 5000 points → 500",
        caps={"apricot": 1, "*": 3},
        skip={"numpy-naive": "k·n² too large for the plain NumPy greedy"},
        stochastic=True,
    ),
    Case(
        name="n5000-d640",
        problems=1,
        n=5000,
        d=640,
        k=500,
        description="one problem, 5000 points → 500",
        caps={"apricot": 1, "*": 3},
        skip={"numpy-naive": "k·n² too large for the plain NumPy greedy"},
        stochastic=True,
    ),
    Case(
        name="n20000-d10",
        problems=1,
        n=20000,
        d=10,
        k=2000,
        description="one problem, 20000 points → 2000",
        caps={"*": 1},
        skip={
            "apricot-naive": "far too slow (k·n² over a 3.2 GB float64 matrix)",
            "numpy-naive": "far too slow (k·n²)",
        },
        stochastic=True,
    ),
)

QUICK_CASES: tuple[Case, ...] = (
    Case(
        name="quick",
        problems=2,
        n=40,
        d=4,
        k=5,
        description="smoke test: 2 problems × 40 points → 5",
        caps={"*": 2, "apricot": 1},
        skip={"apricot-naive": "quick mode (apricot-lazy covers apricot)"},
        stochastic=True,
        warmup=False,
    ),
)

ALL_CASES: dict[str, Case] = {case.name: case for case in (*CASES, *QUICK_CASES)}

OURS_METHODS = ("ours-auto", "ours-incremental", "ours-stochastic")
BASELINE_METHODS = ("apricot-naive", "apricot-lazy", "submodlib-lazy", "numpy-naive")
# only in the exp cases: submodlib as the released CREST code calls it
RELEASED_METHOD = "submodlib-released"
REFERENCE = "ours-auto"
# method -> (importable module, distribution name) for the optional baselines
OPTIONAL: dict[str, tuple[str, str]] = {
    "apricot-naive": ("apricot", "apricot-select"),
    "apricot-lazy": ("apricot", "apricot-select"),
    "submodlib-lazy": ("submodlib", "submodlib-py"),
    "submodlib-released": ("submodlib", "submodlib-py"),
}


def methods_for(case: Case) -> list[str]:
    """The methods benchmarked on ``case``, ours first."""
    ours = [m for m in OURS_METHODS if m != "ours-stochastic" or case.stochastic]
    released = [RELEASED_METHOD] if case.similarity == "exp" else []
    return [*ours, *BASELINE_METHODS, *released]


def repeats_for(case: Case, method: str, requested: int) -> int:
    """Timed calls for ``method`` on ``case``: ``requested`` capped by the case's limits."""
    family = method.split("-")[0]
    cap = min(case.caps.get(family, requested), case.caps.get("*", requested))
    return max(1, min(requested, cap))


# --------------------------------------------------------------------------------------------
# Data and similarities (shared by the baselines and the evaluator)
# --------------------------------------------------------------------------------------------


def make_features(case: Case, seed: int) -> np.ndarray:
    """Standard normal float32 features ``[problems, n, d]``, the same for every process."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((case.problems, case.n, case.d), dtype=np.float32)


def distance_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]`` in float64.

    From differences (scipy ``cdist``) at small ``d``; from a float64 Gram matrix (BLAS) above
    ``DIFF_MAX_DIM``, where ``cdist``'s scalar loop would dominate every baseline's time.
    """
    from scipy.spatial.distance import cdist

    if a.shape[1] <= DIFF_MAX_DIM:
        return cdist(a, b)
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    sq = a64 @ b64.T
    sq *= -2.0
    sq += np.einsum("ij,ij->i", a64, a64)[:, None]
    sq += np.einsum("ij,ij->i", b64, b64)[None, :]
    np.maximum(sq, 0.0, out=sq)
    return np.sqrt(sq, out=sq)


def similarity_matrix(x: np.ndarray, kind: str = "neg_distance") -> np.ndarray:
    """Dense float64 ``C − D`` (or ``exp(−D / d)``) for one problem ``x`` ``[n, d]`` (what every
    baseline gets)."""
    dist = distance_block(x, x)
    if kind == "exp":
        return np.exp(np.divide(dist, -x.shape[1], out=dist), out=dist)
    return np.subtract(dist.max(), dist, out=dist)


# --------------------------------------------------------------------------------------------
# Solvers: each maps features [problems, n, d] and k to one selection per problem
# --------------------------------------------------------------------------------------------


def ours_solver(method: str, seed: int, kind: str) -> Solver:
    """Our kernel: one (batched) call on the features; it builds the similarity itself."""
    import torch

    from coreset_sampler import greedy_facility_location
    from coreset_sampler.kernels import load_compiled_kernel

    name = method.removeprefix("ours-")
    if name == "auto":  # the kernel as a process that has selected for a while has it (setup)
        load_compiled_kernel(torch.float32)

    def solve(x: np.ndarray, k: int) -> tuple[Selection, list[float] | None]:
        feats = torch.from_numpy(x[0] if x.shape[0] == 1 else x)
        if name == "stochastic":
            gen = torch.Generator().manual_seed(seed)
            res = greedy_facility_location(
                feats,
                k,
                similarity=kind,  # type: ignore[arg-type]
                method="stochastic",
                epsilon=0.01,
                generator=gen,
            )
        else:
            res = greedy_facility_location(
                feats,
                k,
                similarity=kind,  # type: ignore[arg-type]
                method=name,  # type: ignore[arg-type]
            )
        indices = res.indices.reshape(x.shape[0], k).tolist()
        return indices, res.objective.reshape(-1).tolist()

    return solve


def apricot_solver(method: str, kind: str) -> Solver:
    """apricot ``FacilityLocationSelection`` on a precomputed similarity, one fit per problem."""
    from apricot import FacilityLocationSelection

    optimizer = method.removeprefix("apricot-")

    def solve(x: np.ndarray, k: int) -> tuple[Selection, list[float] | None]:
        out = []
        for problem in x:
            sim = similarity_matrix(problem, kind)
            sel = FacilityLocationSelection(k, metric="precomputed", optimizer=optimizer)
            out.append([int(i) for i in sel.fit(sim).ranking])
        return out, None

    return solve


def submodlib_solver(kind: str, released: bool = False) -> Solver:
    """submodlib ``FacilityLocationFunction`` (dense, precomputed ``sijs``; or, ``released``, as
    the authors' CREST code calls it: from the features with ``metric="euclidean"``, for which
    submodlib builds ``exp(−D / d)`` itself) with LazyGreedy."""
    from submodlib import FacilityLocationFunction

    def solve(x: np.ndarray, k: int) -> tuple[Selection, list[float] | None]:
        out = []
        for problem in x:
            if released:
                fn = FacilityLocationFunction(
                    n=len(problem), data=problem, metric="euclidean", mode="dense"
                )
            else:
                sim = similarity_matrix(problem, kind)
                fn = FacilityLocationFunction(
                    n=len(sim), mode="dense", sijs=sim, separate_rep=False
                )
            picks = fn.maximize(
                budget=k,
                optimizer="LazyGreedy",
                stopIfZeroGain=False,
                stopIfNegativeGain=False,
                verbose=False,
                show_progress=False,
            )
            out.append([int(i) for i, _ in picks])
        return out, None

    return solve


def numpy_greedy(sim: np.ndarray, k: int) -> list[int]:
    """Plain greedy: recompute every gain ``Σ_i max(s(i, j), cur_i) − Σ_i cur_i`` each step."""
    n = sim.shape[0]
    cur = np.zeros(n)
    buf = np.empty_like(sim)
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for _ in range(k):
        np.maximum(sim, cur[:, None], out=buf)
        gains = buf.sum(axis=0) - cur.sum()
        gains[taken] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        taken[j] = True
        np.maximum(cur, sim[:, j], out=cur)
    return picks


def numpy_solver(kind: str) -> Solver:
    def solve(x: np.ndarray, k: int) -> tuple[Selection, list[float] | None]:
        return [numpy_greedy(similarity_matrix(problem, kind), k) for problem in x], None

    return solve


def make_solver(method: str, seed: int, kind: str = "neg_distance") -> Solver:
    if method.startswith("ours-"):
        return ours_solver(method, seed, kind)
    if method.startswith("apricot-"):
        return apricot_solver(method, kind)
    if method in ("submodlib-lazy", "submodlib-released"):
        if method == "submodlib-released" and kind != "exp":
            raise ValueError("submodlib-released builds exp(−D / d): only for exp cases")
        return submodlib_solver(kind, released=method == "submodlib-released")
    if method == "numpy-naive":
        return numpy_solver(kind)
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------------------------
# Worker: one (case, method) in a fresh process
# --------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` memory field in KiB (Linux), else ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_kib() -> int:
    """Peak RSS in KiB: ``VmHWM`` (reset by :func:`_reset_peak_rss`), else ``ru_maxrss``.

    ``ru_maxrss`` also keeps the peak of the parent's memory image that the worker was forked
    from (the kernel carries it across ``exec``), so it is only the fallback.
    """
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _warmup_slice(x: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """A small problem of the same kind (same code paths), cheap for every method."""
    n = min(x.shape[1], 256)
    return np.ascontiguousarray(x[:1, :n]), max(1, min(k, n // 4))


def _apricot_overhead_ms() -> float:
    """Wall time of an apricot fit on a 4-point problem: its fixed per-call (numba) cost."""
    from apricot import FacilityLocationSelection

    sim = similarity_matrix(np.eye(4, dtype=np.float32))
    start = time.perf_counter()
    FacilityLocationSelection(1, metric="precomputed", optimizer="lazy").fit(sim)
    return (time.perf_counter() - start) * 1e3


def run_worker(
    case: Case,
    method: str,
    repeats: int,
    budget_s: float,
    seed: int,
    threads: int | None,
    min_time_s: float = 0.0,
) -> dict:
    """Time ``method`` on ``case``; returns a JSON-friendly record.

    Up to ``repeats`` timed calls, stopping early once they have taken ``budget_s`` seconds;
    calls so short that ``repeats`` of them take less than ``min_time_s`` are repeated until
    they have taken that long (at most ``MAX_CALLS``), so that sub-millisecond medians are not
    decided by the first few calls' cold caches.
    """
    extra: dict[str, Any] = {}
    if method.startswith("ours-"):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        extra["torch_threads"] = torch.get_num_threads()
    x = make_features(case, seed)
    solve = make_solver(method, seed, case.similarity)
    rss_setup = _status_kib("VmRSS")

    if case.warmup:
        wx, wk = _warmup_slice(x, case.k)
        start = time.perf_counter()
        solve(wx, wk)
        extra["first_call_ms"] = (time.perf_counter() - start) * 1e3
        if method.startswith("apricot-"):
            extra["per_call_overhead_ms"] = _apricot_overhead_ms()

    reset = _reset_peak_rss()
    rss_base = _status_kib("VmRSS") if reset else rss_setup
    if rss_base is None:
        rss_base = _peak_rss_kib()
    times = []
    selection: Selection = []
    kernel_objective: list[float] | None = None
    while len(times) < repeats or (sum(times) < min_time_s * 1e3 and len(times) < MAX_CALLS):
        start = time.perf_counter()
        selection, kernel_objective = solve(x, case.k)
        times.append((time.perf_counter() - start) * 1e3)
        if sum(times) > budget_s * 1e3:
            break
    peak = _peak_rss_kib()
    return {
        "case": case.name,
        "method": method,
        "status": "ok",
        "repeats": len(times),
        "times_ms": times,
        "median_ms": statistics.median(times),
        "peak_extra_mb": max(0, peak - rss_base) * 1024 / 1e6,
        "peak_reset": reset,
        "rss_after_setup_mb": (rss_setup or 0) * 1024 / 1e6,
        "selection": selection,
        "kernel_objective": kernel_objective,
        **extra,
    }


# --------------------------------------------------------------------------------------------
# Objective evaluation (one float64 evaluator for every method)
# --------------------------------------------------------------------------------------------


class Evaluator:
    """``F(S) = Σ_i max_{j∈S} (C − ‖x_i − x_j‖)`` (or, ``kind="exp"``, of ``exp(−‖x_i − x_j‖ /
    d)``) in float64, blockwise (no ``n×n`` matrix)."""

    def __init__(self, x: np.ndarray, kind: str = "neg_distance") -> None:
        self.x = x
        self.kind = kind
        self._c: list[float] | None = None

    def max_distances(self) -> list[float]:
        if self._c is None:
            self._c = [self._max_distance(problem) for problem in self.x]
        return self._c

    @staticmethod
    def _max_distance(problem: np.ndarray) -> float:
        best = 0.0
        for start in range(0, len(problem), EVAL_BLOCK):
            block = distance_block(problem[start : start + EVAL_BLOCK], problem)
            best = max(best, float(block.max()))
        return best

    def objectives(self, selection: Selection) -> list[float]:
        """``F`` of each problem's selection."""
        out = []
        for problem, c, picks in zip(self.x, self.max_distances(), selection, strict=True):
            chosen = problem[np.asarray(picks, dtype=np.int64)]
            total = 0.0
            for start in range(0, len(problem), EVAL_BLOCK):
                nearest = distance_block(problem[start : start + EVAL_BLOCK], chosen).min(axis=1)
                if self.kind == "exp":
                    total += float(np.exp(-nearest / problem.shape[1]).sum())
                else:
                    total += float((c - nearest).sum())
            out.append(total)
        return out


def max_rel_diff(values: Sequence[float], reference: Sequence[float]) -> float:
    """Largest per-problem ``|F − F_ref| / |F_ref|``."""
    return max(abs(v - r) / abs(r) for v, r in zip(values, reference, strict=True))


# --------------------------------------------------------------------------------------------
# Parent: orchestration, tables, targets
# --------------------------------------------------------------------------------------------


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware(threads: int | None) -> dict[str, Any]:
    """The machine and library versions (torch is not imported here: workers report threads)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch": _version("torch"),
        "torch_threads": threads,  # filled from the workers when None
        "numpy": np.__version__,
        "python": platform.python_version(),
        "apricot-select": _version("apricot-select") if installed("apricot") else None,
        "submodlib-py": _version("submodlib-py") if installed("submodlib") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        for var in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "NUMBA_NUM_THREADS",
        ):
            env[var] = str(threads)
    return env


def spawn_worker(
    case: Case, method: str, repeats: int, args: argparse.Namespace, env: dict[str, str]
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--case",
        case.name,
        "--method",
        method,
        "--repeats",
        str(repeats),
        "--budget",
        str(args.budget),
        "--min-time",
        str(args.min_time),
        "--seed",
        str(args.seed),
    ]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    base = {"case": case.name, "method": method}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout after {args.timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {**base, "status": f"failed (exit {proc.returncode}): {tail[0][:200]}"}


def skip_reason(case: Case, method: str) -> str | None:
    if method in OPTIONAL and not installed(OPTIONAL[method][0]):
        return "not installed"
    if method in case.skip:
        return "skipped: " + case.skip[method]
    if method == "numpy-naive" and case.problems * case.k * case.n**2 > NUMPY_MAX_WORK:
        return "skipped: k·n² too large for the plain NumPy greedy"
    return None


def run_case(case: Case, args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    rows = []
    for method in methods_for(case):
        if args.methods is not None and method not in args.methods:
            continue
        reason = skip_reason(case, method)
        if reason is not None:
            row = {"case": case.name, "method": method, "status": reason}
        else:
            row = spawn_worker(case, method, repeats_for(case, method, args.repeats), args, env)
        rows.append(row)
        print(f"  {case.name:14s} {method:18s} {_fmt_time(row):>12s}", flush=True)
    add_objectives(case, rows, args.seed)
    add_ratios(rows)
    return rows


def add_objectives(case: Case, rows: list[dict], seed: int) -> None:
    evaluator = Evaluator(make_features(case, seed), case.similarity)
    for row in rows:
        if row.get("status") == "ok":
            row["objective"] = evaluator.objectives(row["selection"])
            if row.get("kernel_objective") is not None:
                row["kernel_vs_eval"] = max_rel_diff(row["kernel_objective"], row["objective"])
    ref = next((r for r in rows if r["method"] == REFERENCE and "objective" in r), None)
    for row in rows:
        if ref is not None and "objective" in row:
            row["objective_rel_diff"] = max_rel_diff(row["objective"], ref["objective"])
            row["agree"] = row["objective_rel_diff"] <= AGREE_TOL


def add_ratios(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["method"] == REFERENCE and r.get("status") == "ok"), None)
    for row in rows:
        if ref is not None and row.get("status") == "ok":
            row["ratio"] = row["median_ms"] / ref["median_ms"]


def _fmt_time(row: dict) -> str:
    if row.get("status") != "ok":
        return str(row.get("status"))
    return f"{row['median_ms']:.2f}"


def _notes(row: dict) -> str:
    notes = []
    if row.get("status") == "ok":
        notes.append(f"n={row['repeats']}")
    if "per_call_overhead_ms" in row:
        notes.append(f"numba recompile ≈{row['per_call_overhead_ms']:.0f} ms per fit")
    if row["method"] == "ours-stochastic":
        notes.append("approximate (ε=0.01)")
    if row.get("kernel_vs_eval", 0.0) > AGREE_TOL:
        notes.append(f"kernel objective off by {row['kernel_vs_eval']:.1e}")
    if row.get("status") == "ok" and not row.get("peak_reset", True):
        notes.append("peak not reset")
    return "; ".join(notes)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| case | method | median ms | ratio to ours-auto | peak extra MB "
        "| obj. rel. diff | notes |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"| {row['case']} | {row['method']} | {row['status']} | | | | |")
            continue
        diff = row.get("objective_rel_diff")
        if diff is None:
            diff_text = "n/a"
        else:
            diff_text = f"{diff:.1e} ({'agree' if row['agree'] else 'DIFFER'})"
        ratio = row.get("ratio")
        lines.append(
            f"| {row['case']} | {row['method']} | {row['median_ms']:.2f} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}×'} | {row['peak_extra_mb']:.1f} | "
            f"{diff_text} | {_notes(row)} |"
        )
    return "\n".join(lines)


def _find(rows: list[dict], case: str, method: str) -> dict | None:
    for row in rows:
        if row["case"] == case and row["method"] == method and row.get("status") == "ok":
            return row
    return None


def evaluate_targets(rows: list[dict], cases: Sequence[Case]) -> list[dict]:
    """The issue's targets, for the cases that were run."""
    targets = []
    for case in cases:
        ours = _find(rows, case.name, REFERENCE)
        if case.name == "crest-split":
            rivals, need, what = ["submodlib-lazy"], 10.0, "≥10× faster than submodlib LazyGreedy"
        elif case.name == "crest-released":
            rivals, need = ["submodlib-released"], 10.0
            what = "≥10× faster than submodlib as the released CREST code calls it"
        else:
            rivals = ["apricot-naive", "apricot-lazy", "submodlib-lazy"]
            need, what = 2.0, "≥2× faster than the fastest of apricot/submodlib"
        timed = [r for m in rivals if (r := _find(rows, case.name, m)) is not None]
        if ours is None or not timed:
            targets.append({"case": case.name, "target": what, "status": "n/a"})
            continue
        best = min(timed, key=lambda r: r["median_ms"])
        speedup = best["median_ms"] / ours["median_ms"]
        targets.append(
            {
                "case": case.name,
                "target": what,
                "value": f"{speedup:.2f}× vs {best['method']}",
                "status": "met" if speedup >= need else "not met",
            }
        )
        if case.name == "n20000-d10":
            mb = ours["peak_extra_mb"]
            targets.append(
                {
                    "case": case.name,
                    "target": "ours-auto peak extra memory < 1 GB",
                    "value": f"{mb:.0f} MB",
                    "status": "met" if mb < 1000 else "not met",
                }
            )
    return targets


def print_report(hw: dict, rows: list[dict], targets: list[dict]) -> None:
    print()
    print("## Hardware")
    print(
        f"CPU: {hw['cpu']} ({hw['logical_cpus']} logical CPUs, {hw['usable_cpus']} usable); "
        f"torch {hw['torch']} with {hw['torch_threads']} threads; numpy {hw['numpy']}; "
        f"apricot-select {hw['apricot-select'] or 'not installed'}; "
        f"submodlib-py {hw['submodlib-py'] or 'not installed'}; load average {hw['load_average']}"
    )
    print()
    print("## Results")
    print(
        "Median wall time of a full call. Baselines are timed INCLUDING building their dense "
        "float64 similarity C − D (crest-released: exp(−D / d)) from the features; ours computes "
        "it itself, in one batched call over all problems of a case. submodlib-released: "
        "submodlib called as the released CREST code calls it (it builds exp(−D / d) itself). "
        "apricot rows: calls after the first in the process, "
        "each of which recompiles apricot's numba kernels. Ratio = method time / ours-auto time "
        "(> 1: ours is faster). Peak extra MB: peak RSS of the timed calls minus RSS before "
        f"them. Objectives: shared float64 evaluator; agree when ≤ {AGREE_TOL:g}."
    )
    print()
    print(markdown_table(rows))
    print()
    print("## Targets")
    for t in targets:
        value = f" ({t['value']})" if "value" in t else ""
        print(f"- {t['case']}: {t['target']}: {t['status']}{value}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join(c.name for c in CASES)
    parser.add_argument("--cases", default=None, help=f"comma-separated subset of: {names}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="stop repeating once the timed calls of one method took this many seconds",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="repeat calls shorter than this many seconds in total until they take this long "
        f"(at most {MAX_CALLS} calls; default 0.5, 0 with --quick)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of: "
        + ", ".join((*OURS_METHODS, *BASELINE_METHODS, RELEASED_METHOD)),
    )
    parser.add_argument("--threads", type=int, default=None, help="torch/OMP/MKL/numba threads")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the features")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per worker, s")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats should be a positive integer, but got {args.repeats}")
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 0.5
    if args.min_time < 0:
        parser.error(f"--min-time should be non-negative, but got {args.min_time}")
    if args.methods is not None:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(args.methods) - {*OURS_METHODS, *BASELINE_METHODS, RELEASED_METHOD})
        if unknown:
            parser.error(f"unknown method(s) {unknown}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads should be a positive integer, but got {args.threads}")
    return args


def select_cases(args: argparse.Namespace) -> list[Case]:
    pool = QUICK_CASES if args.quick else CASES
    if args.cases is None:
        return list(pool)
    wanted = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ALL_CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {sorted(ALL_CASES)}")
    return [ALL_CASES[name] for name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        case = ALL_CASES[args.case]
        record = run_worker(
            case, args.method, args.repeats, args.budget, args.seed, args.threads, args.min_time
        )
        print(RESULT_TAG + json.dumps(record), flush=True)
        return 0
    cases = select_cases(args)
    hw = hardware(args.threads)
    env = worker_env(args.threads)
    print(f"facility location benchmark: {len(cases)} case(s), repeats ≤ {args.repeats}")
    rows: list[dict] = []
    for case in cases:
        print(f"{case.name}: {case.description}, d={case.d}", flush=True)
        rows.extend(run_case(case, args, env))
    if hw["torch_threads"] is None:
        hw["torch_threads"] = next((r["torch_threads"] for r in rows if "torch_threads" in r), None)
    targets = evaluate_targets(rows, cases)
    print_report(hw, rows, targets)
    if args.json:
        payload = {
            "hardware": hw,
            "settings": {
                "repeats": args.repeats,
                "budget_s": args.budget,
                "min_time_s": args.min_time,
                "methods": args.methods,
                "threads": args.threads,
                "seed": args.seed,
                "quick": args.quick,
                "agree_tol": AGREE_TOL,
            },
            "cases": [asdict(c) for c in cases],
            "results": rows,
            "targets": targets,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
