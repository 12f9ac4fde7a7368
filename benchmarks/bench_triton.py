"""The Triton kernels (facility location, k-center) against the eager PyTorch and CPU paths.

On one CUDA machine, for each size: ``method="triton"`` on the GPU, the PyTorch greedy on the
GPU that ``method="auto"`` ran there before the kernels existed (``naive`` up to 128 points,
``incremental`` above), and the compiled CPU greedy (``method="lazy"``, numba) on the same
features on the host, with and without copying them there and the result back. Every timed
method is first checked against the naive greedy on fresh random features (same picks).
``greedy_k_center`` (farthest-point greedy) is timed the same way: its Triton kernel, its
PyTorch path on the GPU, and its PyTorch path on the host.

    python benchmarks/bench_triton.py                  # on a CUDA machine
    python benchmarks/bench_triton.py --json out.json  # and every number in a file
    TRITON_INTERPRET=1 python benchmarks/bench_triton.py --quick   # smoke run on a CPU

Times are medians over ``--repeats`` calls after warm-up, each call timed with CUDA events
around it (host timer after a synchronize for the CPU path). The sizes: CREST's default
selection in one call (50 problems of 50 points, 13 picks, d = 10); ten pools of 128 points
with 13 picks each (128 of 1280 points); one problem of 5000 points with 500 picks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from coreset_sampler.kernels import greedy_facility_location, greedy_k_center


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    n: int
    k: int
    d: int


SIZES = (
    Size("crest-50x50-k13", 50, 50, 13, 10),
    Size("pools-10x128-k13", 10, 128, 13, 10),
    Size("one-5000-k500", 1, 5000, 500, 10),
)
QUICK = (Size("quick-4x20-k5", 4, 20, 5, 6), Size("quick-1x40-k6", 1, 40, 6, 5))


def features(size: Size, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size.batch, size.n, size.d, generator=g)
    return x.to(device)


def eager_method(size: Size) -> str:
    """What ``auto`` ran on a CUDA device before the Triton kernels."""
    return "naive" if size.n <= 128 else "incremental"


def runners(size: Size, device: str) -> dict[str, Callable[[torch.Tensor], Any]]:
    eager = eager_method(size)
    out: dict[str, Callable[[torch.Tensor], Any]] = {
        "triton": lambda x: greedy_facility_location(x, size.k, method="triton", ties="share"),
        "eager": lambda x: greedy_facility_location(x, size.k, method=eager, ties="share"),
    }
    try:
        import numba  # noqa: F401
    except ImportError:
        return out
    out["cpu-lazy"] = lambda x: greedy_facility_location(x, size.k, method="lazy", ties="share")

    def with_copies(x: torch.Tensor) -> Any:
        r = greedy_facility_location(x.cpu(), size.k, method="lazy", ties="share")
        return r.indices.to(x.device), r.weights.to(x.device)

    out["cpu-lazy+copies"] = with_copies
    return out


def k_center_runners(size: Size) -> dict[str, Callable[[torch.Tensor], Any]]:
    return {
        "triton": lambda x: greedy_k_center(x, size.k, method="triton"),
        "eager": lambda x: greedy_k_center(x, size.k, method="torch"),
        "cpu-torch": lambda x: greedy_k_center(x, size.k, method="torch"),
    }


def check(size: Size, device: str, seed: int) -> None:
    """Every method's picks equal the naive greedy's on fresh features."""
    x = features(size, seed + 1000, device)
    ref = greedy_facility_location(x.cpu(), size.k, method="naive", ties="share")
    for name, fn in runners(size, device).items():
        arg = x.cpu() if name == "cpu-lazy" else x
        got = fn(arg)
        indices = got[0] if isinstance(got, tuple) else got.indices
        if not torch.equal(indices.cpu(), ref.indices):
            raise SystemExit(f"{size.name}: {name} picks differ from the naive greedy's")
    ref_kc = greedy_k_center(x.cpu(), size.k, method="torch")
    got_kc = greedy_k_center(x, size.k, method="triton")
    if not torch.equal(got_kc.indices.cpu(), ref_kc.indices):
        raise SystemExit(f"{size.name}: k-center's Triton picks differ from its PyTorch path's")


def time_calls(fn: Callable[[], Any], repeats: int, cuda: bool) -> list[float]:
    for _ in range(3):  # warm-up: compilation, caches
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per method")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats (smoke)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write all results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if torch.cuda.is_available():
        device = "cuda"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device = "cpu"  # the interpreter: a smoke run, its times mean nothing
    else:
        print("no CUDA device (TRITON_INTERPRET=1 with --quick runs a smoke test on the CPU)")
        return 2
    sizes = QUICK if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats
    rows = []
    for size in sizes:
        check(size, device, args.seed)
        x_dev = features(size, args.seed, device)
        x_cpu = x_dev.cpu()
        row: dict[str, Any] = {"size": size.__dict__, "eager": eager_method(size), "seconds": {}}
        for name, fn in runners(size, device).items():
            arg = x_cpu if name == "cpu-lazy" else x_dev
            cuda = device == "cuda" and name != "cpu-lazy"
            row["seconds"][name] = time_calls(lambda fn=fn, arg=arg: fn(arg), repeats, cuda)
        rows.append(row)
        row = {"size": size.__dict__, "eager": "k-center torch", "seconds": {}}
        for name, fn in k_center_runners(size).items():
            arg = x_cpu if name == "cpu-torch" else x_dev
            cuda = device == "cuda" and name != "cpu-torch"
            row["seconds"][name] = time_calls(lambda fn=fn, arg=arg: fn(arg), repeats, cuda)
        rows.append(row)

    info = hardware(device)
    print(f"## Hardware: {json.dumps(info)}\n")
    print("| problem | size (eager path) | triton | eager | cpu | eager / triton | cpu / triton |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        med = {n: statistics.median(t) for n, t in row["seconds"].items()}
        problem = "k-center" if row["eager"] == "k-center torch" else "facility location"
        cpu_name = "cpu-torch" if "cpu-torch" in med else "cpu-lazy"
        cpu = med.get(cpu_name)
        cells = [f"{med['triton'] * 1e6:,.0f} µs", f"{med['eager'] * 1e6:,.0f} µs"]
        cells.append(f"{cpu * 1e6:,.0f} µs ({cpu_name})" if cpu else "-")
        cells.append(f"{med['eager'] / med['triton']:.1f}×")
        cells.append(f"{cpu / med['triton']:.2f}×" if cpu else "-")
        name = f"{row['size']['name']} ({row['eager']})"
        print(f"| {problem} | {name} | " + " | ".join(cells) + " |")
    print("\n(medians of calls after warm-up; CUDA events for the GPU, host timer for cpu-lazy)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": info, "argv": sys.argv, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
