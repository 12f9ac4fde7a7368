"""Cost of the CREST quadratic-model monitor relative to one training step.

ResNet-20 on random CIFAR-shaped inputs (3×32×32, 10 classes), batch 128, SGD with momentum.
Times, as medians over repeats:

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

from coreset_sampler.gradients import GradientProxyCallback
from coreset_sampler.monitor import QuadraticLossMonitor


def _timeit(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    step = _timeit(train_step, args.repeats, args.warmup, device)
    results["train_step_s"] = step
    proxies = _timeit(lambda: [cb(p) for p in pools], args.repeats, args.warmup, device)
    results["proxies_s"] = proxies

    for method in args.hvp:
        monitor = QuadraticLossMonitor(
            model, cb.per_sample_loss, num_probes=args.probes, seed=0, hvp=method
        )
        anchor = _timeit(
            lambda mon=monitor: mon.anchor(coresets, weights, check),  # type: ignore[misc]
            args.repeats,
            args.warmup,
            device,
        )
        results[f"anchor_{method}_s"] = anchor
    head = QuadraticLossMonitor(
        model.fc.parameters(), cb.per_sample_loss, module=model, num_probes=args.probes, seed=0
    )
    results["anchor_head_only_s"] = _timeit(
        lambda: head.anchor(coresets, weights, check), args.repeats, args.warmup, device
    )
    check_s = _timeit(monitor.check, args.repeats, args.warmup, device)
    results["check_s"] = check_s

    print(
        f"ResNet-20, batch {m}, device {results['device']} ({results['device_name']}), "
        f"torch {results['torch']}, {results['threads']} threads, median of {args.repeats}"
    )
    print(f"{'operation':<44} {'seconds':>9} {'x step':>8}")
    rows = [("training step (fwd+bwd+SGD)", step)]
    rows.append((f"proxies for {len(pools)} pools of {args.pool_size}", proxies))
    for method in args.hvp:
        label = f"anchor: P={len(coresets)}x{m}, {args.probes} probe, {method}"
        rows.append((label, float(results[f"anchor_{method}_s"])))  # type: ignore[arg-type]
    head_s = float(results["anchor_head_only_s"])  # type: ignore[arg-type]
    rows.append((f"anchor: P={len(coresets)}x{m}, head (fc) only, jvp", head_s))
    rows.append((f"check: |V_r| = {args.check_size}", check_s))
    for label, sec in rows:
        print(f"{label:<44} {sec:>9.4f} {sec / step:>8.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
