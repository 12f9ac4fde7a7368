"""CREST under DistributedDataParallel: launch with torchrun, one process per device.

    torchrun --standalone --nproc-per-node 2 examples/ddp.py            # CPU, gloo
    torchrun --standalone --nproc-per-node 2 examples/ddp.py --device cuda   # one GPU per rank

A small MLP on a synthetic 10-class problem (so it runs anywhere, offline). Every rank builds the
same sampler; each yields ceil(budget·N / (batch_size·world_size)) coresets of its own per epoch,
and all ranks check the quadratic model and reselect on the same steps. The only differences from
a single-process CREST loop are the process group, the DDP wrapper and `set_epoch`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from coreset_sampler import (
    CrestBatchSampler,
    GradientProxyCallback,
    QuadraticLossMonitor,
    WithWeights,
)


def synthetic(n: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Ten Gaussian classes in 20 dimensions; the same data on every rank."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 20, generator=g) * 2.0
    y = torch.randint(0, 10, (n + n // 5,), generator=g)
    x = centres[y] + torch.randn(len(y), 20, generator=g) * 1.5
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)

    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    if args.device == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)  # several ranks share the machine's cores
    torch.manual_seed(args.seed)  # the same initial model everywhere (DDP also broadcasts it)

    train, test = synthetic(args.samples, args.seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if args.device == "cuda" else None
    )
    proxies = GradientProxyCallback(ddp, train, device=device)
    monitor = QuadraticLossMonitor(ddp, proxies.per_sample_loss, threshold=0.05)
    sampler = CrestBatchSampler(
        train,
        args.batch_size,
        callback=proxies,
        monitor=monitor,
        labels=train.tensors[1],
        budget=args.budget,
        seed=args.seed,
    )  # num_replicas and rank come from the process group
    loader = DataLoader(WithWeights(train), batch_sampler=sampler)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(loader))

    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp.train()
        total = torch.zeros(2, device=device)
        for x, y, w in loader:
            x, y, w = x.to(device), y.to(device), w.to(device)
            loss = (w * F.cross_entropy(ddp(x), y, reduction="none")).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += torch.stack([loss.detach() * len(y), torch.tensor(len(y), device=device)])
        dist.all_reduce(total)
        model.eval()
        with torch.no_grad():
            xt, yt = test.tensors[0].to(device), test.tensors[1].to(device)
            accuracy = float((model(xt).argmax(1) == yt).float().mean())
        tel = sampler.telemetry
        if rank == 0:
            print(
                f"epoch {epoch + 1:2d}/{args.epochs}  loss {float(total[0] / total[1]):.4f}  "
                f"test acc {100 * accuracy:.2f}%  steps/rank {len(loader)}  "
                f"selections {tel.num_selections}  checks {tel.num_checks}",
                flush=True,
            )
    seconds = time.perf_counter() - start
    result = {
        "world_size": world,
        "steps_per_rank": len(loader),
        "test_accuracy": accuracy,
        "selections": sampler.telemetry.num_selections,
        "seconds": seconds,
    }
    if rank == 0:
        print(
            f"final: {world} ranks, test acc {100 * accuracy:.2f}%, {seconds:.1f} s, "
            f"{sampler.telemetry.num_selections} selections per rank",
            flush=True,
        )
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
