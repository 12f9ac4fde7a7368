"""Time and peak memory of one CRAIG selection (:class:`~coreset_sampler.CraigBatchSampler`).

One class of n standard-normal points in d = 10 dimensions (the proxies), a coreset of
k = 10% of n (``budget=0.1``), the sampler's default similarity (C − ‖g_i − g_j‖) and chunked
kernel (rows recomputed in blocks of ``chunk_size``, never an n×n matrix for n > 128). Each size
runs ONCE, in a fresh subprocess, so that its peak memory is its own: peak RSS during the
selection minus RSS just before it (``/proc/self/clear_refs`` + ``VmHWM``; Linux only).
``--threads`` defaults to 1: on an oversubscribed machine two intra-op threads made every one of
the greedy's many small kernel calls wait for both threads to be scheduled (n = 2000: 16 s with
2 threads against 0.4 s with 1, measured here under a load average of 5 on 2 cores).

Run::

    python benchmarks/bench_craig.py --sizes 5000 10000 --method auto
    python benchmarks/bench_craig.py --sizes 5000 50000 --method stochastic --epsilon 0.1

and print one JSON line per size: n, k, method, chunk_size, wall and CPU seconds of the
selection (callback + kernel), kernel seconds, peak extra MB (10^6 bytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def _rss_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{name} not in /proc/self/status")


def _one(n: int, d: int, method: str, epsilon: float, chunk_size: int | None, threads: int) -> None:
    import torch

    from coreset_sampler.samplers.craig import CraigBatchSampler, _auto_chunk

    torch.set_num_threads(threads)
    table = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    sampler = CraigBatchSampler(
        n,
        batch_size=min(128, n // 10),
        callback=lambda idx: table[idx],
        budget=0.1,
        method=method,  # type: ignore[arg-type]
        epsilon=epsilon,
        chunk_size=chunk_size,
        callback_batch_size=4096,
        seed=0,
    )
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_field("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    next(iter(sampler))  # the first batch triggers the selection
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _rss_field("VmHWM")
    record = sampler.telemetry.selections[0]
    print(
        json.dumps(
            {
                "n": n,
                "d": d,
                "k": sampler.coreset_size,
                "method": method,
                "epsilon": epsilon if method == "stochastic" else None,
                "chunk_size": chunk_size or _auto_chunk(n),
                "threads": threads,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "kernel_s": round(record.kernel_seconds, 3),
                "peak_extra_mb": round((peak - before) / 1e6, 1),
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument(
        "--method", default="auto", choices=["auto", "incremental", "stochastic", "naive"]
    )
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per size")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _one(args.child, args.dim, args.method, args.epsilon, args.chunk_size, args.threads)
        return
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim)]
        cmd += ["--method", args.method, "--epsilon", str(args.epsilon)]
        cmd += ["--threads", str(args.threads)]
        if args.chunk_size is not None:
            cmd += ["--chunk-size", str(args.chunk_size)]
        try:
            subprocess.run(cmd, check=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(json.dumps({"n": n, "method": args.method, "timeout_s": args.timeout}))


if __name__ == "__main__":
    main()
