"""Cost of the CREST quadratic-model monitor relative to one training step.

ResNet-20 on random CIFAR-shaped inputs (3×32×32, 10 classes), batch 128, SGD with momentum.
Wall and process-CPU times, as medians over interleaved rounds (each round times every
operation once, so a busy machine slows them alike), and each operation's median ratio to the
training step of its round:

* one training step (forward, weighted cross-entropy, backward, optimizer step);
* one anchor of :class:`~coreset_sampler.monitor.QuadraticLossMonitor` (P coresets of 128,
  gradient + Hutchinson Hessian diagonal with ``--probes`` probes, L_0 on the check sample),
  for each HVP method asked for;
* the same anchor tracking only the last layer (``fc``), as the paper did for large models;
* one check (L_r on the check sample, ``--check-size`` examples, and the Taylor prediction);
* the gradient proxies of one selection (P pools of ``--pool-size`` examples) for reference.

Run::

    python benchmarks/bench_monitor.py --device cpu
    python benchmarks/bench_monitor.py --device cuda --repeats 20

The CREST paper (Yang, Kang, Mirzasoleiman, ICML 2023) reports 0.115 s per anchor and 0.796 s
per check for ResNet-18/CIFAR-100 on one GPU (its check ran a forward pass over the training set).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import resnet20

from coreset_sampler.monitor import QuadraticLossMonitor
from coreset_sampler.proxies import GradientProxyCallback


def _measure(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call (CPU time is robust to a busy machine)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-coresets", type=int, default=5, help="P coresets per anchor")
    parser.add_argument("--probes", type=int, default=1, help="Hutchinson probes per coreset")
    parser.add_argument("--check-size", type=int, default=500, help="|V_r| examples per check")
    parser.add_argument("--pool-size", type=int, default=500, help="r examples per pool")
    parser.add_argument("--num-examples", type=int, default=4096, help="size of the fake dataset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--hvp", nargs="+", default=["jvp", "double_backward"], choices=["jvp", "double_backward"]
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    n = args.num_examples
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    torch.manual_seed(0)
    model = resnet20().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    m = args.batch_size

    def load(indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        i = torch.as_tensor(list(indices), device=device)
        return x[i], y[i]

    cb = GradientProxyCallback(model, load, device=device, batch_size=512)
    perm = torch.randperm(n, generator=gen).tolist()
    coresets = [perm[p * m : (p + 1) * m] for p in range(args.num_coresets)]
    weights = []
    for _ in coresets:
        w = torch.rand(m, generator=gen) + 0.5
        weights.append((w / w.mean()).to(device))
    check = torch.randperm(n, generator=gen)[: args.check_size].tolist()
    pools = [torch.randperm(n, generator=gen)[: args.pool_size].tolist() for _ in coresets]
    batch = coresets[0]

    model.train()

    def train_step() -> None:
        xb, yb = load(batch)
        opt.zero_grad(set_to_none=True)
        loss = (weights[0] * F.cross_entropy(model(xb), yb, reduction="none")).mean()
        loss.backward()
        opt.step()

    results: dict[str, object] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": m,
        "num_coresets": args.num_coresets,
        "probes": args.probes,
        "check_size": args.check_size,
        "repeats": args.repeats,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    monitors = {
        method: QuadraticLossMonitor(
            model, cb.per_sample_loss, num_probes=args.probes, seed=0, hvp=method
        )
        for method in args.hvp
    }
    head = QuadraticLossMonitor(
        model.fc.parameters(), cb.per_sample_loss, module=model, num_probes=args.probes, seed=0
    )
    last = monitors[args.hvp[-1]]
    ops: dict[str, tuple[str, Callable[[], object]]] = {
        "train_step": ("training step (fwd+bwd+SGD)", train_step),
        "proxies": (
            f"proxies for {len(pools)} pools of {args.pool_size}",
            lambda: [cb(p) for p in pools],
        ),
    }
    for method, mon in monitors.items():
        ops[f"anchor_{method}"] = (
            f"anchor: P={len(coresets)}x{m}, {args.probes} probe, {method}",
            lambda mon=mon: mon.anchor(coresets, weights, check),  # type: ignore[misc]
        )
    ops["anchor_head_only"] = (
        f"anchor: P={len(coresets)}x{m}, head (fc) only",
        lambda: head.anchor(coresets, weights, check),
    )
    ops["check"] = (f"check: |V_r| = {args.check_size}", last.check)

    # interleaved rounds: a busy machine slows every operation of a round alike
    for _ in range(args.warmup):
        for _label, fn in ops.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in ops}
    cpu: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(args.repeats):
        for key, (_label, fn) in ops.items():
            w, c = _measure(fn, device)
            wall[key].append(w)
            cpu[key].append(c)
    med = statistics.median
    for key in ops:
        results[f"{key}_s"] = med(wall[key])
        results[f"{key}_cpu_s"] = med(cpu[key])
        results[f"{key}_ratio"] = med(
            a / b for a, b in zip(wall[key], wall["train_step"], strict=True)
        )
        results[f"{key}_cpu_ratio"] = med(
            a / b for a, b in zip(cpu[key], cpu["train_step"], strict=True)
        )

    print(
        f"ResNet-20, batch {m}, device {results['device']} ({results['device_name']}), "
        f"torch {results['torch']}, {results['threads']} threads, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(f"{'operation':<40} {'wall s':>8} {'x step':>7} {'CPU s':>8} {'x step':>7}")
    for key, (label, _fn) in ops.items():
        print(
            f"{label:<40} {results[f'{key}_s']:>8.3f} {results[f'{key}_ratio']:>7.2f} "
            f"{results[f'{key}_cpu_s']:>8.3f} {results[f'{key}_cpu_ratio']:>7.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
